//! `mailpipe check`: every reason incoming email would not work, at once,
//! each with the setting concerned and the fix. It loads the configuration
//! through exactly the code `deliver` uses, so the two cannot disagree.
//!
//! Must not: change anything (no mkdir, no chmod, no Postfix reload); the
//! only write is `--send-test`'s probe message, submitted through Postfix.
//! Fails: never; a check that cannot run is itself a finding.

use std::fmt::Write as _;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::config::{Config, DEFAULT_PATH};
use crate::postfix::{PipeService, Postfix, PostfixError};

/// How bad a finding is; any `Error` makes `check` exit 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Ok,
    Warning,
    Error,
}

/// One line of the report.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    pub level: Level,
    /// The area: config, security, spool, postfix, probe.
    pub check: &'static str,
    /// The setting, file or parameter concerned.
    pub subject: String,
    pub message: String,
    /// What to do; empty for `ok`.
    pub hint: String,
}

/// Options of `mailpipe check`.
#[derive(Debug, Clone)]
pub struct Options {
    pub config: PathBuf,
    /// `postconf -c DIR`: check that Postfix instance instead of the default.
    pub postfix_config: Option<PathBuf>,
    /// The user Postfix runs mailpipe as, when master.cf cannot tell.
    pub user: Option<String>,
    /// Submit a probe message through Postfix and watch where it ends.
    pub send_test: bool,
}

/// The report: findings in order.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub config: String,
    pub errors: usize,
    pub warnings: usize,
    pub findings: Vec<Finding>,
}

impl Report {
    /// Adds one finding.
    pub fn add(
        &mut self,
        level: Level,
        check: &'static str,
        subject: &str,
        message: String,
        hint: &str,
    ) {
        match level {
            Level::Error => self.errors += 1,
            Level::Warning => self.warnings += 1,
            Level::Ok => {}
        }
        self.findings.push(Finding {
            level,
            check,
            subject: subject.to_string(),
            message,
            hint: hint.to_string(),
        });
    }

    fn ok(&mut self, check: &'static str, subject: &str, message: String) {
        self.add(Level::Ok, check, subject, message, "");
    }

    fn warn(&mut self, check: &'static str, subject: &str, message: String, hint: &str) {
        self.add(Level::Warning, check, subject, message, hint);
    }

    fn error(&mut self, check: &'static str, subject: &str, message: String, hint: &str) {
        self.add(Level::Error, check, subject, message, hint);
    }

    /// One line per check, for a person.
    pub fn to_text(&self) -> String {
        let mut out = format!("mailpipe check: {}\n", self.config);
        for f in &self.findings {
            let level = match f.level {
                Level::Ok => "ok",
                Level::Warning => "warning",
                Level::Error => "error",
            };
            let _ = writeln!(out, "{level:<8}{:<10}{}: {}", f.check, f.subject, f.message);
            if !f.hint.is_empty() {
                let _ = writeln!(out, "{:18}fix: {}", "", f.hint);
            }
        }
        let oks = self.findings.len() - self.errors - self.warnings;
        let _ = writeln!(
            out,
            "{oks} ok, {} warning(s), {} error(s)",
            self.warnings, self.errors
        );
        out
    }
}

/// Runs `mailpipe check` and prints the report; `Failed` (exit 1) on any
/// error.
pub fn main(args: &crate::cli::CheckArgs) -> crate::status::AdminOutcome {
    use std::io::Write;
    let report = run(&Options {
        config: args.config.clone(),
        postfix_config: args.postfix_config.clone(),
        user: args.user.clone(),
        send_test: args.send_test,
    });
    let text = match args.format {
        crate::cli::Format::Text => report.to_text(),
        crate::cli::Format::Json => {
            serde_json::to_string_pretty(&report).unwrap_or_default() + "\n"
        }
    };
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
    crate::status::AdminOutcome::from_success(report.errors == 0)
}

/// Runs every check.
pub fn run(options: &Options) -> Report {
    let mut report = Report {
        config: options.config.display().to_string(),
        ..Report::default()
    };
    let config = match Config::load_all(&options.config) {
        Ok(c) => c,
        Err(problems) => {
            for p in problems {
                let subject = p.key.clone().unwrap_or_else(|| match p.line {
                    Some(l) => format!("{}:{l}", p.path.display()),
                    None => p.path.display().to_string(),
                });
                report.error("config", &subject, p.message.clone(), &p.hint);
            }
            return report;
        }
    };
    let names: Vec<&str> = config.routes.iter().map(|r| r.route.as_str()).collect();
    report.ok(
        "config",
        &options.config.display().to_string(),
        format!("loaded; routes {}", names.join(", ")),
    );
    check_addresses(&config, &mut report);

    let postfix = Postfix::new(options.postfix_config.as_deref());
    let service = check_postfix(&config, options, &postfix, &mut report);
    check_security(&config, &postfix, &mut report);
    if postfix.param("mail_version").is_ok() {
        crate::policy::wiring::check(&config, &postfix, &mut report);
    }
    let user = service
        .as_ref()
        .and_then(|s| s.user.clone())
        .or_else(|| options.user.clone())
        .unwrap_or_else(|| "mailpipe".to_string());
    check_spool(&config, &user, &mut report);
    check_drain(&config, &mut report);
    check_trust(&config, &options.config, &user, &mut report);
    check_gitlab_url(&config, &mut report);
    check_smtputf8(&postfix, &mut report);
    check_logging(&postfix, &mut report);
    if options.send_test {
        crate::probe::send(&config, &postfix, &mut report);
    }
    report
}

/// Where `deliver`'s log line goes. With a syslog daemon on /dev/log, to
/// syslog. Without one, glibc's syslog(3) drops it; `deliver` then prints a
/// spooled message's line on stdout, and pipe(8) logs it after
/// `status=sent (delivered via <service> service (…))`, wherever Postfix
/// logs: its `maillog_file` (postlogd) or syslog, lost too.
fn check_logging(postfix: &Postfix, report: &mut Report) {
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

fn check_addresses(config: &Config, report: &mut Report) {
    for r in &config.routes {
        let subject = format!("{}.address", r.route);
        if r.template.has_key() {
            report.ok(
                "config",
                &subject,
                format!("{} has %{{key}} in the local part", r.template.address),
            );
        } else {
            report.warn(
                "config",
                &subject,
                format!("{} has no %{{key}}: only replies can be routed (key from References)", r.template.address),
                "add %{key} (sub-addressing \"incoming+%{key}@…\") for new issues, merge requests and Service Desk",
            );
        }
    }
    // Custom Service Desk email (issue 14): say what the list does.
    for c in &config.custom_email.addresses {
        report.ok(
            "config",
            "service_desk_custom_email",
            format!(
                "{c}: mail without a key whose To names {c} (or its +verify) is stored for {}, \
                 and GitLab finds the project from its custom email setting; replies to \
                 <base>+<reply key>@ go to incoming_email",
                config.custom_email_route()
            ),
        );
    }
}

/// The configured incoming domains, lower case, each once.
fn incoming_domains(config: &Config) -> Vec<String> {
    let mut domains: Vec<String> = config
        .routes
        .iter()
        .map(|r| r.template.domain().to_ascii_lowercase())
        .collect();
    domains.sort();
    domains.dedup();
    domains
}

/// The Slack-verification exploit (GitLab's "Security concerns"): anyone
/// who can get a mail to a project's address can confirm an account that
/// trusts "has a mailbox at our domain".
fn check_security(config: &Config, postfix: &Postfix, report: &mut Report) {
    let host = config.gitlab_host.to_ascii_lowercase();
    let mydomain = postfix
        .param("mydomain")
        .ok()
        .map(|d| d.to_ascii_lowercase());
    let domains = incoming_domains(config);
    let hint = "receive GitLab mail on its own subdomain (incoming.gitlab.example.com) or a dedicated \
                domain: if the incoming domain is the company's mail domain, an attacker can sign up to a \
                service that trusts that domain (Slack) with a project's address, and the confirmation \
                mail becomes an issue they can read";
    for domain in domains {
        let parent_of_host = host.ends_with(&format!(".{domain}"));
        if domain == host || parent_of_host || mydomain.as_deref() == Some(domain.as_str()) {
            let why = if domain == host {
                "is GitLab's own host name".to_string()
            } else if parent_of_host {
                format!("is a parent of GitLab's host {host}, likely the company's main domain")
            } else {
                "is Postfix's $mydomain, the company's main mail domain".to_string()
            };
            report.warn(
                "security",
                &domain,
                format!("incoming domain {domain} {why}"),
                hint,
            );
        } else {
            report.ok(
                "security",
                &domain,
                "incoming domain is separate from GitLab's host and $mydomain".into(),
            );
        }
    }
}

/// The drain's side: GitLab's URL and each route's secret file, read the
/// way the drain (and GitLab) read it. Messages never show the secret.
fn check_drain(config: &Config, report: &mut Report) {
    let Some(url) = &config.gitlab_url else {
        report.warn(
            "drain",
            "gitlab.url",
            "not set: mailpipe drain cannot hand the spool to GitLab".into(),
            "set gitlab.url to GitLab's external URL, like \"https://gitlab.example.com\"",
        );
        return;
    };
    report.ok(
        "drain",
        "gitlab.url",
        format!("posts to {url}/api/v4/internal/mail_room/<route>"),
    );
    for r in &config.routes {
        let subject = format!("{}.secret_file", r.route);
        match crate::drain::auth::Secret::load(r.secret_file.as_deref()) {
            Ok(_) => report.ok(
                "drain",
                &subject,
                "a 32-byte base64 secret, as GitLab wants".into(),
            ),
            Err(e) => report.error(
                "drain",
                &subject,
                e.to_string(),
                "point it at GitLab's secret file (gitlab.yml secret_file, e.g. \
                 /var/opt/gitlab/gitlab-rails/.gitlab_mailroom_secret), readable by the drain",
            ),
        }
    }
}

/// The spool steps (src/spool_check.rs), as the spool's owner when run as
/// root: root never works on the spool as root.
fn check_spool(config: &Config, user: &str, report: &mut Report) {
    let Some(account) = Account::lookup(user) else {
        report.error(
            "spool",
            "user",
            format!("user {user:?} (who Postfix runs mailpipe as) does not exist"),
            "create it (useradd --system mailpipe) or fix user= in master.cf",
        );
        return;
    };
    let deliver = crate::spool_check::DeliverAccount {
        name: account.name.clone(),
        uid: account.uid,
        gids: account.gids.clone(),
    };
    let steps = || crate::spool_check::check(config, &deliver);
    // A missing root is reported by the steps themselves (nothing to become).
    let result = if crate::layout::Dir::open_root(&config.spool.dir).is_err() {
        Ok(steps())
    } else {
        crate::privilege::as_spool_owner(&config.spool.dir, steps)
    };
    match result {
        Ok(findings) => {
            for f in findings {
                let level = match f.level.as_str() {
                    "ok" => Level::Ok,
                    "warning" => Level::Warning,
                    _ => Level::Error,
                };
                report.add(level, "spool", &f.subject, f.message, &f.hint);
            }
        }
        Err(why) => report.error(
            "spool",
            "spool.dir",
            why,
            "give the spool to the drain's account: systemd-tmpfiles --create mailpipe.conf",
        ),
    }
}

/// Postfix's side: the pipe service, its flags, limits and routing.
fn check_postfix(
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
    for domain in domains {
        let subject = format!("routing {domain}");
        let transport = postfix.transport_for(&domain).ok().flatten();
        let relay_transport = postfix.param("relay_transport").unwrap_or_default();
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
        if !accepted_in
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
pub(crate) fn parse_duration(value: &str) -> Option<u64> {
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

/// A local account, for "can this user write there" questions.
struct Account {
    name: String,
    uid: u32,
    gids: Vec<u32>,
}

impl Account {
    /// Asks id(1) rather than calling getpwnam(3) in this process: id
    /// sees every NSS source the system is set up with (LDAP, sssd,
    /// systemd), and a statically linked mailpipe must not load NSS
    /// modules itself.
    fn lookup(name: &str) -> Option<Account> {
        let id = |flag: &str| -> Option<Vec<u32>> {
            let out = std::process::Command::new("id")
                .args([flag, "--", name])
                .output()
                .ok()?;
            if !out.status.success() {
                return None;
            }
            String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .map(|n| n.parse().ok())
                .collect()
        };
        let uid = *id("-u")?.first()?;
        let gids = id("-G")?;
        Some(Account {
            name: name.to_string(),
            uid,
            gids,
        })
    }

    /// Write and search permission on a directory, by its mode bits.
    fn can_write(&self, dir: &Path) -> bool {
        let Ok(m) = std::fs::metadata(dir) else {
            return false;
        };
        if self.uid == 0 {
            return true;
        }
        let mode = m.permissions().mode();
        let bits = if m.uid() == self.uid {
            mode >> 6
        } else if self.gids.contains(&m.gid()) {
            mode >> 3
        } else {
            mode
        };
        bits & 0o3 == 0o3
    }
}

// ---- The trust boundary: what the deliver account must not control -------

/// The deliver account parses mail from the Internet and must be assumed
/// taken over. It must not be able to change the configuration (which
/// names the spool, GitLab's URL and the secret files that root and the
/// drain then use), nor read or change a route's mail_room secret (which
/// signs the drain's requests to GitLab). Mode bits and owners only, like
/// the spool checks; path names are shown through `status::printable`.
fn check_trust(config: &Config, config_path: &Path, user: &str, report: &mut Report) {
    let Some(account) = Account::lookup(user) else {
        return; // check_spool has said that the user does not exist
    };
    let shown = shown_path(config_path);
    let errors_before = report.errors;
    match std::fs::metadata(config_path) {
        Ok(m) => {
            if account.may(&m, WRITE) {
                report.error(
                    "security",
                    &shown,
                    format!(
                        "writable by {}, the account that parses Internet mail: taken over, it \
                         rewrites what root and the drain read (spool.dir, gitlab.url, secret_file)",
                        account.name
                    ),
                    &format!("chown root:root {shown} && chmod 0644 {shown}"),
                );
            } else if !account.may(&m, READ) || !account.can_search_to(config_path) {
                report.error(
                    "config",
                    &shown,
                    format!(
                        "not readable by {}, who runs deliver: every message is deferred",
                        account.name
                    ),
                    &format!(
                        "chmod 0644 {shown} (or chgrp {} and 0640), with search permission on its folders",
                        account.name
                    ),
                );
            }
        }
        Err(e) => report.error(
            "config",
            &shown,
            format!("cannot be examined: {e}"),
            "check the path",
        ),
    }
    check_folders(config_path, &account, &shown, report);
    if report.errors == errors_before {
        report.ok(
            "security",
            &shown,
            format!("{} can read it and cannot change it", account.name),
        );
    }
    for r in &config.routes {
        let Some(secret) = r.secret_file.as_deref() else {
            continue;
        };
        let Ok(m) = std::fs::metadata(secret) else {
            continue; // check_drain reports a secret that cannot be read
        };
        let subject = format!("{}.secret_file", r.route);
        let shown = shown_path(secret);
        let errors_before = report.errors;
        let mode = m.permissions().mode() & 0o7777;
        let hint = format!("chown root:mailpipe-drain {shown} && chmod 0640 {shown}");
        if account.may(&m, WRITE) {
            report.error(
                "security",
                &subject,
                format!(
                    "{shown} is writable by {}, the account that parses Internet mail",
                    account.name
                ),
                &hint,
            );
        }
        if mode & 0o004 != 0 {
            report.error(
                "security",
                &subject,
                format!("{shown} is world-readable (mode {mode:04o}); it signs the drain's requests to GitLab"),
                &hint,
            );
        } else if account.may(&m, READ) && account.can_search_to(secret) {
            report.error(
                "security",
                &subject,
                format!(
                    "{shown} is readable by {}, the account that parses Internet mail: taken over, \
                     it could sign requests to GitLab's mail_room API",
                    account.name
                ),
                &hint,
            );
        }
        check_folders(secret, &account, &subject, report);
        if report.errors == errors_before {
            report.ok(
                "security",
                &subject,
                format!(
                    "{shown} (mode {mode:04o}) is out of {}'s reach",
                    account.name
                ),
            );
        }
    }
}

/// An error for each folder on the way to `path` (as written and as
/// resolved) in which `account` could replace the next step: a folder it
/// may write, unless the sticky bit keeps it from renaming what it does not
/// own (like /tmp).
fn check_folders(path: &Path, account: &Account, subject: &str, report: &mut Report) {
    let mut steps: Vec<PathBuf> = vec![absolute(path)];
    if let Ok(real) = std::fs::canonicalize(path)
        && real != steps[0]
    {
        steps.push(real);
    }
    let mut seen = Vec::new();
    for full in steps {
        for child in full.ancestors() {
            let Some(dir) = child.parent() else {
                break;
            };
            if seen.iter().any(|d: &PathBuf| d == dir) {
                continue;
            }
            seen.push(dir.to_path_buf());
            let Ok(m) = std::fs::metadata(dir) else {
                continue;
            };
            if !account.can_write(dir) {
                continue;
            }
            let sticky = m.permissions().mode() & 0o1000 != 0;
            let owns_child = std::fs::symlink_metadata(child).is_ok_and(|c| c.uid() == account.uid);
            if sticky && !owns_child && account.uid != 0 {
                continue;
            }
            let shown_dir = shown_path(dir);
            report.error(
                "security",
                subject,
                format!(
                    "folder {shown_dir} is writable by {}, the account that parses Internet mail: \
                     it can replace {}",
                    account.name,
                    shown_path(child)
                ),
                &format!("chown root:root {shown_dir} && chmod go-w {shown_dir}"),
            );
        }
    }
}

/// A path as `check` prints it: through the one printable filter.
fn shown_path(path: &Path) -> String {
    crate::status::printable(&path.display().to_string(), 300)
}

/// `path` made absolute against the working directory, without resolving
/// links (the folders as written are the ones opened).
fn absolute(path: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()
            .map(|d| d.join(path))
            .unwrap_or_else(|_| path.to_path_buf())
    }
}

/// Permission bits of one class (other's position): read, write, search.
const READ: u32 = 0o4;
const WRITE: u32 = 0o2;
const SEARCH: u32 = 0o1;

impl Account {
    /// True when the mode bits that apply to this account grant `bits`
    /// (root is granted everything, as the kernel does for files).
    fn may(&self, m: &std::fs::Metadata, bits: u32) -> bool {
        if self.uid == 0 {
            return true;
        }
        let mode = m.permissions().mode();
        let class = if m.uid() == self.uid {
            mode >> 6
        } else if self.gids.contains(&m.gid()) {
            mode >> 3
        } else {
            mode
        };
        class & bits == bits
    }

    /// True when every folder above `path` lets this account pass.
    fn can_search_to(&self, path: &Path) -> bool {
        let full = std::fs::canonicalize(path).unwrap_or_else(|_| absolute(path));
        full.ancestors()
            .skip(1)
            .all(|dir| std::fs::metadata(dir).is_ok_and(|m| self.may(&m, SEARCH)))
    }
}

/// The drain signs every request with the route's secret (a JWT in the
/// `Gitlab-Mailroom-Api-Request` header) and posts whole messages: over
/// plain http to another machine, both cross the network in clear.
fn check_gitlab_url(config: &Config, report: &mut Report) {
    let Some(url) = &config.gitlab_url else {
        return;
    };
    let Some(rest) = url.strip_prefix("http://") else {
        return;
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = match host_port.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host_port.split(':').next().unwrap_or(""),
    };
    if is_loopback(host) {
        return;
    }
    report.warn(
        "security",
        "gitlab.url",
        format!(
            "{} is plain http to {}, not a loopback address: the request token signed with the \
             mail_room secret, and every message, cross the network in clear",
            crate::status::printable(url, 200),
            crate::status::printable(host, 100)
        ),
        "use https:// (GitLab's external URL); plain http only to 127.0.0.1 or [::1] on the GitLab host",
    );
}

/// `localhost`, a name under `.localhost` (RFC 6761 §6.3), 127.0.0.0/8 or ::1.
fn is_loopback(host: &str) -> bool {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    host == "localhost"
        || host.ends_with(".localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// With `smtputf8_enable = no`, Postfix's smtpd(8) does not announce
/// SMTPUTF8 in its EHLO reply and refuses `MAIL FROM:<…> SMTPUTF8` with
/// "555 5.5.4 Unsupported option: SMTPUTF8" (smtpd.c, mail_cmd). A sending
/// server whose message needs SMTPUTF8 (an address that is not ASCII,
/// RFC 6531 §3.2) may not send it and returns it to its author: the reply
/// never reaches mailpipe or GitLab, and no log of ours shows it.
fn check_smtputf8(postfix: &Postfix, report: &mut Report) {
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
