//! `mailpipe check`'s view of the policy service: is `check_policy_service`
//! in the RCPT restrictions, does the service answer (and answer as this
//! configuration would), does Postfix fail open when it does not (default
//! action `DUNNO`), and are the timeouts sane. Each finding has its fix.
//!
//! Must not: change Postfix's configuration, or spend a rate-limit token
//! (the probe asks about a recipient that is refused before any bucket).
//! Fails: never; a check that cannot run is a finding.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::check::{Level, Report};
use crate::config::Config;
use crate::policy::answer;
use crate::policy::protocol::{Parser, Request};
use crate::postfix::Postfix;

/// The endpoint the shipped snippet uses.
pub const SHIPPED_ENDPOINT: &str = "unix:private/mailpipe-policy";
/// Longer than this, a hung service holds every RCPT TO for that long.
const MAX_SANE_TIMEOUT_SECS: u64 = 10;
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// One `check_policy_service` entry of a restriction list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyEntry {
    /// The restriction list it is in, like `smtpd_recipient_restrictions`.
    pub list: &'static str,
    /// `unix:private/NAME`, `inet:HOST:PORT`, …
    pub endpoint: String,
    /// Postfix 3.0's per-service settings: `{ endpoint, name=value, … }`.
    pub settings: Vec<(String, String)>,
}

impl PolicyEntry {
    fn setting(&self, name: &str) -> Option<&str> {
        self.settings
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Every `check_policy_service` in a restriction list's value.
pub fn entries(list: &'static str, value: &str) -> Vec<PolicyEntry> {
    let mut out = Vec::new();
    let mut rest = value;
    while let Some(at) = rest.find("check_policy_service") {
        rest = rest[at + "check_policy_service".len()..].trim_start_matches([' ', '\t', '\n', ',']);
        if let Some(inner) = rest.strip_prefix('{') {
            let end = inner.find('}').unwrap_or(inner.len());
            let mut items = inner[..end]
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty());
            let endpoint = items.next().unwrap_or("").to_string();
            let settings = items
                .filter_map(|i| i.split_once('='))
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                .collect();
            out.push(PolicyEntry {
                list,
                endpoint,
                settings,
            });
            rest = &inner[end.min(inner.len())..];
        } else {
            let end = rest.find([' ', '\t', '\n', ',']).unwrap_or(rest.len());
            out.push(PolicyEntry {
                list,
                endpoint: rest[..end].to_string(),
                settings: Vec::new(),
            });
            rest = &rest[end..];
        }
    }
    out
}

/// Adds the policy findings to `report`.
pub fn check(config: &Config, postfix: &Postfix, report: &mut Report) {
    let mut found = Vec::new();
    for list in ["smtpd_recipient_restrictions", "smtpd_relay_restrictions"] {
        if let Ok(v) = postfix.param(list) {
            found.extend(entries(list, &v));
        }
    }
    let ours = found
        .iter()
        .find(|e| e.endpoint.contains("mailpipe"))
        .or(if found.len() == 1 {
            found.first()
        } else {
            None
        });
    let Some(entry) = ours else {
        report.add(
            Level::Warning,
            "policy",
            "smtpd_recipient_restrictions",
            "no mailpipe check_policy_service: unknown keys are accepted and then bounced \
             (backscatter), and nothing brakes a mail loop"
                .into(),
            "add the lines of /usr/share/mailpipe/postfix/main.policy.cf (postfix/ in the source), \
             systemctl enable --now mailpipe-policy.socket, postfix reload",
        );
        return;
    };
    let subject = format!("{} check_policy_service {}", entry.list, entry.endpoint);
    report.add(
        Level::Ok,
        "policy",
        &subject,
        "in the RCPT restrictions".into(),
        "",
    );

    let default_action = entry
        .setting("default_action")
        .map(str::to_string)
        .or_else(|| postfix.param("smtpd_policy_service_default_action").ok())
        .unwrap_or_default();
    if default_action.trim() == "DUNNO" {
        report.add(
            Level::Ok,
            "policy",
            "smtpd_policy_service_default_action",
            "DUNNO: when the service is down, mail goes on to deliver".into(),
            "",
        );
    } else {
        report.add(
            Level::Error,
            "policy",
            "smtpd_policy_service_default_action",
            format!(
                "{default_action:?}: when the policy service is down or slow, Postfix answers \
                 that to every recipient instead of letting deliver decide"
            ),
            "postconf -e smtpd_policy_service_default_action=DUNNO",
        );
    }

    let timeout = entry
        .setting("timeout")
        .map(str::to_string)
        .or_else(|| postfix.param("smtpd_policy_service_timeout").ok())
        .unwrap_or_default();
    match crate::check::parse_duration(&timeout) {
        Some(s) if s <= MAX_SANE_TIMEOUT_SECS => report.add(
            Level::Ok,
            "policy",
            "smtpd_policy_service_timeout",
            format!("{s}s"),
            "",
        ),
        _ => report.add(
            Level::Warning,
            "policy",
            "smtpd_policy_service_timeout",
            format!(
                "{timeout:?}: a hung policy service would hold every RCPT TO that long \
                 (twice, with the default try limit) before the default action"
            ),
            "postconf -e smtpd_policy_service_timeout=5s",
        ),
    }
    let max_idle = entry
        .setting("max_idle")
        .map(str::to_string)
        .or_else(|| postfix.param("smtpd_policy_service_max_idle").ok())
        .unwrap_or_default();
    match crate::check::parse_duration(&max_idle) {
        Some(s) if s < config.policy.idle_timeout_secs => report.add(
            Level::Ok,
            "policy",
            "smtpd_policy_service_max_idle",
            format!(
                "{s}s, below policy.idle_timeout_secs ({}s)",
                config.policy.idle_timeout_secs
            ),
            "",
        ),
        _ => report.add(
            Level::Warning,
            "policy",
            "smtpd_policy_service_max_idle",
            format!(
                "{max_idle:?} is not below policy.idle_timeout_secs ({}s): mailpipe closes idle \
                 connections Postfix still counts on, and Postfix logs a retry",
                config.policy.idle_timeout_secs
            ),
            "keep smtpd_policy_service_max_idle at its default 300s, or raise \
             policy.idle_timeout_secs",
        ),
    }

    let queue = postfix
        .param("queue_directory")
        .map(PathBuf::from)
        .unwrap_or_else(|_| "/var/spool/postfix".into());
    let probe = probe_request(config);
    let expected = answer::for_request(config, &probe, None, Instant::now()).action;
    let service = format!("service {}", entry.endpoint);
    match ask(&entry.endpoint, &queue, &probe) {
        Ok(got) if got == expected => report.add(
            Level::Ok,
            "policy",
            &service,
            "answers as this configuration would".into(),
            "",
        ),
        Ok(got) => report.add(
            Level::Warning,
            "policy",
            &service,
            format!("answered {got:?} where this configuration answers {expected:?}"),
            "run mailpipe policy with this --config (systemctl cat mailpipe-policy.service), \
             or wait a second after editing the file: the service re-reads it",
        ),
        Err(e) => report.add(
            Level::Warning,
            "policy",
            &service,
            format!(
                "not answering ({e}): Postfix uses the default action, no backscatter protection"
            ),
            "systemctl enable --now mailpipe-policy.socket (journalctl -u mailpipe-policy)",
        ),
    }
}

/// A request about a recipient no key can match (`..` breaks the key
/// alphabet), in the first incoming domain: refused before any rate bucket.
pub fn probe_request(config: &Config) -> Request {
    let domain = config
        .routes
        .first()
        .map_or("invalid", |r| r.template.domain());
    Request {
        request: Some("smtpd_access_policy".into()),
        protocol_state: Some("RCPT".into()),
        sender: Some(String::new()),
        recipient: Some(format!("mailpipe-check..probe@{domain}")),
        size: Some("0".into()),
        malformed: None,
    }
}

/// Sends one request to `endpoint` and returns the action.
pub fn ask(endpoint: &str, queue_directory: &Path, request: &Request) -> Result<String, String> {
    let mut text = String::new();
    for (name, value) in [
        ("request", &request.request),
        ("protocol_state", &request.protocol_state),
        ("sender", &request.sender),
        ("recipient", &request.recipient),
        ("size", &request.size),
    ] {
        if let Some(v) = value {
            text.push_str(&format!("{name}={v}\n"));
        }
    }
    text.push('\n');
    let reply = if let Some(path) = endpoint.strip_prefix("unix:") {
        // Postfix resolves a relative path against queue_directory.
        let path = queue_directory.join(path);
        let s = UnixStream::connect(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        s.set_read_timeout(Some(PROBE_TIMEOUT))
            .map_err(|e| e.to_string())?;
        s.set_write_timeout(Some(PROBE_TIMEOUT))
            .map_err(|e| e.to_string())?;
        exchange(s, &text)?
    } else {
        let addr = endpoint.strip_prefix("inet:").unwrap_or(endpoint);
        let addr: SocketAddr = addr.parse().map_err(|e| format!("{addr}: {e}"))?;
        let s = TcpStream::connect_timeout(&addr, PROBE_TIMEOUT).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(PROBE_TIMEOUT))
            .map_err(|e| e.to_string())?;
        s.set_write_timeout(Some(PROBE_TIMEOUT))
            .map_err(|e| e.to_string())?;
        exchange(s, &text)?
    };
    Ok(reply)
}

fn exchange(mut s: impl Read + Write, text: &str) -> Result<String, String> {
    s.write_all(text.as_bytes()).map_err(|e| e.to_string())?;
    // The reply is name=value lines too; read up to its empty line.
    let mut parser = Parser::new();
    let mut buf = [0u8; 1024];
    let mut total = 0;
    let mut reply: Option<Vec<u8>> = None;
    let mut raw = Vec::new();
    while reply.is_none() {
        let n = s.read(&mut buf).map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("closed without an answer".into());
        }
        total += n;
        if total > 4096 {
            return Err("answer too long".into());
        }
        raw.extend_from_slice(&buf[..n]);
        parser.feed(&buf[..n], |_| reply = Some(raw.clone()));
    }
    let raw = String::from_utf8_lossy(&reply.unwrap_or_default()).into_owned();
    raw.lines()
        .find_map(|l| l.strip_prefix("action="))
        .map(str::to_string)
        .ok_or_else(|| format!("no action= in {raw:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_entries_plain_and_braced() {
        let e = entries(
            "smtpd_recipient_restrictions",
            "permit_mynetworks, reject_unauth_destination, check_policy_service unix:private/mailpipe-policy",
        );
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].endpoint, "unix:private/mailpipe-policy");
        let e = entries(
            "x",
            "reject_unauth_destination check_policy_service { inet:127.0.0.1:10033, timeout=5s, default_action=DUNNO } permit",
        );
        assert_eq!(e[0].endpoint, "inet:127.0.0.1:10033");
        assert_eq!(e[0].setting("timeout"), Some("5s"));
        assert_eq!(e[0].setting("default_action"), Some("DUNNO"));
        assert!(entries("x", "permit_mynetworks").is_empty());
    }
}
