//! Which GitLab handler a key is for, from the key's shape alone.
//!
//! Must not: look at anything but the key string (no headers, no I/O).
//! Fails: `None` when no handler, current or legacy, accepts the key.
//!
//! GitLab tries its handlers in a fixed order and the first whose pattern
//! matches takes the message (`lib/gitlab/email/handler.rb`; the gem's
//! `Identifier::MATCHERS`). We accept the union of every reply-key
//! generation GitLab issued and every handler pattern it honoured, so that
//! no GitLab version's valid key is bounced at the MTA:
//!
//! | key form | issued by | GitLab file |
//! |---|---|---|
//! | 32 lower-case hex | all versions | `app/models/sent_notification.rb` `LEGACY_REPLY_KEY_REGEX` |
//! | any `\w+` | accepted by CreateNote 11–17 | `lib/gitlab/email/handler/create_note_handler.rb` (`/\A\w+\z/`) |
//! | `i_<id>-k_<32 hex>-t_<timestamp>` | 18.x, flag `sent_notifications_partitioned_reply_key` | `app/models/sent_notification.rb` `PARTITIONED_REPLY_KEY_REGEX` |
//! | `<1-4 base36>-<25 base36>[-<1-13 base36>]` | newest | `gems/gitlab-email_handler/lib/gitlab/email_handler/reply_key.rb` |
//! | reply key + `-unsubscribe` / `+unsubscribe` | all / up to ~10.x | `…/matchers/unsubscribe.rb` |
//! | handler keys (`<slug>-<id>-<token>-issue`, …) | 11+ (legacy `path+token` before) | `…/matchers/*.rb` |
//!
//! The patterns below are GitLab's, anchored as GitLab anchors them.

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

/// The union of every `FULL_REPLY_KEY_REGEX`: legacy 32 lower-case hex, the
/// 18.x `i_…-k_…-t_…` form, or the partitioned base36 form
/// `<partition>-<25 chars>[-<namespace id>]`. Kept to test
/// [`is_full_reply_key`] against.
#[cfg(test)]
const FULL_REPLY_KEY: &str = r"(?:[a-f0-9]{32}|[0-9a-z]{1,4}-[0-9a-z]{25}(?:-[0-9a-z]{1,13})?|i_\d{1,19}-k_[a-f0-9]{32}-t_\d{1,19})";

fn matches(pattern: &str, key: &str) -> bool {
    // The patterns are constants; a failure to compile is a bug that the
    // unit tests catch, and it must not bounce mail, so it reads as "no".
    Regex::new(pattern).is_ok_and(|re| re.is_match(key))
}

/// Ruby's `\w+` on ASCII: one or more of `A-Z a-z 0-9 _`.
fn is_word(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Every `FULL_REPLY_KEY_REGEX` GitLab shipped, anchored as CreateNote
/// anchors it (`HANDLER_REGEX = /\A#{FULL_REPLY_KEY_REGEX}\z/`), without
/// compiling a regex: 32 lower-case hex digits (all versions), the 18.x
/// `i_<id>-k_<hex32>-t_<timestamp>` ([`is_timestamped_reply_key`]), or the
/// newest `[0-9a-z]{1,4}-[0-9a-z]{25}(-[0-9a-z]{1,13})?`.
pub fn is_full_reply_key(s: &str) -> bool {
    if is_timestamped_reply_key(s) {
        return true;
    }
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

/// GitLab 18.x `SentNotification::PARTITIONED_REPLY_KEY_REGEX`
/// (`app/models/sent_notification.rb`, behind the feature flag
/// `sent_notifications_partitioned_reply_key`):
/// `i_(\d{1,19})-k_([a-f\d]{32})-t_(\d{1,19})`, built by
/// `partitioned_reply_key` as `"i_#{id}-k_#{reply_key}-t_#{microseconds}"`.
pub fn is_timestamped_reply_key(s: &str) -> bool {
    let digits = |p: &str| (1..=19).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit());
    let Some(rest) = s.strip_prefix("i_") else {
        return false;
    };
    let Some((id, rest)) = rest.split_once("-k_") else {
        return false;
    };
    let Some((hex, stamp)) = rest.split_once("-t_") else {
        return false;
    };
    digits(id)
        && digits(stamp)
        && hex.len() == 32
        && hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
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
            "i_1-k_59d8df8370b7e95c5a49fbf86aeb2c93-t_1700000000000000",
            "i_1234567890123456789-k_59d8df8370b7e95c5a49fbf86aeb2c93-t_1",
            "i_12345678901234567890-k_59d8df8370b7e95c5a49fbf86aeb2c93-t_1",
            "i_-k_59d8df8370b7e95c5a49fbf86aeb2c93-t_1",
            "i_1-k_59D8df8370b7e95c5a49fbf86aeb2c93-t_1",
            "i_1-k_59d8df8370b7e95c5a49fbf86aeb2c9-t_1",
            "i_1-k_59d8df8370b7e95c5a49fbf86aeb2c93-t_",
            "i_1-k_59d8df8370b7e95c5a49fbf86aeb2c93-t_1x",
            "I_1-k_59d8df8370b7e95c5a49fbf86aeb2c93-t_1",
        ];
        for s in samples {
            assert_eq!(is_full_reply_key(s), re.is_match(s), "{s}");
        }
    }

    /// `app/models/sent_notification.rb` (18.x): `partitioned_reply_key` is
    /// `"i_#{id}-k_#{reply_key}-t_#{microseconds}"`, handled by CreateNote
    /// (`lib/gitlab/email/handler/create_note_handler.rb`, `HANDLER_REGEX`
    /// anchored) and, with `-unsubscribe`, by UnsubscribeHandler.
    #[test]
    fn sent_notification_rb_18x_timestamped_reply_keys() {
        let key = "i_42-k_59d8df8370b7e95c5a49fbf86aeb2c93-t_1746000000123456";
        assert_eq!(classify(key), Some(Kind::CreateNote));
        let unsub = format!("{key}-unsubscribe");
        assert_eq!(classify(&unsub), Some(Kind::Unsubscribe));
        let legacy_unsub = format!("{key}+unsubscribe");
        assert_eq!(classify(&legacy_unsub), Some(Kind::Unsubscribe));
        // Upper-case hex was never issued (SecureRandom.hex is lower case).
        assert_eq!(
            classify("i_42-k_59D8DF8370B7E95C5A49FBF86AEB2C93-t_1746000000123456"),
            None
        );
        assert!(crate::gitlab::address::Key::new(&unsub).is_some());
    }

    /// `gems/gitlab-email_handler/lib/gitlab/email_handler/reply_key.rb`:
    /// `PARTITIONED_REPLY_KEY_REGEX` with the optional namespace id, and
    /// `matchers/unsubscribe.rb` with both suffixes.
    #[test]
    fn reply_key_rb_partitioned_base36_keys() {
        for key in [
            "rs-0000000000000000000000abc-rs",
            "rs-0000000000000000000000abc",
            "1-0123456789abcdefghijklmno-zzzzzzzzzzzzz",
            "zzzz-0123456789abcdefghijklmno",
        ] {
            assert_eq!(classify(key), Some(Kind::CreateNote), "{key}");
            // Without a namespace id, `-unsubscribe` itself reads as one
            // (11 base36 characters), so GitLab's first matcher, CreateNote,
            // takes it: accepted either way, and we pick what GitLab picks.
            let want = if key.matches('-').count() == 2 {
                Kind::Unsubscribe
            } else {
                Kind::CreateNote
            };
            assert_eq!(classify(&format!("{key}-unsubscribe")), Some(want), "{key}");
            assert_eq!(
                classify(&format!("{key}+unsubscribe")),
                Some(Kind::Unsubscribe),
                "{key}"
            );
        }
        // unsubscribe_handler_spec.rb: "+<key>-unsubscribe" is not an
        // unsubscribe key (the legacy CreateIssue form `path+token` may
        // still take it; GitLab decides).
        assert_ne!(
            classify("+59d8df8370b7e95c5a49fbf86aeb2c93-unsubscribe"),
            Some(Kind::Unsubscribe)
        );
    }

    /// The gem's `spec/gitlab/email_handler/identifier_spec.rb` vectors
    /// (`gems/gitlab-email_handler/spec/`), plus the legacy forms of `lib/gitlab/email/handler/*.rb`
    /// (GitLab 11–17).
    #[test]
    fn identifier_spec_rb_vectors() {
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
