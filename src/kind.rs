//! Which GitLab handler a key is for, from the key's shape alone.
//!
//! Must not: look at anything but the key string (no headers, no I/O).
//! Fails: `None` when no handler, current or legacy, accepts the key.
//!
//! GitLab tries its handlers in a fixed order and the first whose pattern
//! matches takes the message (reference §4.1–4.3). We accept the union of
//! the current patterns (gems/gitlab-email_handler) and the legacy ones that
//! GitLab 11–17 still honoured, so that no GitLab version's valid key is
//! bounced at the MTA. The patterns below are GitLab's, anchored as GitLab
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
/// base36 form `<partition>-<25 chars>[-<namespace id>]`.
const FULL_REPLY_KEY: &str = r"(?:[a-f0-9]{32}|[0-9a-z]{1,4}-[0-9a-z]{25}(?:-[0-9a-z]{1,13})?)";

fn matches(pattern: &str, key: &str) -> bool {
    // The patterns are constants; a failure to compile is a bug that the
    // unit tests catch, and it must not bounce mail, so it reads as "no".
    Regex::new(pattern).is_ok_and(|re| re.is_match(key))
}

/// The handler GitLab would pick for `key`, or `None`.
pub fn classify(key: &str) -> Option<Kind> {
    let no_slash = !key.contains('/');

    // CreateNote: current reply keys; GitLab 11–17 accepted any `\w+`.
    if matches(&format!(r"^(?:{FULL_REPLY_KEY}|\w+)$"), key) {
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
    if matches(&format!(r"^(?:{FULL_REPLY_KEY}|\w+)[-+]unsubscribe$"), key) {
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

    /// The gem's identifier_spec vectors (reference §7.3), plus legacy forms.
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
