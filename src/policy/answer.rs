//! The policy's answer to one request: the RCPT-level decision, in one
//! function, [`for_request`].
//!
//! Must not: judge a key itself. Whether a recipient has a key GitLab
//! accepts, and the 5.1.1 text, come from `decide::for_recipient`, which
//! runs the code `deliver` runs; the 5.3.4 text is the spool's own
//! `SpoolError::TooLarge`; every text is rendered by `Status::report_line`.
//! So the policy refuses only what `deliver` would bounce, with its words.
//! Fails: open. Anything unexpected (a malformed request, another protocol
//! state, a recipient outside the incoming domains, a full rate table)
//! answers `DUNNO`: Postfix goes on and `deliver` still decides.

use std::time::Instant;

use crate::config::Config;
use crate::decide::{self, Spooled};
use crate::policy::protocol::Request;
use crate::policy::ratelimit::{Limited, Limiter, Outcome};
use crate::spool::SpoolError;
use crate::status::{Rejection, Status};

/// "No opinion": the next restriction decides.
pub const DUNNO: &str = "DUNNO";

/// An answer, and why, for `explain` and the tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The text after `action=`.
    pub action: String,
    /// A short word for why: `unknown-key`, `too-large`, `rate-limit`,
    /// `accepted`, `dedicated`, `other-domain`, `not-rcpt`, `malformed`, …
    /// `untracked` when the rate tables are full (logged once by the
    /// server).
    pub why: &'static str,
}

impl Answer {
    pub(crate) fn dunno(why: &'static str) -> Answer {
        Answer {
            action: DUNNO.to_string(),
            why,
        }
    }

    fn refuse(smtp_code: &str, status: &Status, why: &'static str) -> Answer {
        Answer {
            action: format!("{smtp_code} {}", status.report_line().unwrap_or_default()),
            why,
        }
    }
}

/// The answer to one request. `limiter` is `None` for `explain`, which
/// shows the decision without spending a token.
pub fn for_request(
    config: &Config,
    request: &Request,
    limiter: Option<&Limiter>,
    now: Instant,
) -> Answer {
    if request.malformed.is_some() {
        return Answer::dunno("malformed");
    }
    if request.request.as_deref() != Some("smtpd_access_policy") {
        return Answer::dunno("not-a-policy-request");
    }
    // Only RCPT TO names one recipient; elsewhere (smtpd_data_restrictions
    // and the like) `recipient` is the last one or none.
    if request.protocol_state.as_deref() != Some("RCPT") {
        return Answer::dunno("not-rcpt");
    }
    let Some(recipient) = request.recipient.as_deref().filter(|r| !r.is_empty()) else {
        return Answer::dunno("no-recipient");
    };
    for_recipient(
        config,
        request.sender.as_deref().unwrap_or(""),
        recipient,
        request.size.as_deref(),
        limiter,
        now,
    )
}

/// The RCPT-level decision for one recipient of a message from `sender`
/// that announced `size` bytes.
pub fn for_recipient(
    config: &Config,
    sender: &str,
    recipient: &str,
    size: Option<&str>,
    limiter: Option<&Limiter>,
    now: Instant,
) -> Answer {
    let domain = recipient.rsplit_once('@').map_or("", |(_, d)| d);
    if !config
        .routes
        .iter()
        .any(|r| r.template.domain().eq_ignore_ascii_case(domain))
    {
        return Answer::dunno("other-domain");
    }
    // The bare dedicated address: its key is in References, known only
    // after DATA.
    if config
        .routes
        .iter()
        .any(|r| r.template.is_fixed_address(recipient))
    {
        return Answer::dunno("dedicated");
    }
    // No key in the recipient at all (`incoming@…`, what a forward that
    // drops the sub-address leaves): `deliver` may still find one after
    // DATA, in the headers or as a custom Service Desk address in `To`.
    if !config
        .routes
        .iter()
        .any(|r| r.template.raw_key_of(recipient).is_some())
    {
        return Answer::dunno("no-key-in-recipient");
    }
    let decision = decide::for_recipient(config, recipient);
    let Some(Spooled {
        route,
        key: Some(key),
        ..
    }) = decision.spooled()
    else {
        return match decision.status() {
            status @ Status::Rejected(Rejection::UnknownKey, _) => {
                Answer::refuse("550", status, "unknown-key")
            }
            // Nothing else comes from a recipient alone; should it one day,
            // deliver decides.
            _ => Answer::dunno("undecided"),
        };
    };
    let max = config.limits.max_message_bytes;
    if size
        .and_then(|s| s.parse::<u64>().ok())
        .is_some_and(|s| s > max)
    {
        let status = Status::Rejected(Rejection::TooLarge, SpoolError::TooLarge(max).to_string());
        return Answer::refuse("552", &status, "too-large");
    }
    let Some(limiter) = limiter else {
        return Answer::dunno("accepted");
    };
    let route = route.as_str();
    let bucket = format!("{route}/{}", key.as_str());
    match limiter.allow(&config.policy, sender, &bucket, now) {
        Outcome::Allowed => Answer::dunno("accepted"),
        Outcome::Untracked => Answer::dunno("untracked"),
        Outcome::Limited(which) => {
            let whose = match which {
                Limited::SenderKey => "from this sender to this address",
                Limited::Key => "to this address",
            };
            Answer {
                // 4.7.1: delivery not authorized *now* (RFC 3463 §3.8); a
                // 4xx makes the client keep the message and retry.
                action: format!("450 4.7.1 mailpipe: too many messages {whose}; try again later"),
                why: "rate-limit",
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    const CONFIG: &str = r#"
[incoming_email]
address = "incoming+%{key}@in.example.com"
[service_desk_email]
address = "contact+%{key}@in.example.com"
[gitlab]
host = "gitlab.example.com"
[spool]
dir = "/nonexistent"
[limits]
max_message_bytes = 1000
[policy]
sender_key_burst = 2
"#;

    fn config(text: &str) -> Config {
        Config::from_text(Path::new("t.toml"), text).unwrap()
    }

    fn rcpt(recipient: &str, size: &str) -> Request {
        Request {
            request: Some("smtpd_access_policy".into()),
            protocol_state: Some("RCPT".into()),
            sender: Some("a@client.example".into()),
            recipient: Some(recipient.into()),
            size: Some(size.into()),
            malformed: None,
        }
    }

    #[test]
    fn refuses_what_deliver_bounces_with_its_text() {
        let c = config(CONFIG);
        let now = Instant::now();
        let r = "incoming+not-a-key@in.example.com";
        let a = for_request(&c, &rcpt(r, "0"), None, now);
        let deliver = decide::for_recipient(&c, r).status().report_line().unwrap();
        assert_eq!(a.action, format!("550 {deliver}"));
        assert!(a.action.starts_with("550 5.1.1 mailpipe: "), "{a:?}");
        assert!(
            for_request(&c, &rcpt("incoming+a..b@in.example.com", "0"), None, now)
                .action
                .starts_with("550 5.1.1")
        );
        // No key in the recipient: deliver may find one after DATA (a
        // custom Service Desk address in To); the shipped
        // relay_recipient_maps refuse such recipients before the policy.
        let a = for_request(&c, &rcpt("nobody@in.example.com", "0"), None, now);
        assert_eq!((a.action.as_str(), a.why), (DUNNO, "no-key-in-recipient"));
        let ok = format!("incoming+{}@in.example.com", "a".repeat(32));
        assert_eq!(for_request(&c, &rcpt(&ok, "0"), None, now).action, DUNNO);
        assert!(
            for_request(&c, &rcpt(&ok, "1001"), None, now)
                .action
                .starts_with("552 5.3.4 mailpipe: ")
        );
        assert_eq!(
            for_request(&c, &rcpt("x@other.example", "0"), None, now).action,
            DUNNO
        );
        let mut data = rcpt("incoming+not-a-key@in.example.com", "0");
        data.protocol_state = Some("DATA".into());
        assert_eq!(for_request(&c, &data, None, now).action, DUNNO);
    }

    #[test]
    fn dedicated_address_is_left_to_deliver() {
        let c = config(&CONFIG.replace("incoming+%{key}@", "incoming@"));
        let a = for_request(
            &c,
            &rcpt("INCOMING@in.example.com", "0"),
            None,
            Instant::now(),
        );
        assert_eq!((a.action.as_str(), a.why), (DUNNO, "dedicated"));
    }

    #[test]
    fn rate_limit_defers() {
        let c = config(CONFIG);
        let l = Limiter::new();
        let now = Instant::now();
        let sd = "contact+group-project-7-issue-@in.example.com";
        let answers: Vec<String> = (0..3)
            .map(|_| for_request(&c, &rcpt(sd, "10"), Some(&l), now).action)
            .collect();
        assert_eq!(answers[..2], [DUNNO, DUNNO]);
        assert!(answers[2].starts_with("450 4.7.1 "), "{answers:?}");
    }
}
