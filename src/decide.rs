//! The decision for one message from its header bytes and envelope: drop,
//! refuse or deliver, and for a delivery the route, key, kind and the
//! header line the stored copy needs so GitLab finds the same key.
//!
//! Must not: do I/O. `deliver`, `explain` and the fuzz targets all call
//! [`decide`], so they can never disagree.
//! Fails: never; every input maps to a `Decision`.

use serde::Serialize;

use crate::address::Key;
use crate::config::{Config, Route};
use crate::headers::HeaderSection;
use crate::kind::{self, Kind};
use crate::lookup::{self, Envelope};
use crate::status::{Deferral, Rejection, Status};

/// What to do with the message, before the spool has its say.
#[derive(Debug, Clone)]
pub struct Decision {
    /// `Accepted` here means "store it"; the spool may still fail.
    pub status: Status,
    pub route: Option<Route>,
    pub key: Option<Key>,
    pub kind: Option<Kind>,
    pub found_in: Option<&'static str>,
    /// A `Delivered-To:` line (without line ending) to put on top of the
    /// stored copy, when GitLab would otherwise miss the key.
    pub prepend: Option<String>,
    /// The message's first line ends in CRLF; a prepended line copies it.
    pub crlf: bool,
    /// Set when GitLab's receiver will read a different key from the stored
    /// copy's To or References than the one mailpipe routed by.
    pub gitlab_sees_other_key: bool,
    pub message_id: Option<String>,
}

/// The JSON object `mailpipe explain` prints.
#[derive(Debug, Serialize)]
pub struct Explanation {
    pub action: &'static str,
    pub exit_code: u8,
    pub route: Option<&'static str>,
    pub key: Option<String>,
    pub found_in: Option<&'static str>,
    pub kind: Option<&'static str>,
    pub reason: String,
    pub prepend: Option<String>,
    /// What `mailpipe policy` would answer at RCPT TO for the envelope
    /// recipient (before rate limits; no SIZE= known). Set by `explain`.
    pub policy: Option<String>,
}

impl Decision {
    /// A decision that stops before any key is known (also what `explain`
    /// reports when the config or stdin failed).
    pub fn refuse(status: Status) -> Decision {
        Decision {
            status,
            crlf: false,
            route: None,
            key: None,
            kind: None,
            found_in: None,
            prepend: None,
            gitlab_sees_other_key: false,
            message_id: None,
        }
    }

    /// The admin-facing view used by `explain`.
    pub fn explain(&self, final_status: &Status) -> Explanation {
        Explanation {
            action: final_status.action(),
            exit_code: final_status.exit_code(),
            route: self.route.map(Route::as_str),
            key: self.key.as_ref().map(|k| k.as_str().to_string()),
            found_in: self.found_in,
            kind: self.kind.map(Kind::as_str),
            reason: match final_status {
                Status::Accepted => "would be spooled".to_string(),
                other => other.reason().to_string(),
            },
            prepend: self.prepend.clone(),
            policy: None,
        }
    }
}

/// Decides what happens to a message whose header section starts `head`.
///
/// `complete` tells whether `head` is the whole message (see
/// [`HeaderSection::parse`]). Checks run in this order: one recipient per
/// call (else defer: Postfix's recipient limit is wrong), an empty message,
/// auto-replies (dropped even without a key: bouncing them makes loops),
/// the key, and the key's handler.
pub fn decide(config: &Config, envelope: &Envelope, head: &[u8], complete: bool) -> Decision {
    if envelope.recipients.len() > 1 || envelope.original_recipients.len() > 1 {
        return Decision::refuse(Status::Deferred(
            Deferral::Config,
            "several recipients in one delivery; set mailpipe_destination_recipient_limit = 1 \
             in Postfix's main.cf"
                .into(),
        ));
    }
    if complete && head.iter().all(u8::is_ascii_whitespace) {
        return Decision::refuse(Status::Rejected(
            Rejection::Empty,
            "empty message: no header section".into(),
        ));
    }
    let headers = HeaderSection::parse(head, complete);
    let message_id = headers.first("Message-ID").map(|f| f.text());
    if let Some(why) = headers.auto_reply() {
        let mut d = Decision::refuse(Status::Discarded(why));
        d.message_id = message_id;
        return d;
    }
    by_key(config, envelope, &headers, message_id)
}

/// The decision for one envelope recipient alone, before any header exists
/// (SMTP `RCPT TO`): what [`decide`] answers for a message to `recipient`
/// whose headers hold no key. `mailpipe policy` refuses at RCPT exactly the
/// recipients this rejects, with the same 5.1.1 text `deliver` would bounce
/// with, because both come from [`by_key`].
pub fn for_recipient(config: &Config, recipient: &str) -> Decision {
    let envelope = Envelope {
        recipients: vec![recipient.to_string()],
        ..Envelope::default()
    };
    by_key(config, &envelope, &HeaderSection::default(), None)
}

/// The key, its handler and the line the stored copy needs: the part of the
/// decision after the auto-reply check.
fn by_key(
    config: &Config,
    envelope: &Envelope,
    headers: &HeaderSection,
    message_id: Option<String>,
) -> Decision {
    let Some(found) = lookup::find_key(config, envelope, headers) else {
        let mut d = Decision::refuse(Status::Rejected(
            Rejection::UnknownKey,
            no_key_reason(config, envelope),
        ));
        d.message_id = message_id;
        return d;
    };
    let kind = match found.route {
        Route::ServiceDeskEmail => Some(Kind::ServiceDesk),
        Route::IncomingEmail => kind::classify(found.key.as_str()),
    };
    let mut decision = Decision {
        status: Status::Accepted,
        route: Some(found.route),
        key: Some(found.key.clone()),
        kind,
        found_in: Some(found.found_in),
        prepend: None,
        crlf: headers.crlf,
        gitlab_sees_other_key: false,
        message_id,
    };
    if kind.is_none() {
        decision.status = Status::Rejected(
            Rejection::UnknownKey,
            format!(
                "the address key (found in {}) is not one any GitLab handler accepts",
                found.found_in
            ),
        );
        return decision;
    }
    if let Some(route) = config.route(found.route) {
        let gitlab = lookup::gitlab_key(headers, &route.template, &config.gitlab_host);
        let agrees = gitlab
            .as_ref()
            .is_some_and(|(k, _)| k == found.key.as_str());
        if !agrees && route.template.has_key() {
            decision.prepend = Some(format!(
                "Delivered-To: {}",
                route.template.render(&found.key)
            ));
            // Our Delivered-To goes on top, but GitLab reads To and
            // References before any Delivered-To.
            decision.gitlab_sees_other_key = matches!(gitlab, Some((_, "To" | "References")));
        }
    }
    decision
}

fn no_key_reason(config: &Config, envelope: &Envelope) -> String {
    let recipient = envelope
        .original_recipients
        .first()
        .or(envelope.recipients.first())
        .map(|r| crate::status::printable(r, 200));
    let expected: Vec<&str> = config
        .routes
        .iter()
        .map(|r| r.template.address.as_str())
        .collect();
    match recipient {
        Some(r) => format!(
            "no valid GitLab key for <{r}> (expected {}) in the recipient or the headers",
            expected.join(" or ")
        ),
        None => format!(
            "no valid GitLab key (expected {}) in the headers",
            expected.join(" or ")
        ),
    }
}
