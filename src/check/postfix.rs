//! `mailpipe check`'s Postfix steps, all through `postconf` and `postmap`
//! (src/postfix.rs): the pipe service, its flags, limits and routing, the
//! recipient delimiter, SMTPUTF8, and where deliver's log lines go.
//!
//! Must not: parse Postfix's files or change Postfix.
//! Fails: never; a Postfix that cannot be asked is itself a finding.

use std::path::Path;

use super::setup::incoming_domains;
use super::{Options, Report};
use crate::config::{Config, DEFAULT_PATH};
use crate::postfix::{PipeService, Postfix, PostfixError};

/// Postfix's side: the pipe service, its flags, limits and routing.
pub(super) fn check_postfix(
    config: &Config,
    options: &Options,
    postfix: &Postfix,
    report: &mut Report,
) -> Option<PipeService> {
    let services = match postfix.pipe_services() {
        Ok(s) => s,
        Err(PostfixError::Missing) => {
            report.warn(
                "postfix",
                "postconf",
                "not installed here; Postfix checks skipped".into(),
                "run mailpipe check on the Postfix host",
            );
            return None;
        }
        Err(e) => {
            report.error(
                "postfix",
                "postconf",
                e.to_string(),
                "fix the Postfix configuration (postfix check)",
            );
            return None;
        }
    };
    let ours: Vec<&PipeService> = services.iter().filter(|s| s.runs_mailpipe()).collect();
    let Some(service) = ours
        .iter()
        .find(|s| {
            same_file(
                &s.config_path().unwrap_or_else(|| DEFAULT_PATH.into()),
                &options.config,
            )
        })
        .or(ours.first())
        .copied()
        .cloned()
    else {
        report.error(
            "postfix",
            "master.cf",
            "no pipe(8) service runs mailpipe deliver".into(),
            "paste the mailpipe service from /usr/share/mailpipe/postfix/master.cf (postfix/ in the source) and run postfix reload",
        );
        return None;
    };
    let name = service.name.clone();
    let subject = format!("master.cf {name}");
    let used = service.config_path().unwrap_or_else(|| DEFAULT_PATH.into());
    if same_file(&used, &options.config) {
        report.ok(
            "postfix",
            &subject,
            format!("runs {} deliver with this config", service.argv[0]),
        );
    } else {
        report.error(
            "postfix",
            &subject,
            format!(
                "runs mailpipe with {}, not {}",
                used.display(),
                options.config.display()
            ),
            "pass --config=<this file> in argv=, or check that file instead",
        );
    }
    let mail_owner = postfix
        .param("mail_owner")
        .unwrap_or_else(|_| "postfix".into());
    match service.user.as_deref() {
        None => report.error(
            "postfix",
            &subject,
            "no user= attribute".into(),
            "add user=mailpipe",
        ),
        Some(u) if u == "root" || u == mail_owner => report.error(
            "postfix",
            &subject,
            format!("user={u}: Postfix refuses to run commands as root or {mail_owner}"),
            "use a dedicated unprivileged user: user=mailpipe",
        ),
        Some(u) => report.ok("postfix", &subject, format!("runs as user {u}")),
    }
    check_flags(&service, &subject, report);
    for (macro_name, required) in [
        ("${recipient}", true),
        ("${original_recipient}", false),
        ("${queue_id}", false),
    ] {
        if !service.argv.iter().any(|a| a.contains(macro_name)) {
            let msg = format!("argv does not pass {macro_name}");
            let hint = format!(
                "add --{}={macro_name}",
                macro_name.trim_matches(['$', '{', '}']).replace('_', "-")
            );
            if required {
                report.error("postfix", &subject, msg, &hint);
            } else {
                report.warn("postfix", &subject, msg, &hint);
            }
        }
    }
    let limit = postfix
        .param(&format!("{name}_destination_recipient_limit"))
        .unwrap_or_default();
    if limit == "1" {
        report.ok(
            "postfix",
            &format!("{name}_destination_recipient_limit"),
            "1".into(),
        );
    } else {
        report.error(
            "postfix",
            &format!("{name}_destination_recipient_limit"),
            format!("is {limit:?}: one exit status would answer for several recipients"),
            &format!("postconf -e {name}_destination_recipient_limit=1"),
        );
    }
    let time_limit = postfix
        .param(&format!("{name}_time_limit"))
        .unwrap_or_default();
    match parse_duration(&time_limit) {
        Some(secs) if secs > config.limits.deadline_secs => report.ok(
            "postfix",
            &format!("{name}_time_limit"),
            format!("{secs}s, above mailpipe's deadline of {}s", config.limits.deadline_secs),
        ),
        _ => report.error(
            "postfix",
            &format!("{name}_time_limit"),
            format!(
                "{time_limit:?} is not above limits.deadline_secs ({}s): past it Postfix kills mailpipe and bounces",
                config.limits.deadline_secs
            ),
            &format!("postconf -e {name}_time_limit={}s", config.limits.deadline_secs * 2),
        ),
    }
    check_routing(config, postfix, &name, report);
    check_delimiter(config, postfix, report);
    let size = postfix.param("message_size_limit").unwrap_or_default();
    match size.parse::<u64>() {
        Ok(n) if n > 0 && n <= config.limits.max_message_bytes => report.ok(
            "postfix",
            "message_size_limit",
            format!("{n}, not above limits.max_message_bytes"),
        ),
        _ => report.error(
            "postfix",
            "message_size_limit",
            format!(
                "{size:?} is above limits.max_message_bytes ({}): Postfix accepts what mailpipe then bounces",
                config.limits.max_message_bytes
            ),
            "lower message_size_limit or raise limits.max_message_bytes",
        ),
    }
    Some(service)
}

fn check_flags(service: &PipeService, subject: &str, report: &mut Report) {
    let flags = &service.flags;
    let mut bad = Vec::new();
    if flags.contains('u') {
        bad.push("u folds the recipient's local part to lower case, and keys are case-sensitive");
    }
    if flags.contains('.') || flags.contains('>') || flags.contains('B') {
        bad.push("'.', '>' and 'B' change the message bytes that are stored");
    }
    for why in bad {
        report.error(
            "postfix",
            subject,
            format!("flags={flags}: {why}"),
            "use flags=DRX",
        );
    }
    if !flags.contains('D') {
        report.warn(
            "postfix",
            subject,
            format!("flags={flags} lacks D (Delivered-To, and Postfix's mail-loop check)"),
            "use flags=DRX",
        );
    } else if !flags.contains('u') {
        report.ok("postfix", subject, format!("flags={flags}"));
    }
}

fn check_routing(config: &Config, postfix: &Postfix, name: &str, report: &mut Report) {
    let domains = incoming_domains(config);
    let accepted_in = [
        "relay_domains",
        "mydestination",
        "virtual_mailbox_domains",
        "virtual_alias_domains",
    ];
    // One postconf call for every domain: it is the same answer each time.
    let relay_transport = postfix.param("relay_transport").unwrap_or_default();
    for domain in domains {
        let subject = format!("routing {domain}");
        let transport = postfix.transport_for(&domain).ok().flatten();
        let in_relay = domain_listed(postfix, "relay_domains", &domain);
        let routed = match &transport {
            Some(t) => t.split(':').next() == Some(name),
            None => in_relay && relay_transport.split(':').next() == Some(name),
        };
        if routed {
            report.ok(
                "postfix",
                &subject,
                format!("delivered by the {name} transport"),
            );
        } else {
            report.error(
                "postfix",
                &subject,
                format!(
                    "not routed to {name} (transport_maps gives {:?})",
                    transport.unwrap_or_default()
                ),
                &format!("add \"{domain} {name}:\" to the transport map and postmap it"),
            );
        }
        // relay_domains (accepted_in[0]) was asked about above.
        if !in_relay
            && !accepted_in[1..]
                .iter()
                .any(|p| domain_listed(postfix, p, &domain))
        {
            report.error(
                "postfix",
                &subject,
                format!(
                    "{domain} is in none of {}: Postfix answers \"Relay access denied\"",
                    accepted_in.join(", ")
                ),
                &format!("postconf -e 'relay_domains = $relay_domains, {domain}'"),
            );
        }
    }
}

/// True when `domain` is in the list parameter `param` (literal entries,
/// or lookup tables asked with `postmap -q`).
fn domain_listed(postfix: &Postfix, param: &str, domain: &str) -> bool {
    let Ok(value) = postfix.param(param) else {
        return false;
    };
    value
        .split([',', ' ', '\t', '\n'])
        .filter(|e| !e.is_empty())
        .any(|entry| {
            if entry.contains(':') && !entry.starts_with('/') {
                postfix.query(entry, domain).is_ok_and(|v| v.is_some())
            } else {
                entry.eq_ignore_ascii_case(domain)
            }
        })
}

fn check_delimiter(config: &Config, postfix: &Postfix, report: &mut Report) {
    let delimiters = postfix.param("recipient_delimiter").unwrap_or_default();
    for r in &config.routes {
        let local = r.template.address.split('@').next().unwrap_or("");
        let Some((prefix, _)) = local.split_once(crate::gitlab::address::PLACEHOLDER) else {
            continue;
        };
        let Some(own) = prefix.chars().last() else {
            continue;
        };
        let subject = format!("{}: recipient_delimiter", r.route);
        if let Some(early) = prefix[..prefix.len() - own.len_utf8()]
            .chars()
            .find(|c| delimiters.contains(*c))
        {
            report.warn(
                "postfix",
                &subject,
                format!("{delimiters:?} contains {early:?}, which splits {prefix}… before the key"),
                "keep only the template's own delimiter in recipient_delimiter",
            );
        } else if own == '+' && !delimiters.contains('+') {
            report.warn(
                "postfix",
                &subject,
                format!("sub-addressing template {} but recipient_delimiter is {delimiters:?}", r.template.address),
                "postconf -e recipient_delimiter=+ (recipient tables then match incoming+KEY@ as incoming@)",
            );
        } else {
            report.ok(
                "postfix",
                &subject,
                format!("{delimiters:?} fits {}", r.template.address),
            );
        }
    }
}

/// Postfix time values: a number with an optional unit (s, m, h, d, w).
pub fn parse_duration(value: &str) -> Option<u64> {
    let value = value.trim();
    let (digits, unit) = value.split_at(
        value
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(value.len()),
    );
    let n: u64 = digits.parse().ok()?;
    let mult = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        "w" => 604800,
        _ => return None,
    };
    Some(n * mult)
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(x), Ok(y)) => x == y,
        _ => a == b,
    }
}

/// With `smtputf8_enable = no`, Postfix's smtpd(8) does not announce
/// SMTPUTF8 in its EHLO reply and refuses `MAIL FROM:<…> SMTPUTF8` with
/// "555 5.5.4 Unsupported option: SMTPUTF8" (smtpd.c, mail_cmd). A sending
/// server whose message needs SMTPUTF8 (an address that is not ASCII,
/// RFC 6531 §3.2) may not send it and returns it to its author: the reply
/// never reaches mailpipe or GitLab, and no log of ours shows it.
pub(super) fn check_smtputf8(postfix: &Postfix, report: &mut Report) {
    let Ok(value) = postfix.param("smtputf8_enable") else {
        return; // no postconf: check_postfix has said so
    };
    if value.eq_ignore_ascii_case("no") {
        report.warn(
            "postfix",
            "smtputf8_enable",
            "no: Postfix does not offer SMTPUTF8 and refuses MAIL FROM … SMTPUTF8 (555 5.5.4), so \
             mail from or to an address with non-ASCII characters is returned to its sender by the \
             sending server and never reaches GitLab"
                .into(),
            "postconf -e smtputf8_enable=yes (the default since compatibility_level 1); mailpipe \
             stores UTF-8 headers and envelopes unchanged",
        );
    } else {
        report.ok(
            "postfix",
            "smtputf8_enable",
            format!("{value}: mail from SMTPUTF8 senders is accepted"),
        );
    }
}

/// Where `deliver`'s log line goes. With a syslog daemon on /dev/log, to
/// syslog. Without one, glibc's syslog(3) drops it; `deliver` then prints a
/// spooled message's line on stdout, and pipe(8) logs it after
/// `status=sent (delivered via <service> service (…))`, wherever Postfix
/// logs: its `maillog_file` (postlogd) or syslog, lost too.
pub(super) fn check_logging(postfix: &Postfix, report: &mut Report) {
    let socket = crate::log::SYSLOG_SOCKET;
    if crate::log::syslog_reachable() {
        report.ok(
            "logging",
            socket,
            "a syslog daemon listens: deliver logs one line per message (facility mail, \
             ident mailpipe)"
                .into(),
        );
        return;
    }
    let maillog = postfix
        .param("maillog_file")
        .ok()
        .filter(|f| !f.trim().is_empty());
    match maillog {
        Some(file) => report.warn(
            "logging",
            socket,
            format!(
                "no syslog daemon listens; deliver's lines go into Postfix's maillog_file \
                 {file}, in Postfix's own line: a spooled message's route, kind and key \
                 fingerprint after \"status=sent (delivered via <service> service (2.0.0 \
                 mailpipe: route=…\", other outcomes as mailpipe's reason"
            ),
            "for mailpipe's full line on every outcome, run a syslog daemon \
             (apt-get install rsyslog, or systemd-journald)",
        ),
        None => report.warn(
            "logging",
            socket,
            "no syslog daemon listens and Postfix logs to syslog too: deliver's and \
             Postfix's log lines are lost"
                .into(),
            "run a syslog daemon (apt-get install rsyslog), or let Postfix log to a file: \
             postconf -e maillog_file=/var/log/postfix.log && postfix reload (the postlog \
             service must be in master.cf, as Debian ships it); deliver's lines then go there",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("600s"), Some(600));
        assert_eq!(parse_duration("1000"), Some(1000));
        assert_eq!(parse_duration("10m"), Some(600));
        assert_eq!(parse_duration("x"), None);
    }
}
