//! The only HTTP client in mailpipe: POST one spooled message to GitLab's
//! mail_room API, read a capped answer, and classify it.
//!
//! Must not: touch the filesystem, parse the message, follow a redirect,
//! use a proxy from the environment, or decide on its own that a message
//! is delivered: only a 200 carrying GitLab's `{"success":true}` is.
//! Fails: never with an error; every outcome, transport failures included,
//! is a [`Reply`], and [`classify`] turns it into a [`Verdict`].
//!
//! This is where mail_room went wrong (`lib/mail_room/delivery/postback.rb`
//! in tpitale/mail_room: Faraday does not raise on 4xx/5xx, so `deliver`
//! returns true): its postback counted any HTTP status as delivered and
//! deleted the mail. Here
//! the status decides, and anything unexpected keeps the message:
//!
//! | Answer | Verdict |
//! | --- | --- |
//! | 200 with `{"success":true}` | delivered |
//! | 400 (over Sidekiq's job size limit; GitLab mailed the sender) | rejected, final |
//! | 413 (a proxy's body size limit; nobody told the sender) | rejected, final |
//! | 401, 403, 404, 3xx, or a 200 that is not GitLab's answer | misconfigured: keep, retry, loudly |
//! | 408, 429, 5xx, any other status, connect/TLS/timeout errors | retry |
//!
//! A 429 or 503 may say when to come back (`Retry-After`, RFC 9110
//! §10.2.3, seconds or an HTTP-date): [`Reply::retry_after`] reads it and
//! the drain holds the route that long (capped by `retry_max_secs`).

use std::io::Read;
use std::time::Duration;

use ureq::Agent;
use ureq::tls::{RootCerts, TlsConfig};

use crate::config::{DrainConfig, Route};
use crate::status::printable;

use super::auth;

/// Bytes of GitLab's answer kept: enough for its JSON, never a whole page.
const RESPONSE_CAP: u64 = 4096;
/// Characters of an answer or error quoted in a log line or a reason.
const QUOTE_CAP: usize = 200;

/// What came back from one POST.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// An HTTP answer. `body` is its first [`RESPONSE_CAP`] bytes, lossily
    /// decoded; `complete` is false if reading it failed.
    Status {
        code: u16,
        body: String,
        complete: bool,
        /// `Retry-After` of a 429 or 503, when it parsed.
        retry_after: Option<Duration>,
    },
    /// No HTTP answer: refused, reset, DNS, TLS, timeout.
    Transport(String),
}

impl Reply {
    /// The status for the log line, `-` without one.
    pub fn code(&self) -> Option<u16> {
        match self {
            Reply::Status { code, .. } => Some(*code),
            Reply::Transport(_) => None,
        }
    }

    /// How long GitLab asked us to wait, on a 429 or 503 only.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Reply::Status {
                code: 429 | 503,
                retry_after,
                ..
            } => *retry_after,
            _ => None,
        }
    }
}

/// Parses a `Retry-After` value (RFC 9110 §10.2.3): delay-seconds, or an
/// IMF-fixdate (RFC 9110 §5.6.7) taken relative to `now` (seconds since
/// the epoch). A date in the past is no wait; anything else is `None`.
pub fn parse_retry_after(value: &str, now: u64) -> Option<Duration> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        // Digits only: a huge value saturates (the caller caps it anyway).
        return Some(Duration::from_secs(value.parse().unwrap_or(u64::MAX)));
    }
    let at = imf_fixdate(value)?;
    Some(Duration::from_secs(at.saturating_sub(now)))
}

/// `Sun, 06 Nov 1994 08:49:37 GMT` to seconds since the epoch.
fn imf_fixdate(text: &str) -> Option<u64> {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let (_, rest) = text.split_once(", ")?;
    let parts: Vec<&str> = rest.split(' ').collect();
    let [day, month, year, time, "GMT"] = parts.as_slice() else {
        return None;
    };
    let number = |s: &str, len: usize| -> Option<u64> {
        (s.len() == len && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    let (day, year) = (number(day, 2)?, number(year, 4)?);
    let month = MONTHS.iter().position(|m| m == month)? as u64 + 1;
    let hms: Vec<&str> = time.split(':').collect();
    let [h, m, s] = hms.as_slice() else {
        return None;
    };
    let (h, m, s) = (number(h, 2)?, number(m, 2)?, number(s, 2)?);
    if !(1..=31).contains(&day) || year < 1970 || h > 23 || m > 59 || s > 60 {
        return None;
    }
    // Days from the civil date (H. Hinnant's algorithm), 1970-01-01 = 0.
    let (y, mo) = if month <= 2 {
        (year - 1, month + 9)
    } else {
        (year, month - 3)
    };
    let era = y / 400;
    let yoe = y - era * 400;
    let doy = (153 * mo + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = (era * 146_097 + doe).checked_sub(719_468)?;
    Some(days * 86400 + h * 3600 + m * 60 + s)
}

/// What the drain does with the message after a [`Reply`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// GitLab has it: remove it from the spool.
    Delivered,
    /// Refused for good because of the message itself: move to `failed/`.
    Rejected(String),
    /// Our configuration or GitLab's is wrong (secret, URL, disabled
    /// mailbox): keep the message, retry, say so loudly. Never given up.
    Misconfigured(String),
    /// A temporary failure: retry with backoff, give up after the window.
    Retry(String),
}

/// Classifies an answer (the table in the module header).
pub fn classify(reply: &Reply) -> Verdict {
    let (code, body, complete) = match reply {
        Reply::Transport(why) => return Verdict::Retry(printable(why, QUOTE_CAP)),
        Reply::Status {
            code,
            body,
            complete,
            ..
        } => (*code, body, *complete),
    };
    let quoted = || gitlab_message(body);
    match code {
        200 if is_success(body) => Verdict::Delivered,
        200 if !complete => Verdict::Retry("200 but the answer was cut off".into()),
        200 => Verdict::Misconfigured(format!(
            "200 without GitLab's {{\"success\":true}} (answer: {}); is gitlab.url GitLab?",
            quoted()
        )),
        400 => Verdict::Rejected(format!(
            "400: GitLab refused the message as too large and mailed a rejection to its \
             sender: {}",
            quoted()
        )),
        413 => Verdict::Rejected(format!(
            "413: a proxy in front of GitLab refused the message as too large (nobody told \
             the sender; raise the proxy's body size limit, e.g. nginx client_max_body_size, \
             then requeue): {}",
            quoted()
        )),
        401 => Verdict::Misconfigured(
            "401: GitLab refused the token: the secret_file differs from GitLab's, the \
             mailbox is not enabled in gitlab.yml, or the clocks differ by minutes"
                .into(),
        ),
        403 | 404 => Verdict::Misconfigured(format!(
            "{code}: no mail_room API at this URL (check gitlab.url; GitLab 15.3 or later \
             is needed): {}",
            quoted()
        )),
        300..=399 => Verdict::Misconfigured(format!(
            "{code}: redirected, not followed (use the final URL in gitlab.url, e.g. https)"
        )),
        _ => Verdict::Retry(format!("{code}: {}", quoted())),
    }
}

/// True for GitLab's `{"success":true}`.
fn is_success(body: &str) -> bool {
    serde_json::from_str::<serde_json::Value>(body)
        .is_ok_and(|v| v.get("success") == Some(&serde_json::Value::Bool(true)))
}

/// GitLab's `message` field when the answer is its JSON, else the start of
/// the body; printable, one line, short.
fn gitlab_message(body: &str) -> String {
    let text = serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| {
            v.get("message")
                .map(|m| m.as_str().map_or_else(|| m.to_string(), str::to_string))
        })
        .unwrap_or_else(|| body.trim().to_string());
    if text.is_empty() {
        "(empty answer)".into()
    } else {
        printable(&text, QUOTE_CAP)
    }
}

/// A connection pool to one GitLab.
pub struct Client {
    agent: Agent,
    base: String,
}

impl Client {
    /// A client for `base_url` (`gitlab.url`, no trailing slash) with the
    /// timeouts and pool size of `[drain]`. Certificates are checked
    /// against the system's CA store, so an internal CA added with
    /// update-ca-certificates works.
    pub fn new(base_url: &str, config: &DrainConfig) -> Client {
        let pool = config.concurrency.max(1);
        let tls = TlsConfig::builder()
            .root_certs(RootCerts::PlatformVerifier)
            .build();
        let agent_config = Agent::config_builder()
            // Statuses are answers to classify, not errors.
            .http_status_as_error(false)
            // A POST must never turn into a GET somewhere else.
            .max_redirects(0)
            // Only gitlab.url is ever contacted: no *_PROXY from the
            // environment.
            .proxy(None)
            .timeout_connect(Some(Duration::from_secs(
                config.connect_timeout_secs.max(1),
            )))
            .timeout_global(Some(Duration::from_secs(
                config.request_timeout_secs.max(1),
            )))
            .max_idle_connections(pool * 2)
            .max_idle_connections_per_host(pool)
            .user_agent(format!("mailpipe/{}", env!("CARGO_PKG_VERSION")))
            .tls_config(tls)
            .build();
        Client {
            agent: Agent::new_with_config(agent_config),
            base: base_url.trim_end_matches('/').to_string(),
        }
    }

    /// `<gitlab.url>/api/v4/internal/mail_room/<route>`.
    pub fn url(&self, route: Route) -> String {
        format!("{}/api/v4/internal/mail_room/{}", self.base, route.as_str())
    }

    /// Posts the `len` bytes of `body` for `route` with the signed `token`,
    /// streamed (never held in memory whole), with a Content-Length as
    /// mail_room sends.
    pub fn post(&self, route: Route, token: &str, len: u64, body: impl Read) -> Reply {
        let mut body = body;
        let sent = self
            .agent
            .post(&self.url(route))
            .header("Content-Type", "text/plain")
            .header("Content-Length", len.to_string())
            .header(auth::HEADER, token)
            .send(ureq::SendBody::from_reader(&mut body));
        let mut response = match sent {
            Ok(r) => r,
            Err(e) => return Reply::Transport(e.to_string()),
        };
        let code = response.status().as_u16();
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, super::unix_now()));
        let mut bytes = Vec::new();
        let complete = response
            .body_mut()
            .as_reader()
            .take(RESPONSE_CAP)
            .read_to_end(&mut bytes)
            .is_ok();
        Reply::Status {
            code,
            body: String::from_utf8_lossy(&bytes).into_owned(),
            complete,
            retry_after,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: u16, body: &str) -> Reply {
        Reply::Status {
            code,
            body: body.into(),
            complete: true,
            retry_after: None,
        }
    }

    fn kind(v: &Verdict) -> &'static str {
        match v {
            Verdict::Delivered => "delivered",
            Verdict::Rejected(_) => "rejected",
            Verdict::Misconfigured(_) => "misconfigured",
            Verdict::Retry(_) => "retry",
        }
    }

    #[test]
    fn every_answer_has_its_verdict() {
        let too_large = r#"{"success":false,"message":"We couldn't process your email because it is too large."}"#;
        let table = [
            (status(200, r#"{"success":true}"#), "delivered"),
            (status(200, r#"{ "success" : true, "x": 1 }"#), "delivered"),
            (status(200, r#"{"success":false}"#), "misconfigured"),
            (status(200, "<html>login</html>"), "misconfigured"),
            (status(200, ""), "misconfigured"),
            (status(400, too_large), "rejected"),
            (status(413, "<html>413</html>"), "rejected"),
            (
                status(401, r#"{"message":"401 Unauthorized"}"#),
                "misconfigured",
            ),
            (status(403, ""), "misconfigured"),
            (status(404, ""), "misconfigured"),
            (status(301, ""), "misconfigured"),
            (status(308, ""), "misconfigured"),
            (status(408, ""), "retry"),
            (status(429, ""), "retry"),
            (status(500, ""), "retry"),
            (status(502, "bad gateway"), "retry"),
            (status(503, ""), "retry"),
            (status(201, r#"{"success":true}"#), "retry"),
            (status(422, ""), "retry"),
            (Reply::Transport("io: Connection refused".into()), "retry"),
        ];
        for (reply, want) in table {
            assert_eq!(kind(&classify(&reply)), want, "{reply:?}");
        }
        let cut = Reply::Status {
            code: 200,
            body: r#"{"succ"#.into(),
            complete: false,
            retry_after: None,
        };
        assert_eq!(kind(&classify(&cut)), "retry");
    }

    #[test]
    fn reasons_quote_gitlab_briefly_and_on_one_line() {
        let Verdict::Rejected(why) =
            classify(&status(400, "{\"message\":\"too large\\nsecond line\"}"))
        else {
            panic!()
        };
        assert!(
            why.contains("too large") && why.contains("second line"),
            "{why}"
        );
        assert!(!why.contains('\n'), "{why}");
        let Verdict::Retry(why) = classify(&status(500, &"x".repeat(5000))) else {
            panic!()
        };
        assert!(why.len() < 300, "{}", why.len());
    }

    #[test]
    fn retry_after_is_seconds_or_a_date_and_only_on_429_and_503() {
        let now = 784_111_777; // Sun, 06 Nov 1994 08:49:37 GMT
        let table = [
            ("120", Some(120)),
            (" 0 ", Some(0)),
            ("99999999999999999999999", Some(u64::MAX)),
            ("Sun, 06 Nov 1994 08:49:37 GMT", Some(0)),
            ("Sun, 06 Nov 1994 08:50:07 GMT", Some(30)),
            ("Sat, 05 Nov 1994 08:49:37 GMT", Some(0)),
            ("Mon, 07 Nov 1994 08:49:37 GMT", Some(86400)),
            ("Thu, 01 Jan 1970 00:00:00 GMT", Some(0)),
            ("Sunday, 06-Nov-94 08:49:37 GMT", None),
            ("-5", None),
            ("1.5", None),
            ("", None),
            ("Sun, 06 Nov 1994 25:49:37 GMT", None),
        ];
        for (text, want) in table {
            assert_eq!(
                parse_retry_after(text, now),
                want.map(Duration::from_secs),
                "{text:?}"
            );
        }
        assert_eq!(imf_fixdate("Thu, 01 Jan 1970 00:00:00 GMT"), Some(0));
        assert_eq!(
            imf_fixdate("Tue, 29 Feb 2028 12:00:00 GMT"),
            Some(1_835_438_400)
        );
        let with = |code| Reply::Status {
            code,
            body: String::new(),
            complete: true,
            retry_after: Some(Duration::from_secs(9)),
        };
        assert_eq!(with(429).retry_after(), Some(Duration::from_secs(9)));
        assert_eq!(with(503).retry_after(), Some(Duration::from_secs(9)));
        assert_eq!(with(500).retry_after(), None);
        assert_eq!(with(200).retry_after(), None);
    }
}
