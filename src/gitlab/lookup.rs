//! Finding the GitLab key: in the envelope, then in the headers in GitLab's
//! order; and predicting what GitLab itself will find in the stored copy.
//!
//! Must not: read stdin, touch the spool, or decide exit codes; it only
//! answers "which key, from where, for which route".
//! Fails: never; anything malformed simply yields no candidate.
//!
//! Address lists are read with the small RFC 5322 §3.4 reader below rather
//! than a crate: mailparse 0.18 and mail-parser 0.11 both mis-read inputs
//! tests/deliver.rs holds us to (`"reply+K"@ex.com`, `reply+K(c)@ex.com`,
//! nested comments, `, a@x`), and a wrong address here routes mail to the
//! wrong GitLab thread.

use crate::config::{Config, Route};
use crate::gitlab::address::{Key, Template};
use crate::headers::HeaderSection;

/// Where a key (or a custom Service Desk address) was found: the envelope,
/// or the header of that name. [`FoundIn::as_str`] is the name `explain`
/// and the log show, and, for a header, the field name read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FoundIn {
    Envelope,
    To,
    References,
    DeliveredTo,
    XDeliveredTo,
    EnvelopeTo,
    XEnvelopeTo,
    Received,
    XOriginalTo,
    XForwardedTo,
    Cc,
}

impl FoundIn {
    pub fn as_str(self) -> &'static str {
        match self {
            FoundIn::Envelope => "envelope",
            FoundIn::To => "To",
            FoundIn::References => "References",
            FoundIn::DeliveredTo => "Delivered-To",
            FoundIn::XDeliveredTo => "X-Delivered-To",
            FoundIn::EnvelopeTo => "Envelope-To",
            FoundIn::XEnvelopeTo => "X-Envelope-To",
            FoundIn::Received => "Received",
            FoundIn::XOriginalTo => "X-Original-To",
            FoundIn::XForwardedTo => "X-Forwarded-To",
            FoundIn::Cc => "Cc",
        }
    }
}

impl std::fmt::Display for FoundIn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `explain`'s JSON shows the same text as the log.
impl serde::Serialize for FoundIn {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// Address headers after `To` and `References`, in GitLab's order
/// (`MailKey::RECIPIENT_HEADERS` in
/// `gems/gitlab-email_handler/lib/gitlab/email_handler/mail_key.rb`);
/// `Received` sits between X-Envelope-To and X-Original-To.
const RAW_VALUED: [FoundIn; 4] = [
    FoundIn::DeliveredTo,
    FoundIn::XDeliveredTo,
    FoundIn::EnvelopeTo,
    FoundIn::XEnvelopeTo,
];
const AFTER_RECEIVED: [FoundIn; 2] = [FoundIn::XOriginalTo, FoundIn::XForwardedTo];

/// At most this many addresses or ids are examined per field, so a hostile
/// header costs linear time with a small constant.
const MAX_ITEMS_PER_FIELD: usize = 1000;

/// A key, with where it came from and the mailbox it belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub route: Route,
    pub key: Key,
    pub found_in: FoundIn,
}

/// The envelope as Postfix (or local(8)) gave it.
#[derive(Debug, Clone, Default)]
pub struct Envelope {
    pub sender: Option<String>,
    pub recipients: Vec<String>,
    pub original_recipients: Vec<String>,
    pub queue_id: Option<String>,
}

/// The first key, in our order: original recipient, recipient, then
/// To, References, Delivered-To, X-Delivered-To, Envelope-To, X-Envelope-To,
/// Received, X-Original-To, X-Forwarded-To, Cc. A candidate whose key breaks
/// the alphabet is no key, and the search goes on.
pub fn find_key(config: &Config, envelope: &Envelope, headers: &HeaderSection) -> Option<Found> {
    let envelope_addrs = envelope
        .original_recipients
        .iter()
        .chain(&envelope.recipients);
    for addr in envelope_addrs {
        if let Some(found) = match_routes(config, strip_brackets(addr), FoundIn::Envelope) {
            return Some(found);
        }
    }
    let by_address = |name: FoundIn| {
        addresses(headers, name.as_str()).find_map(|addr| match_routes(config, &addr, name))
    };
    if let Some(found) = by_address(FoundIn::To) {
        return Some(found);
    }
    for field in headers.all("References") {
        let text = field.text();
        for id in message_ids(&text).into_iter().take(MAX_ITEMS_PER_FIELD) {
            if let Some(key) = reply_key(id, &config.gitlab_host) {
                return Some(Found {
                    route: Route::IncomingEmail,
                    key,
                    found_in: FoundIn::References,
                });
            }
        }
    }
    for name in RAW_VALUED {
        if let Some(found) = by_address(name) {
            return Some(found);
        }
    }
    for field in headers.all("Received") {
        if let Some(addr) = received_for(&field.text())
            && let Some(found) = match_routes(config, addr.trim(), FoundIn::Received)
        {
            return Some(found);
        }
    }
    AFTER_RECEIVED
        .into_iter()
        .chain([FoundIn::Cc])
        .find_map(by_address)
}

/// The addresses of every field called `name`, in order, at most
/// `MAX_ITEMS_PER_FIELD` per field.
fn addresses<'h>(
    headers: &'h HeaderSection,
    name: &'static str,
) -> impl Iterator<Item = String> + 'h {
    headers.all(name).flat_map(|f| {
        address_list(&f.text())
            .into_iter()
            .take(MAX_ITEMS_PER_FIELD)
    })
}

/// Matches one bare address against every configured route, then against
/// the custom Service Desk reply addresses (`support+<reply key>@…`).
fn match_routes(config: &Config, addr: &str, found_in: FoundIn) -> Option<Found> {
    config
        .routes
        .iter()
        .find_map(|r| {
            r.template.key_of(addr).map(|key| Found {
                route: r.route,
                key,
                found_in,
            })
        })
        .or_else(|| {
            custom_reply_key(&config.custom_email.addresses, addr, false).map(|key| Found {
                route: Route::IncomingEmail,
                key,
                found_in,
            })
        })
}

/// The reply key of a custom Service Desk reply address
/// `<base>+<reply key>@<domain>` whose `<base>@<domain>` is configured
/// (`lib/gitlab/email/service_desk/custom_email.rb` `key_from_reply_address`;
/// the gem's `custom_email.rb` `REPLY_ADDRESS_REGEX`, with the key held to
/// `FULL_REPLY_KEY_REGEX`). `exact` compares as GitLab's database does
/// (case-sensitively); otherwise the domain compares without case.
pub fn custom_reply_key(custom: &[String], addr: &str, exact: bool) -> Option<Key> {
    if custom.is_empty() {
        return None;
    }
    let (local, domain) = addr.rsplit_once('@')?;
    let (base, key) = local.split_once('+')?;
    if !crate::gitlab::kind::is_full_reply_key(key) {
        return None;
    }
    let bare = format!("{base}@{domain}");
    custom
        .iter()
        .any(|c| same_address(c, &bare, exact))
        .then(|| Key::new(key))
        .flatten()
}

/// The configured custom Service Desk address `addr` names, bare or with
/// GitLab's `+verify` sub-address (`key_from_settings` removes the first
/// `+verify`; `ServiceDeskSetting::CUSTOM_EMAIL_VERIFICATION_SUBADDRESS`).
pub fn custom_address<'c>(custom: &'c [String], addr: &str, exact: bool) -> Option<&'c str> {
    let bare = addr.replacen("+verify", "", 1);
    custom
        .iter()
        .find(|c| same_address(c, &bare, exact))
        .map(String::as_str)
}

fn same_address(configured: &str, addr: &str, exact: bool) -> bool {
    if exact {
        return configured == addr;
    }
    match (configured.rsplit_once('@'), addr.rsplit_once('@')) {
        (Some((l1, d1)), Some((l2, d2))) => l1 == l2 && d1.eq_ignore_ascii_case(d2),
        _ => false,
    }
}

/// A message for a custom Service Desk address without a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CustomHit {
    /// The configured address it names.
    pub address: String,
    /// [`FoundIn::Envelope`] or [`FoundIn::To`].
    pub found_in: FoundIn,
    /// True when a `To` field names it as GitLab compares (exactly): the
    /// only place GitLab looks for it.
    pub in_to: bool,
}

/// The custom Service Desk address a keyless message is for, if any: the
/// envelope recipient first, then `To`.
pub fn find_custom(
    config: &Config,
    envelope: &Envelope,
    headers: &HeaderSection,
) -> Option<CustomHit> {
    let custom = &config.custom_email.addresses;
    if custom.is_empty() {
        return None;
    }
    let to: Vec<String> = addresses(headers, "To").collect();
    let in_to = |c: &str| {
        to.iter()
            .any(|a| custom_address(custom, a, true) == Some(c))
    };
    let envelope_addrs = envelope
        .original_recipients
        .iter()
        .chain(&envelope.recipients);
    for addr in envelope_addrs {
        if let Some(c) = custom_address(custom, strip_brackets(addr), false) {
            return Some(CustomHit {
                address: c.to_string(),
                found_in: FoundIn::Envelope,
                in_to: in_to(c),
            });
        }
    }
    to.iter().find_map(|a| {
        custom_address(custom, a, true).map(|c| CustomHit {
            address: c.to_string(),
            found_in: FoundIn::To,
            in_to: true,
        })
    })
}

/// The key in a GitLab Message-ID `reply-KEY@<gitlab.host>`; the host is
/// compared without case (RFC 5322 ids are opaque, but hosts are not).
fn reply_key(id: &str, host: &str) -> Option<Key> {
    let rest = id.strip_prefix("reply-")?;
    let (key, id_host) = rest.rsplit_once('@')?;
    id_host
        .eq_ignore_ascii_case(host)
        .then(|| Key::new(key))
        .flatten()
}

fn strip_brackets(addr: &str) -> &str {
    let addr = addr.trim();
    addr.strip_prefix('<')
        .and_then(|a| a.strip_suffix('>'))
        .unwrap_or(addr)
}

/// The address of the first `for <addr>` clause of a Received field
/// (RFC 5321 §4.4 "for" clause; the keyword is matched without case).
pub fn received_for(value: &str) -> Option<&str> {
    let lower = value.to_ascii_lowercase();
    let mut from = 0;
    while let Some(at) = lower[from..].find("for") {
        let start = from + at;
        from = start + 3;
        let before_ok = start == 0 || lower.as_bytes()[start - 1].is_ascii_whitespace();
        let after = &value[start + 3..];
        let rest = after.trim_start();
        if before_ok && rest.len() < after.len() && rest.starts_with('<') {
            let inner = &rest[1..];
            let end = inner.find(['>', '<'])?;
            return (inner.as_bytes()[end] == b'>').then(|| &inner[..end]);
        }
    }
    None
}

/// Every `<id>` of a References value; ids are taken between brackets, so
/// the comma-joined and quoted lists of Exchange and iOS work, and so does a
/// single id (which GitLab misses).
pub fn message_ids(value: &str) -> Vec<&str> {
    let mut ids = Vec::new();
    let mut rest = value;
    while let Some(open) = rest.find('<') {
        let after = &rest[open + 1..];
        match after.find(['<', '>']) {
            Some(end) if after.as_bytes()[end] == b'>' => {
                ids.push(after[..end].trim());
                rest = &after[end + 1..];
            }
            Some(end) => rest = &after[end..],
            None => break,
        }
    }
    ids
}

/// The addr-specs of an RFC 5322 address list (§3.4), in order: display
/// names and comments dropped, groups opened, quoted local parts unquoted.
/// An unbalanced comment or quote, or a control character (a bare CR or a
/// NUL: RFC 5322 allows neither), makes the whole field yield nothing.
pub fn address_list(value: &str) -> Vec<String> {
    if value.chars().any(|c| c.is_ascii_control() && c != '\t') {
        return Vec::new();
    }
    let mut out = Vec::new();
    let mut plain = String::new(); // text outside brackets, unquoted
    let mut angle: Option<String> = None; // inside <...>, or its content
    let mut in_angle = false;
    let mut chars = value.chars();
    let flush = |plain: &mut String, angle: &mut Option<String>, out: &mut Vec<String>| {
        let addr = match angle.take() {
            Some(a) => a.trim().to_string(),
            None => plain.trim().to_string(),
        };
        plain.clear();
        if !addr.is_empty() {
            out.push(addr);
        }
    };
    while let Some(c) = chars.next() {
        match c {
            '(' => {
                if !skip_comment(&mut chars) {
                    return Vec::new();
                }
            }
            '"' => {
                let target = if in_angle {
                    angle.get_or_insert_with(String::new)
                } else {
                    &mut plain
                };
                if !read_quoted(&mut chars, target) {
                    return Vec::new();
                }
            }
            '<' if !in_angle => {
                if angle.is_some() {
                    flush(&mut plain, &mut angle, &mut out);
                }
                in_angle = true;
                angle = Some(String::new());
            }
            '>' if in_angle => in_angle = false,
            ',' | ';' if !in_angle => flush(&mut plain, &mut angle, &mut out),
            // A group's display name ends at ':'; what follows are members.
            ':' if !in_angle && angle.is_none() => plain.clear(),
            _ if in_angle => angle.get_or_insert_with(String::new).push(c),
            _ => plain.push(c),
        }
    }
    // An unterminated `<addr` is taken as `<addr>`, as GitLab does.
    flush(&mut plain, &mut angle, &mut out);
    out
}

/// Skips a comment after its `(`; false when it never closes.
fn skip_comment(chars: &mut std::str::Chars) -> bool {
    let mut depth = 1usize;
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                chars.next();
            }
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth == 0 {
                    return true;
                }
            }
            _ => {}
        }
    }
    false
}

/// Appends a quoted string's content after its `"`; false when unclosed.
fn read_quoted(chars: &mut std::str::Chars, into: &mut String) -> bool {
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(q) => into.push(q),
                None => return false,
            },
            '"' => return true,
            _ => into.push(c),
        }
    }
    false
}

/// Which GitLab receiver to predict. mailpipe supports GitLab 16.0 to
/// 18.x; the prepended `Delivered-To` is decided against both ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GitlabVersion {
    /// GitLab 16.0 (`lib/gitlab/email/receiver.rb` before the gem): To,
    /// References, Delivered-To, Envelope-To, X-Envelope-To. `Received`
    /// sat behind the feature flag `use_received_header_for_incoming_emails`
    /// (so it may be off), Cc came in 16.5, X-Original-To in 17.0,
    /// X-Delivered-To and X-Forwarded-To in 17.6, the custom Service Desk
    /// lookups on To in 17.x.
    Oldest,
    /// The newest: `gems/gitlab-email_handler/lib/gitlab/email_handler/mail_key.rb`
    /// `each_candidate`, plus `receiver.rb`'s custom-email lookups on To.
    Newest,
}

impl GitlabVersion {
    pub const ALL: [GitlabVersion; 2] = [GitlabVersion::Oldest, GitlabVersion::Newest];

    fn reads(self, header: FoundIn) -> bool {
        match self {
            GitlabVersion::Newest => true,
            GitlabVersion::Oldest => matches!(
                header,
                FoundIn::To
                    | FoundIn::References
                    | FoundIn::DeliveredTo
                    | FoundIn::EnvelopeTo
                    | FoundIn::XEnvelopeTo
            ),
        }
    }
}

/// What GitLab's receiver sees: the incoming template (`None` in the
/// dedicated-address mode, where the regex has no capture group), the
/// `gitlab.host` of its reply ids, and the custom Service Desk addresses its
/// database knows.
#[derive(Debug, Clone, Copy)]
pub struct GitlabSetup<'a> {
    pub template: Option<&'a Template>,
    pub host: &'a str,
    pub custom: &'a [String],
}

/// Where GitLab's own receiver looks, in its order, with its quirks
/// (`MailKey.each_candidate`, `reference_message_ids` and
/// `received_recipients` in
/// `gems/gitlab-email_handler/lib/gitlab/email_handler/mail_key.rb`): To
/// and Cc parsed, References only as a list of two
/// or more ids (or one it cannot parse), the other headers as raw values
/// matched case-sensitively, Received by `for\s+<([^<]+)>`. Returns the
/// key GitLab would use and where it would find it. The newest GitLab,
/// without custom Service Desk addresses; see [`gitlab_key_as`].
pub fn gitlab_key(
    headers: &HeaderSection,
    template: &Template,
    host: &str,
) -> Option<(String, FoundIn)> {
    let setup = GitlabSetup {
        template: Some(template),
        host,
        custom: &[],
    };
    gitlab_key_as(GitlabVersion::Newest, headers, &setup)
}

/// The text [`gitlab_key_as`] returns for a custom Service Desk address in
/// To: GitLab routes it to that project's Service Desk, a key mailpipe does
/// not know (it can never equal a [`Key`]: `<` is outside the alphabet).
pub fn custom_key_marker(address: &str) -> String {
    format!("<custom {address}>")
}

/// [`gitlab_key`] for one GitLab version and setup.
pub fn gitlab_key_as(
    version: GitlabVersion,
    headers: &HeaderSection,
    setup: &GitlabSetup,
) -> Option<(String, FoundIn)> {
    let of = |addr: &str| {
        setup
            .template
            .and_then(|t| t.gitlab_key_of(addr))
            .map(str::to_string)
    };
    let parsed = |name: FoundIn| {
        if !version.reads(name) {
            return None;
        }
        addresses(headers, name.as_str()).find_map(|a| of(&a).map(|k| (k, name)))
    };
    let raw = |name: FoundIn| {
        if !version.reads(name) {
            return None;
        }
        headers
            .all(name.as_str())
            .find_map(|f| of(&f.text()).map(|k| (k, name)))
    };
    // receiver.rb `mail_key`, To only: the custom reply address, the
    // template, then the custom address itself (17.x and later).
    for addr in addresses(headers, "To") {
        if version == GitlabVersion::Newest
            && let Some(key) = custom_reply_key(setup.custom, &addr, true)
        {
            return Some((key.as_str().to_string(), FoundIn::To));
        }
        if let Some(key) = of(&addr) {
            return Some((key, FoundIn::To));
        }
        if version == GitlabVersion::Newest
            && let Some(c) = custom_address(setup.custom, &addr, true)
        {
            return Some((custom_key_marker(c), FoundIn::To));
        }
    }
    // The mail gem keeps only the last References field (it is a field of
    // which a message has one), and returns a single well-formed id as a
    // bare String, which GitLab's scan then misses: `MailKey.scan_fallback_references` needs the brackets the mail gem strips from a lone id.
    if let Some(field) = headers.all("References").last() {
        let text = field.text();
        let ids = message_ids(&text);
        // The mail gem returns a single well-formed id as a bare String,
        // which GitLab's scan for `<…>` (`MailKey.scan_fallback_references`)
        // then misses: the mail gem's `CommonMessageIdField#default` returns
        // `message_ids[0]` when there is exactly one.
        let single = ids.len() == 1 && text.trim().starts_with('<') && text.trim().ends_with('>');
        if !single {
            let suffix = format!("@{}", setup.host);
            let hit = ids.iter().find_map(|id| {
                let key = id.strip_prefix("reply-")?.strip_suffix(&suffix)?;
                (!key.is_empty()).then(|| (key.to_string(), FoundIn::References))
            });
            if hit.is_some() {
                return hit;
            }
        }
    }
    for name in RAW_VALUED {
        if let Some(hit) = raw(name) {
            return Some(hit);
        }
    }
    if version.reads(FoundIn::Received) {
        for field in headers.all("Received") {
            let text = field.text();
            if let Some(addr) = gitlab_received_for(&text)
                && let Some(key) = of(addr)
            {
                return Some((key, FoundIn::Received));
            }
        }
    }
    for name in AFTER_RECEIVED {
        if let Some(hit) = raw(name) {
            return Some(hit);
        }
    }
    parsed(FoundIn::Cc)
}

/// GitLab's `for\s+<([^<]+)>`: case-sensitive, first match per field; the
/// greedy `[^<]+` ends at the last `>` before the next `<`.
fn gitlab_received_for(value: &str) -> Option<&str> {
    let mut from = 0;
    while let Some(at) = value[from..].find("for") {
        let start = from + at + 3;
        from = start;
        let after = &value[start..];
        let rest = after.trim_start();
        if rest.len() == after.len() || !rest.starts_with('<') {
            continue;
        }
        let inner = &rest[1..];
        let stop = inner.find('<').unwrap_or(inner.len());
        if let Some(end) = inner[..stop].rfind('>')
            && end > 0
        {
            return Some(&inner[..end]);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_lists_from_the_hostile_table() {
        let cases: [(&str, &[&str]); 16] = [
            ("reply+K(c)@ex.com", &["reply+K@ex.com"]),
            ("(reply+K2@ex.com) x@y", &["x@y"]),
            ("reply+K@ex.com (reply+K3@ex.com)", &["reply+K@ex.com"]),
            ("\"reply+K\"@ex.com", &["reply+K@ex.com"]),
            (
                "\"reply+K1@ex.com, reply+K2\"@ex.com",
                &["reply+K1@ex.com, reply+K2@ex.com"],
            ),
            (
                "=?utf-8?q?reply+V=40ex.com?= <attacker@evil.example>",
                &["attacker@evil.example"],
            ),
            ("undisclosed-recipients:;", &[]),
            ("Team: reply+K@ex.com, b@c.d;", &["reply+K@ex.com", "b@c.d"]),
            ("G: reply+K@ex.com", &["reply+K@ex.com"]),
            (", a@x", &["a@x"]),
            ("\"Bot, Inc\" <incoming+abc@x>", &["incoming+abc@x"]),
            ("a@b (unbalanced", &[]),
            ("((a)b) c@d", &["c@d"]),
            ("Mikel@Lindsaar <x@y>", &["x@y"]),
            ("<incoming+k@x", &["incoming+k@x"]),
            (
                "(Empty list)(start)Undisclosed recipients  :(nobody(that I know))  ;",
                &[],
            ),
        ];
        for (input, want) in cases {
            assert_eq!(address_list(input), want, "{input}");
        }
    }

    #[test]
    fn found_in_renders_the_names_explain_and_the_log_always_showed() {
        let all = [
            (FoundIn::Envelope, "envelope"),
            (FoundIn::To, "To"),
            (FoundIn::References, "References"),
            (FoundIn::DeliveredTo, "Delivered-To"),
            (FoundIn::XDeliveredTo, "X-Delivered-To"),
            (FoundIn::EnvelopeTo, "Envelope-To"),
            (FoundIn::XEnvelopeTo, "X-Envelope-To"),
            (FoundIn::Received, "Received"),
            (FoundIn::XOriginalTo, "X-Original-To"),
            (FoundIn::XForwardedTo, "X-Forwarded-To"),
            (FoundIn::Cc, "Cc"),
        ];
        for (place, name) in all {
            assert_eq!(place.as_str(), name);
            assert_eq!(place.to_string(), name);
            assert_eq!(
                serde_json::to_string(&place).ok(),
                Some(format!("\"{name}\""))
            );
        }
    }

    #[test]
    fn message_ids_scan() {
        assert_eq!(message_ids("<a@x> <b@y>"), ["a@x", "b@y"]);
        assert_eq!(message_ids("\"<a@x>,<b@y>\""), ["a@x", "b@y"]);
        assert_eq!(message_ids("<a@x>"), ["a@x"]);
        assert_eq!(message_ids("<<a@x>"), ["a@x"]);
        assert!(message_ids("a@x").is_empty());
    }

    #[test]
    fn received_clauses() {
        assert_eq!(received_for("from x by y for <a@b>; date"), Some("a@b"));
        assert_eq!(received_for("from x by y\n\tFOR  <a@b>"), Some("a@b"));
        assert_eq!(received_for("from x by y for a@b;"), None);
        assert_eq!(received_for("from before by y"), None);
        assert_eq!(gitlab_received_for("by y for <a@b> (x>y)"), Some("a@b> (x"));
        assert_eq!(gitlab_received_for("by y FOR <a@b>"), None);
        let hostile = "for <<".repeat(100_000);
        assert_eq!(received_for(&hostile), None);
        assert_eq!(gitlab_received_for(&hostile), None);
    }
}
