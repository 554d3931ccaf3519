//! Which GitLab handler a key is for, from the key's shape alone.
//!
//! Must not: look at anything but the key string (no headers, no I/O).
//! Fails: `None` when no handler, current or legacy, accepts the key.
//!
//! GitLab tries its handlers in a fixed order and the first whose pattern
//! matches takes the message (`Identifier::MATCHERS` in
//! `gems/gitlab-email_handler/lib/gitlab/email_handler/identifier.rb`; the
//! patterns are in its `matchers/*.rb` and `reply_key.rb`, and the
//! application's order in `lib/gitlab/email/handler.rb`). We accept the
//! union of the current patterns and the legacy ones that GitLab 11–17
//! still honoured, so that no GitLab version's valid key is bounced at the
//! MTA. The patterns below are GitLab's, anchored as GitLab
//! anchors them.

use std::fmt;

use regex_lite::Regex;

/// GitLab's handlers, in GitLab's order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    CreateNote,
    CreateIssue,
    CreateNoteOnIssuable,
    Unsubscribe,
    CreateMergeRequest,
    ServiceDesk,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::CreateNote => "create_note",
            Kind::CreateIssue => "create_issue",
            Kind::CreateNoteOnIssuable => "create_note_on_issuable",
            Kind::Unsubscribe => "unsubscribe",
            Kind::CreateMergeRequest => "create_merge_request",
            Kind::ServiceDesk => "service_desk",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `FULL_REPLY_KEY_REGEX`: legacy 32 lower-case hex, or the partitioned
/// base36 form `<partition>-<25 chars>[-<namespace id>]`. Kept to test
/// [`is_full_reply_key`] against.
#[cfg(test)]
const FULL_REPLY_KEY: &str = r"(?:[a-f0-9]{32}|[0-9a-z]{1,4}-[0-9a-z]{25}(?:-[0-9a-z]{1,13})?)";

fn matches(pattern: &str, key: &str) -> bool {
    // The patterns are constants; a failure to compile is a bug that the
    // unit tests catch, and it must not bounce mail, so it reads as "no".
    Regex::new(pattern).is_ok_and(|re| re.is_match(key))
}

/// Ruby's `\w+` on ASCII: one or more of `A-Z a-z 0-9 _`.
fn is_word(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// `FULL_REPLY_KEY_REGEX`, anchored, without compiling it: 32 lower-case
/// hex digits, or `[0-9a-z]{1,4}-[0-9a-z]{25}(-[0-9a-z]{1,13})?`.
fn is_full_reply_key(s: &str) -> bool {
    let base36 = |p: &str, min: usize, max: usize| {
        (min..=max).contains(&p.len())
            && p.bytes()
                .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase())
    };
    if s.len() == 32
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return true;
    }
    let parts: Vec<&str> = s.split('-').collect();
    match parts.as_slice() {
        [p, k] => base36(p, 1, 4) && base36(k, 25, 25),
        [p, k, n] => base36(p, 1, 4) && base36(k, 25, 25) && base36(n, 1, 13),
        _ => false,
    }
}

/// The handler GitLab would pick for `key`, or `None`.
pub fn classify(key: &str) -> Option<Kind> {
    let no_slash = !key.contains('/');

    // CreateNote: current reply keys; GitLab 11–17 accepted any `\w+`.
    // The current forms (hex, or base36 parts joined by `-`) that have no
    // `-` are `\w+` too, so the test without a regex is exact for the
    // common case and keeps compiling patterns off the hot path.
    if is_word(key) || is_full_reply_key(key) {
        return Some(Kind::CreateNote);
    }
    // CreateIssue: `<slug>-<id>-<token>-issue` without `/`; legacy
    // `<path>+<token>` where the token has no `+` and the key is not an
    // unsubscribe address.
    if no_slash && matches(r"^.+-\d+-.+-issue$", key) {
        return Some(Kind::CreateIssue);
    }
    if let Some((_, token)) = key.split_once('+')
        && !token.contains('+')
        && !key.contains("+unsubscribe")
    {
        return Some(Kind::CreateIssue);
    }
    // CreateNoteOnIssuable: `<slug>-<id>-<token>-issue-<iid>`.
    if matches(r"^.+-\d+-.+-issue-\d+$", key) {
        return Some(Kind::CreateNoteOnIssuable);
    }
    // Unsubscribe: `<reply key>-unsubscribe`, legacy `+unsubscribe`, and
    // the `\w+` reply keys of GitLab 11–17.
    let token = key
        .strip_suffix("-unsubscribe")
        .or_else(|| key.strip_suffix("+unsubscribe"));
    if token.is_some_and(|t| is_word(t) || is_full_reply_key(t)) {
        return Some(Kind::Unsubscribe);
    }
    // CreateMergeRequest: `<slug>-<id>-<token>-merge-request` without `/`;
    // legacy `<path>+merge-request+<token>` (GitLab does not anchor its end).
    if no_slash && matches(r"^.+-\d+-.+-merge-request$", key) {
        return Some(Kind::CreateMergeRequest);
    }
    if matches(r"^[^+]*\+merge-request\+", key) {
        return Some(Kind::CreateMergeRequest);
    }
    // ServiceDesk: `<slug>-<id>-issue-` without `/`; legacy `group/project`.
    if no_slash && matches(r"^.+-\d+-issue-$", key) {
        return Some(Kind::ServiceDesk);
    }
    if !key.contains('+') && key.contains('/') {
        return Some(Kind::ServiceDesk);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hand-written reply-key test agrees with GitLab's regex.
    #[test]
    fn full_reply_key_matches_gitlab_regex() {
        let re = Regex::new(&format!("^{FULL_REPLY_KEY}$")).unwrap();
        let samples = [
            "59d8df8370b7e95c5a49fbf86aeb2c93",
            "59D8df8370b7e95c5a49fbf86aeb2c93",
            "59d8df8370b7e95c5a49fbf86aeb2c9",
            "rs-0000000000000000000000abc-rs",
            "rs-0000000000000000000000abc",
            "rs-0000000000000000000000ab",
            "rsrsr-0000000000000000000000abc",
            "r-0000000000000000000000abc-00000000000000",
            "r-0000000000000000000000abc-0000000000000",
            "r-0000000000000000000000Abc",
            "-0000000000000000000000abc",
            "a-b-c-d",
            "",
        ];
        for s in samples {
            assert_eq!(is_full_reply_key(s), re.is_match(s), "{s}");
        }
    }

    /// The vectors of `gems/gitlab-email_handler/spec/gitlab/email_handler/identifier_spec.rb`
    /// and `spec/lib/gitlab/email/handler/*_spec.rb`, plus legacy forms.
    #[test]
    fn gitlab_identifier_vectors() {
        let cases = [
            ("rs-0000000000000000000000abc-rs", Some(Kind::CreateNote)),
            ("rs-0000000000000000000000abc", Some(Kind::CreateNote)),
            ("59d8df8370b7e95c5a49fbf86aeb2c93", Some(Kind::CreateNote)),
            (
                "gitlab-org-gitlab-ce-20-Author_Token12345678-issue",
                Some(Kind::CreateIssue),
            ),
            (
                "gitlab-org/gitlab-ce+Author_Token12345678",
                Some(Kind::CreateIssue),
            ),
            (
                "gitlab-org-gitlab-ce-20-Author_Token12345678-issue-34",
                Some(Kind::CreateNoteOnIssuable),
            ),
            (
                "gitlab-org-gitlab-ce-20-Author_Token12345678-merge-request",
                Some(Kind::CreateMergeRequest),
            ),
            ("gitlab-org-gitlab-ce-20-issue-", Some(Kind::ServiceDesk)),
            ("gitlab-org/gitlab-ce", Some(Kind::ServiceDesk)),
            ("gitlab-org/gitlab-ce+Author_Token+extra", None),
            (
                "59d8df8370b7e95c5a49fbf86aeb2c93+unsubscribe",
                Some(Kind::Unsubscribe),
            ),
            (
                "59d8df8370b7e95c5a49fbf86aeb2c93-unsubscribe",
                Some(Kind::Unsubscribe),
            ),
            (
                "h5bp/html5-boilerplate+merge-request+tok",
                Some(Kind::CreateMergeRequest),
            ),
            // GitLab 11–17 CreateNote: any \w+, upper case included.
            ("59D8DF8370B7E95C5A49FBF86AEB2C93", Some(Kind::CreateNote)),
            ("a.b", None),
            ("x-y", None),
        ];
        for (key, want) in cases {
            assert_eq!(classify(key), want, "{key}");
        }
    }
}
