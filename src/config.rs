//! The configuration file: its TOML types, defaults, limits, and the checks
//! that every command (`deliver`, `explain`, `check`, `drain`) shares.
//!
//! Must not: know about Postfix, HTTP, exit statuses or the spool's files.
//! Fails: with `ConfigError`s naming the file, the line and a hint. The
//! caller turns any of them into a deferral: a config mistake must never
//! bounce mail.
//!
//! Names follow gitlab.yml (`incoming_email.address`, `gitlab.host`,
//! `secret_file`) so a GitLab admin recognises them.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use crate::gitlab::address::Template;

/// Where the configuration lives unless `--config` says otherwise.
pub const DEFAULT_PATH: &str = "/etc/mailpipe/mailpipe.toml";

/// The two GitLab mailboxes mailpipe replaces; also the spool folder names
/// and the last segment of GitLab's mail_room API path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Route {
    IncomingEmail,
    ServiceDeskEmail,
}

impl Route {
    pub const ALL: [Route; 2] = [Route::IncomingEmail, Route::ServiceDeskEmail];

    pub fn as_str(self) -> &'static str {
        match self {
            Route::IncomingEmail => "incoming_email",
            Route::ServiceDeskEmail => "service_desk_email",
        }
    }
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub incoming_email: RawRoute,
    pub service_desk_email: Option<RawRoute>,
    pub gitlab: RawGitlab,
    pub spool: SpoolConfig,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub drain: DrainConfig,
    #[serde(default)]
    pub policy: PolicyConfig,
    /// GitLab's custom Service Desk email (16.3+): see [`CustomEmailConfig`].
    pub service_desk_custom_email: Option<RawCustomEmail>,
}

/// `[service_desk_custom_email]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCustomEmail {
    /// The custom addresses set in the projects' Service Desk settings,
    /// like `support@customer.example`.
    #[serde(default)]
    pub addresses: Option<Spanned<Vec<String>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub address: Spanned<String>,
    /// GitLab's `secret_file` for this mailbox: read by the drain only.
    pub secret_file: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGitlab {
    /// `gitlab.host`: GitLab's Message-IDs are `reply-KEY@<host>`.
    pub host: Spanned<String>,
    /// Base URL the drain posts to (`gitlab_url` in gitlab.yml).
    pub url: Option<Spanned<String>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpoolConfig {
    /// Root of the spool; one Maildir per route below it.
    pub dir: PathBuf,
}

/// Bounds on what one delivery may cost.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Larger messages are refused with 5.3.4. Keep it at or above
    /// Postfix's `message_size_limit` (default 10240000).
    pub max_message_bytes: u64,
    /// Only this much of the header section is read for the decision; the
    /// rest is stored, not parsed (Postfix's `header_size_limit` is 102400).
    pub header_bytes: usize,
    /// mailpipe defers (75) after this many seconds. Keep it well below the
    /// transport's `_time_limit`: past that Postfix kills and *bounces*.
    pub deadline_secs: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_bytes: 50 * 1024 * 1024,
            header_bytes: 256 * 1024,
            deadline_secs: 300,
        }
    }
}

/// Settings of `mailpipe drain` (never read by `deliver`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DrainConfig {
    /// Messages posted in parallel.
    pub concurrency: usize,
    /// Seconds to connect to GitLab.
    pub connect_timeout_secs: u64,
    /// Seconds for one whole POST.
    pub request_timeout_secs: u64,
    /// First retry delay; doubles per attempt, with jitter. Short, since
    /// the breaker, not this delay, keeps an outage from costing a request
    /// per message.
    pub retry_initial_secs: u64,
    /// Cap on the retry delay.
    pub retry_max_secs: u64,
    /// A message still failing after this many hours goes to `failed/`.
    pub give_up_after_hours: u64,
    /// Seconds between scans of the spool when idle (daemon mode).
    pub poll_interval_secs: u64,
    /// GitLab-level failures in a row, with no success in between, that
    /// hold a whole route (one failure only defers its own message).
    pub hold_after_failures: u32,
    /// Move delivered messages to `cur/` instead of deleting them (like
    /// mail_room's `delete_after_delivery: false`).
    pub keep_delivered: bool,
    /// Serve Prometheus metrics on this loopback address (`127.0.0.1:9853`);
    /// off when unset. Only loopback addresses are accepted.
    pub metrics_listen: Option<String>,
    /// Also write the metrics to this file (node_exporter's textfile
    /// collector), replaced atomically; off when unset.
    pub metrics_textfile: Option<PathBuf>,
}

impl Default for DrainConfig {
    fn default() -> Self {
        DrainConfig {
            concurrency: 4,
            connect_timeout_secs: 10,
            request_timeout_secs: 60,
            retry_initial_secs: 5,
            retry_max_secs: 3600,
            give_up_after_hours: 120,
            poll_interval_secs: 2,
            hold_after_failures: 8,
            keep_delivered: false,
            metrics_listen: None,
            metrics_textfile: None,
        }
    }
}

/// Settings of `mailpipe policy`, the Postfix policy service (never read
/// by `deliver`). Two token buckets per recipient key: one per (envelope
/// sender, key) and one per key whatever the sender. A bucket holds `burst`
/// messages and refills at `per_hour`; an empty bucket answers 450 4.7.1
/// (defer), so a real sender's mail still arrives later.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyConfig {
    /// Messages one sender may send to one key at once. A person replying
    /// to one thread never sends 20 in a row; a mail loop does in minutes.
    pub sender_key_burst: u32,
    /// Refill of that bucket per hour (20: one every 3 minutes).
    pub sender_key_per_hour: u32,
    /// Messages to one key from all senders at once (a Service Desk key is
    /// shared by every customer of a project).
    pub key_burst: u32,
    /// Refill of the per-key bucket per hour.
    pub key_per_hour: u32,
    /// Buckets kept in memory at most; past it, new pairs are not limited
    /// (fail open) until full buckets are forgotten.
    pub max_tracked: usize,
    /// A connection that sends nothing for this long is closed (Postfix
    /// keeps idle ones for smtpd_policy_service_max_idle, 300s).
    pub idle_timeout_secs: u64,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            sender_key_burst: 20,
            sender_key_per_hour: 20,
            key_burst: 200,
            key_per_hour: 600,
            max_tracked: 100_000,
            idle_timeout_secs: 330,
        }
    }
}

/// One configured mailbox, checked.
#[derive(Debug, Clone)]
pub struct RouteConfig {
    pub route: Route,
    pub template: Template,
    pub secret_file: Option<PathBuf>,
}

/// Custom Service Desk addresses (GitLab 16.3+, `ServiceDeskSetting#custom_email`).
///
/// The customer's provider forwards `support@customer.example` to the
/// project's Service Desk address. When the forward keeps that address as
/// the envelope recipient, the key is there; when it does not (Microsoft 365
/// drops sub-addresses), GitLab finds the project from the custom address in
/// `To` through its database (`lib/gitlab/email/receiver.rb` `mail_key`:
/// `CustomEmail.key_from_reply_address`, then `key_from_settings`). mailpipe
/// has no database, so the admin lists the addresses here.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CustomEmailConfig {
    /// Bare addresses, exactly as configured in GitLab.
    pub addresses: Vec<String>,
}

/// The configuration, checked: what every command works from.
#[derive(Debug, Clone)]
pub struct Config {
    pub path: PathBuf,
    pub routes: Vec<RouteConfig>,
    pub gitlab_host: String,
    pub gitlab_url: Option<String>,
    pub spool: SpoolConfig,
    pub limits: Limits,
    pub drain: DrainConfig,
    pub custom_email: CustomEmailConfig,
    pub policy: PolicyConfig,
}

/// One problem in the file, located, with what to do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub path: PathBuf,
    pub line: Option<usize>,
    /// The setting concerned, like `incoming_email.address`.
    pub key: Option<String>,
    pub message: String,
    pub hint: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.path.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        write!(f, ": ")?;
        if let Some(key) = &self.key {
            write!(f, "{key}: ")?;
        }
        write!(f, "{}", self.message)?;
        if !self.hint.is_empty() {
            write!(f, " (hint: {})", self.hint)?;
        }
        Ok(())
    }
}

impl Config {
    /// Reads and checks the file; the first problem found is the error.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Config::load_all(path).map_err(|mut all| all.remove(0))
    }

    /// Reads and checks the file, returning every problem at once.
    pub fn load_all(path: &Path) -> Result<Config, Vec<ConfigError>> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            vec![ConfigError {
                path: path.to_path_buf(),
                line: None,
                key: None,
                message: format!("cannot read: {e}"),
                hint: format!(
                    "create it (see the annotated example) or pass --config; default {DEFAULT_PATH}"
                ),
            }]
        })?;
        Config::from_text(path, &text)
    }

    /// Parses and checks configuration text; `path` is only for messages.
    pub fn from_text(path: &Path, text: &str) -> Result<Config, Vec<ConfigError>> {
        let err = |line, key: Option<&str>, message: String, hint: &str| ConfigError {
            path: path.to_path_buf(),
            line,
            key: key.map(str::to_string),
            message,
            hint: hint.to_string(),
        };
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            let line = e.span().map(|s| line_of(text, s.start));
            let message = e.message().trim().to_string();
            vec![err(line, None, message, syntax_hint(e.message()))]
        })?;

        let mut problems = Vec::new();
        let mut routes = Vec::new();
        let sections = [
            (Route::IncomingEmail, Some(&raw.incoming_email)),
            (Route::ServiceDeskEmail, raw.service_desk_email.as_ref()),
        ];
        for (route, section) in sections {
            let Some(section) = section else { continue };
            let key = format!("{route}.address");
            match Template::parse(section.address.get_ref()) {
                Ok(template) => routes.push(RouteConfig {
                    route,
                    template,
                    secret_file: section.secret_file.clone(),
                }),
                Err(e) => problems.push(err(
                    Some(line_of(text, section.address.span().start)),
                    Some(&key),
                    format!("{:?} is {e}", section.address.get_ref()),
                    "write it like \"incoming+%{key}@incoming.gitlab.example.com\", with \
                     %{key} once, in the local part",
                )),
            }
        }
        if let [a, b] = routes.as_slice()
            && a.template.overlaps(&b.template)
        {
            let span = raw
                .service_desk_email
                .as_ref()
                .map(|s| s.address.span().start);
            problems.push(err(
                span.map(|s| line_of(text, s)),
                Some("service_desk_email.address"),
                "overlaps incoming_email.address: one address could match both".into(),
                "give Service Desk its own prefix, like \"contact+%{key}@…\"",
            ));
        }
        let host = raw.gitlab.host.get_ref().trim().to_string();
        if host.is_empty() || host.contains(['/', ':', '@', ' ']) {
            problems.push(err(
                Some(line_of(text, raw.gitlab.host.span().start)),
                Some("gitlab.host"),
                format!("{:?} is not a host name", raw.gitlab.host.get_ref()),
                "use gitlab.host from gitlab.yml, like \"gitlab.example.com\" (no scheme, no port)",
            ));
        }
        let url = raw
            .gitlab
            .url
            .as_ref()
            .map(|u| u.get_ref().trim_end_matches('/').to_string());
        if let Some(u) = &raw.gitlab.url
            && !(u.get_ref().starts_with("http://") || u.get_ref().starts_with("https://"))
        {
            problems.push(err(
                Some(line_of(text, u.span().start)),
                Some("gitlab.url"),
                format!("{:?} is not an http(s) URL", u.get_ref()),
                "use GitLab's external URL, like \"https://gitlab.example.com\"",
            ));
        }
        if !raw.spool.dir.is_absolute() {
            problems.push(err(
                None,
                Some("spool.dir"),
                format!("{:?} is not an absolute path", raw.spool.dir),
                "use an absolute path such as \"/var/spool/mailpipe\"",
            ));
        }
        let limits = &raw.limits;
        if limits.deadline_secs == 0 || limits.header_bytes < 1024 || limits.max_message_bytes == 0
        {
            problems.push(err(
                None,
                Some("limits"),
                "deadline_secs, header_bytes (>= 1024) and max_message_bytes must be positive"
                    .into(),
                "remove the [limits] table to use the defaults",
            ));
        }
        if raw.drain.concurrency == 0 || raw.drain.concurrency > 256 {
            problems.push(err(
                None,
                Some("drain.concurrency"),
                format!("{} is out of range", raw.drain.concurrency),
                "use 1 to 256",
            ));
        }
        let mut custom_email = CustomEmailConfig::default();
        if let Some(list) = raw
            .service_desk_custom_email
            .as_ref()
            .and_then(|c| c.addresses.as_ref())
        {
            let line = Some(line_of(text, list.span().start));
            for addr in list.get_ref() {
                match custom_address_problem(addr, &routes) {
                    None => custom_email.addresses.push(addr.clone()),
                    Some(why) => problems.push(err(
                        line,
                        Some("service_desk_custom_email.addresses"),
                        format!("{addr:?} {why}"),
                        "list the bare custom email addresses of GitLab's Service Desk \
                         settings, like \"support@customer.example\" (no %{key}, no +)",
                    )),
                }
            }
        }
        let policy = &raw.policy;
        if policy.sender_key_burst == 0
            || policy.key_burst == 0
            || policy.max_tracked == 0
            || policy.idle_timeout_secs == 0
        {
            problems.push(err(
                None,
                Some("policy"),
                "sender_key_burst, key_burst, max_tracked and idle_timeout_secs must be positive"
                    .into(),
                "remove the [policy] table to use the defaults",
            ));
        }
        if raw.drain.hold_after_failures == 0 || raw.drain.hold_after_failures > 1000 {
            problems.push(err(
                None,
                Some("drain.hold_after_failures"),
                format!("{} is out of range", raw.drain.hold_after_failures),
                "use 1 to 1000",
            ));
        }
        problems.extend(metrics_problems(&raw.drain, &err));
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(Config {
            path: path.to_path_buf(),
            routes,
            gitlab_host: host,
            gitlab_url: url,
            spool: raw.spool,
            limits: raw.limits,
            drain: raw.drain,
            custom_email,
            policy: raw.policy,
        })
    }

    /// The route custom Service Desk mail goes to: the Service Desk mailbox
    /// when it is configured, else incoming_email (GitLab's receivers both
    /// run the custom-email lookups on `To`).
    pub fn custom_email_route(&self) -> Route {
        self.route(Route::ServiceDeskEmail)
            .map_or(Route::IncomingEmail, |r| r.route)
    }

    /// The settings of one route, when it is configured.
    pub fn route(&self, route: Route) -> Option<&RouteConfig> {
        self.routes.iter().find(|r| r.route == route)
    }
}

/// Why a custom Service Desk address cannot be used, or `None`.
fn custom_address_problem(addr: &str, routes: &[RouteConfig]) -> Option<&'static str> {
    let template = match Template::parse(addr) {
        Ok(t) => t,
        Err(_) => return Some("is not a valid address"),
    };
    if template.has_key() {
        return Some("must not contain %{key}");
    }
    let local = addr.rsplit_once('@').map_or("", |(l, _)| l);
    if local.contains('+') {
        // GitLab adds `+verify` and `+<reply key>` itself.
        return Some("must not contain + (GitLab adds +verify and +<reply key> itself)");
    }
    let taken = routes
        .iter()
        .any(|r| r.template.key_of(addr).is_some() || r.template.is_fixed_address(addr));
    taken.then_some("is also a GitLab mailbox address (incoming_email or service_desk_email)")
}

/// How `from_text` makes a located error: line, setting, message, hint.
type MakeError<'a> = dyn Fn(Option<usize>, Option<&str>, String, &str) -> ConfigError + 'a;

/// The drain's metrics settings: the listener must be a loopback
/// `address:port` (the drain holds GitLab's secret; its metrics name the
/// routes and their failures, and nothing else should reach it), the
/// textfile an absolute path.
fn metrics_problems(drain: &DrainConfig, err: &MakeError) -> Vec<ConfigError> {
    let mut problems = Vec::new();
    if let Some(listen) = &drain.metrics_listen {
        match listen.parse::<std::net::SocketAddr>() {
            Err(_) => problems.push(err(
                None,
                Some("drain.metrics_listen"),
                format!("{listen:?} is not an address:port"),
                "use \"127.0.0.1:9853\" or \"[::1]:9853\"",
            )),
            Ok(addr) if !addr.ip().is_loopback() => problems.push(err(
                None,
                Some("drain.metrics_listen"),
                format!("{listen:?} is not a loopback address"),
                "the metrics listener binds only 127.0.0.0/8 or ::1; let Prometheus scrape \
                 it on this host, or use drain.metrics_textfile with node_exporter",
            )),
            Ok(_) => {}
        }
    }
    if let Some(file) = &drain.metrics_textfile
        && (!file.is_absolute() || file.file_name().is_none())
    {
        problems.push(err(
            None,
            Some("drain.metrics_textfile"),
            format!("{file:?} is not an absolute file path"),
            "use a file in node_exporter's --collector.textfile.directory, like \
             \"/var/lib/prometheus/node-exporter/mailpipe.prom\"",
        ));
    }
    problems
}

/// 1-based line of a byte offset.
fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset)
        .map_or(1, |t| t.bytes().filter(|&b| b == b'\n').count() + 1)
}

fn syntax_hint(message: &str) -> &'static str {
    if message.contains("unknown field") {
        "remove or correct the setting; see the annotated example for every name"
    } else if message.contains("missing field") {
        "add the setting; [incoming_email] address, [gitlab] host and [spool] dir are required"
    } else {
        "fix the TOML syntax at that line"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[incoming_email]
address = "incoming+%{key}@in.example.com"
[gitlab]
host = "gitlab.example.com"
[spool]
dir = "/var/spool/mailpipe"
"#;

    fn parse(text: &str) -> Result<Config, Vec<ConfigError>> {
        Config::from_text(Path::new("t.toml"), text)
    }

    #[test]
    fn good_config_loads_with_defaults() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.routes.len(), 1);
        assert_eq!(c.limits.deadline_secs, 300);
        assert_eq!(c.gitlab_host, "gitlab.example.com");
    }

    #[test]
    fn unknown_key_names_its_line() {
        let text = format!("{GOOD}\n[spool2]\nx = 1\n");
        let e = &parse(&text).unwrap_err()[0];
        assert!(e.message.contains("unknown field"), "{e}");
        assert_eq!(e.line, Some(9), "{e}");
    }

    #[test]
    fn placeholder_twice_names_its_line() {
        let text = GOOD.replace("incoming+%{key}@", "a+%{key}+%{key}@");
        let e = &parse(&text).unwrap_err()[0];
        assert_eq!(e.line, Some(3));
        assert_eq!(e.key.as_deref(), Some("incoming_email.address"));
        assert!(e.to_string().contains("more than once"), "{e}");
    }

    #[test]
    fn custom_service_desk_addresses_load_and_are_checked() {
        let text = format!(
            "{GOOD}\n[service_desk_custom_email]\naddresses = [\"support@customer.example\"]\n"
        );
        let c = parse(&text).unwrap();
        assert_eq!(c.custom_email.addresses, ["support@customer.example"]);
        assert_eq!(c.custom_email_route(), Route::IncomingEmail);
        for bad in [
            "support",
            "support+x@customer.example",
            "s+%{key}@customer.example",
            "incoming+abc@in.example.com",
        ] {
            let text = format!(
                "{GOOD}\n[service_desk_custom_email]\naddresses = [\"ok@c.example\", \"{bad}\"]\n"
            );
            let e = parse(&text).unwrap_err();
            assert_eq!(e.len(), 1, "{bad}: {e:?}");
            assert_eq!(e[0].line, Some(10), "{bad}: {}", e[0]);
            assert_eq!(
                e[0].key.as_deref(),
                Some("service_desk_custom_email.addresses")
            );
        }
    }

    #[test]
    fn overlapping_addresses_are_refused() {
        let text = format!(
            "{GOOD}\n[service_desk_email]\naddress = \"incoming+%{{key}}@in.example.com\"\n"
        );
        let e = parse(&text).unwrap_err();
        assert!(e[0].message.contains("overlaps"), "{:?}", e);
    }
}
