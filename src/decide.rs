//! The decision for one message from its header bytes and envelope: drop,
//! refuse or deliver, and for a delivery the route, key, kind and the
//! header line the stored copy needs so GitLab finds the same key.
//!
//! Must not: do I/O. `deliver`, `explain` and the fuzz targets all call
//! [`decide`], so they can never disagree.
//! Fails: never; every input maps to a `Decision`.

use serde::Serialize;

use crate::config::{Config, Route};
use crate::gitlab::address::Key;
use crate::gitlab::kind::{self, Kind};
use crate::gitlab::lookup::{self, Envelope, FoundIn, GitlabSetup, GitlabVersion};
use crate::headers::HeaderSection;
use crate::status::{Deferral, Rejection, Status};

/// What to do with the message, before the spool has its say.
#[derive(Debug, Clone)]
pub struct Decision {
    pub verdict: Verdict,
    pub message_id: Option<String>,
}

/// Store the message, or not: a message is accepted only with a route.
#[derive(Debug, Clone)]
pub enum Verdict {
    /// Store it ([`Status::Accepted`]); the spool may still fail.
    Store(Spooled),
    /// Drop, bounce or defer it.
    Refuse(Refusal),
}

/// How an accepted message is stored.
#[derive(Debug, Clone)]
pub struct Spooled {
    pub route: Route,
    /// The key it is routed by; `None` only for a keyless message to a
    /// custom Service Desk address (then `custom_address` is set).
    pub key: Option<Key>,
    pub kind: Kind,
    pub found_in: FoundIn,
    /// A `Delivered-To:` line (without line ending) to put on top of the
    /// stored copy, when GitLab would otherwise miss the key.
    pub prepend: Option<String>,
    /// Where the prepended line goes: after the leading white space GitLab's
    /// mail library skips (0 for almost every message), so that it lands in
    /// the header section GitLab reads.
    pub prepend_at: usize,
    /// For a keyless message to a custom Service Desk address: that address
    /// (then `key` is `None` and `kind` is `service_desk`).
    pub custom_address: Option<String>,
    /// The message's first line ends in CRLF; a prepended line copies it.
    pub crlf: bool,
    /// Set when GitLab's receiver will read a different key from the stored
    /// copy's To or References than the one mailpipe routed by.
    pub gitlab_sees_other_key: bool,
}

/// A message not stored, with what the key lookup had found before the
/// refusal (`explain` and the log show it: a key without a handler, a
/// dedicated-address reply GitLab could not place, a custom address not
/// in To).
#[derive(Debug, Clone)]
pub struct Refusal {
    /// Never [`Status::Accepted`]: an accepted message is [`Verdict::Store`].
    pub status: Status,
    pub route: Option<Route>,
    pub key: Option<Key>,
    pub kind: Option<Kind>,
    pub found_in: Option<FoundIn>,
}

/// The JSON object `mailpipe explain` prints.
#[derive(Debug, Serialize)]
pub struct Explanation {
    pub action: &'static str,
    pub exit_code: u8,
    pub route: Option<&'static str>,
    pub key: Option<String>,
    pub found_in: Option<FoundIn>,
    pub kind: Option<&'static str>,
    pub reason: String,
    pub prepend: Option<String>,
    /// What `mailpipe policy` would answer at RCPT TO for the envelope
    /// recipient (before rate limits; no SIZE= known). Set by `explain`.
    pub policy: Option<String>,
}

impl Decision {
    /// A decision that stops before any key is known (also what `explain`
    /// reports when the config or stdin failed). `status` is not
    /// `Accepted`.
    pub fn refuse(status: Status) -> Decision {
        Decision::refused(
            Refusal {
                status,
                route: None,
                key: None,
                kind: None,
                found_in: None,
            },
            None,
        )
    }

    fn refused(refusal: Refusal, message_id: Option<String>) -> Decision {
        Decision {
            verdict: Verdict::Refuse(refusal),
            message_id,
        }
    }

    fn stored(spooled: Spooled, message_id: Option<String>) -> Decision {
        Decision {
            verdict: Verdict::Store(spooled),
            message_id,
        }
    }

    /// `Accepted` here means "store it"; the spool may still fail.
    pub fn status(&self) -> &Status {
        static ACCEPTED: Status = Status::Accepted;
        match &self.verdict {
            Verdict::Store(_) => &ACCEPTED,
            Verdict::Refuse(r) => &r.status,
        }
    }

    /// How to store the message, when it is to be stored.
    pub fn spooled(&self) -> Option<&Spooled> {
        match &self.verdict {
            Verdict::Store(s) => Some(s),
            Verdict::Refuse(_) => None,
        }
    }

    pub fn route(&self) -> Option<Route> {
        match &self.verdict {
            Verdict::Store(s) => Some(s.route),
            Verdict::Refuse(r) => r.route,
        }
    }

    pub fn key(&self) -> Option<&Key> {
        match &self.verdict {
            Verdict::Store(s) => s.key.as_ref(),
            Verdict::Refuse(r) => r.key.as_ref(),
        }
    }

    pub fn kind(&self) -> Option<Kind> {
        match &self.verdict {
            Verdict::Store(s) => Some(s.kind),
            Verdict::Refuse(r) => r.kind,
        }
    }

    pub fn found_in(&self) -> Option<FoundIn> {
        match &self.verdict {
            Verdict::Store(s) => Some(s.found_in),
            Verdict::Refuse(r) => r.found_in,
        }
    }

    /// The admin-facing view used by `explain`.
    pub fn explain(&self, final_status: &Status) -> Explanation {
        Explanation {
            action: final_status.action(),
            exit_code: final_status.exit_code(),
            route: self.route().map(Route::as_str),
            key: self.key().map(|k| k.as_str().to_string()),
            found_in: self.found_in(),
            kind: self.kind().map(Kind::as_str),
            reason: match final_status {
                Status::Accepted => "would be spooled".to_string(),
                other => other.reason().to_string(),
            },
            prepend: self.spooled().and_then(|s| s.prepend.clone()),
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
        if let Some(hit) = lookup::find_custom(config, envelope, headers) {
            return custom_decision(config, hit, headers, message_id);
        }
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
    // A refusal after the key was found still names it (explain, log).
    let refused = |status: Status, kind: Option<Kind>, message_id: Option<String>| {
        let refusal = Refusal {
            status,
            route: Some(found.route),
            key: Some(found.key.clone()),
            kind,
            found_in: Some(found.found_in),
        };
        Decision::refused(refusal, message_id)
    };
    let Some(kind) = kind else {
        let status = Status::Rejected(
            Rejection::UnknownKey,
            no_handler_reason(config, &found, envelope),
        );
        return refused(status, None, message_id);
    };
    let mut spooled = Spooled {
        route: found.route,
        key: Some(found.key.clone()),
        kind,
        found_in: found.found_in,
        prepend: None,
        prepend_at: headers.lead,
        custom_address: None,
        crlf: headers.crlf,
        gitlab_sees_other_key: false,
    };
    let Some(route) = config.route(found.route) else {
        return Decision::stored(spooled, message_id);
    };
    let keyed = route.template.has_key();
    let setup = GitlabSetup {
        template: keyed.then_some(&route.template),
        host: &config.gitlab_host,
        custom: &config.custom_email.addresses,
    };
    // What the oldest and the newest supported GitLab will read from the
    // stored copy; the same key from both, or we must help.
    let views = GitlabVersion::ALL.map(|v| lookup::gitlab_key_as(v, headers, &setup));
    let agrees = |view: &Option<(String, FoundIn)>| {
        view.as_ref().is_some_and(|(k, _)| k == found.key.as_str())
    };
    if views.iter().all(agrees) {
        return Decision::stored(spooled, message_id);
    }
    // A version that finds a different key in To or References wins over
    // anything we add: those come before every Delivered-To.
    let other_first = views.iter().any(
        |v| matches!(v, Some((k, FoundIn::To | FoundIn::References)) if k != found.key.as_str()),
    );
    if keyed {
        spooled.prepend = Some(format!(
            "Delivered-To: {}",
            route.template.render(&found.key)
        ));
        spooled.gitlab_sees_other_key = other_first;
    } else if views.iter().any(Option::is_none) {
        // Dedicated address: there is no address to put the key in, and
        // GitLab would answer the sender with a rejection; say why now.
        let status = Status::Rejected(
            Rejection::UnknownKey,
            dedicated_reason(config, &route.template, &found, headers),
        );
        return refused(status, Some(kind), message_id);
    } else {
        spooled.gitlab_sees_other_key = true;
    }
    Decision::stored(spooled, message_id)
}

/// A keyless message for a custom Service Desk address: stored when a
/// `To` field names the address as GitLab's database holds it, refused
/// otherwise (GitLab looks for custom addresses in `To` only).
fn custom_decision(
    config: &Config,
    hit: lookup::CustomHit,
    headers: &HeaderSection,
    message_id: Option<String>,
) -> Decision {
    if !hit.in_to {
        let status = Status::Rejected(
            Rejection::UnknownKey,
            format!(
                "the message is for the custom Service Desk address <{}>, but no To header \
                 names it exactly; GitLab finds the project of a custom address only in To",
                crate::status::printable(&hit.address, 200)
            ),
        );
        let refusal = Refusal {
            status,
            route: None,
            key: None,
            kind: None,
            found_in: Some(hit.found_in),
        };
        return Decision::refused(refusal, message_id);
    }
    let spooled = Spooled {
        route: config.custom_email_route(),
        key: None,
        kind: Kind::ServiceDesk,
        found_in: hit.found_in,
        prepend: None,
        prepend_at: headers.lead,
        custom_address: Some(hit.address),
        crlf: headers.crlf,
        gitlab_sees_other_key: false,
    };
    Decision::stored(spooled, message_id)
}

/// The configured addresses as a stranger can read them: `<key>` in the
/// placeholder's place, and what each one is for.
fn expected_addresses(config: &Config) -> String {
    let mut out: Vec<String> = config
        .routes
        .iter()
        .map(|r| {
            let shown =
                r.template
                    .address
                    .replacen(crate::gitlab::address::PLACEHOLDER, "<key>", 1);
            let what = match (r.route, r.template.has_key()) {
                (Route::IncomingEmail, true) => "replies and new issues",
                (Route::IncomingEmail, false) => "replies",
                (Route::ServiceDeskEmail, _) => "Service Desk",
            };
            format!("{shown} for {what}")
        })
        .collect();
    for c in &config.custom_email.addresses {
        out.push(format!("{c} for Service Desk"));
    }
    out.join(", ")
}

fn no_key_reason(config: &Config, envelope: &Envelope) -> String {
    let recipient = envelope
        .original_recipients
        .first()
        .or(envelope.recipients.first())
        .map(|r| crate::status::printable(r, 200));
    let expected = expected_addresses(config);
    match recipient {
        Some(r) => format!(
            "<{r}> is not a GitLab reply address, and no header of the message names one; \
             GitLab takes mail here at {expected}"
        ),
        None => format!(
            "no header of the message names a GitLab reply address; GitLab takes mail here \
             at {expected}"
        ),
    }
}

fn no_handler_reason(config: &Config, found: &lookup::Found, envelope: &Envelope) -> String {
    let addr = match found.found_in {
        FoundIn::Envelope => envelope
            .original_recipients
            .first()
            .or(envelope.recipients.first())
            .cloned(),
        _ => None,
    }
    .or_else(|| {
        config
            .route(found.route)
            .map(|r| r.template.render(&found.key))
    })
    .unwrap_or_default();
    let place = match found.found_in {
        FoundIn::Envelope => "the recipient".to_string(),
        name => format!("the {name} header"),
    };
    format!(
        "<{}> (from {place}) is not a GitLab reply address: GitLab issues no key of that \
         shape (reply, issue, merge-request, unsubscribe or Service Desk keys)",
        crate::status::printable(&addr, 200)
    )
}

/// Why GitLab would not find the key of a reply to a dedicated address.
fn dedicated_reason(
    config: &Config,
    template: &crate::gitlab::address::Template,
    found: &lookup::Found,
    headers: &HeaderSection,
) -> String {
    let why = if found.found_in != FoundIn::References {
        format!(
            "the reply key was found in {}, where GitLab does not read it for a dedicated address",
            if found.found_in == FoundIn::Envelope {
                "the recipient"
            } else {
                found.found_in.as_str()
            }
        )
    } else {
        let host = &config.gitlab_host;
        let all: Vec<String> = headers.all("References").map(|f| f.text()).collect();
        let last = all.last().cloned().unwrap_or_default();
        let ids = lookup::message_ids(&last);
        let exact = format!("@{host}");
        if all.len() > 1 && !ids.iter().any(|id| id.starts_with("reply-")) {
            "the GitLab reply id is not in the last References header, the only one GitLab reads"
                .to_string()
        } else if ids.len() == 1 {
            "its References header holds the GitLab reply id alone, and GitLab reads a \
             References header only when it lists two or more ids"
                .to_string()
        } else if !ids
            .iter()
            .any(|id| id.starts_with("reply-") && id.ends_with(&exact))
        {
            format!(
                "the GitLab reply id in References names the host in other letter case than \
                 {host}, and GitLab compares it exactly"
            )
        } else {
            "GitLab's receiver would not read the reply id in References".to_string()
        }
    };
    format!(
        "<{}> is GitLab's dedicated reply address, but GitLab could not tell which thread this \
         reply belongs to: {why}; reply with your mail client's Reply to the GitLab notification",
        crate::status::printable(&template.address, 200)
    )
}
