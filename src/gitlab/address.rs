//! Address templates (`incoming+%{key}@host`), keys, and matching one
//! address against a template.
//!
//! Must not: touch files, headers or the network; it sees one address or one
//! key at a time.
//! Fails: by returning `None` / `Err`; never panics on any input.
//!
//! GitLab builds `\A<?prefix(.+)suffix>?\z` from the configured address and
//! matches it case-sensitively against raw header text (`address_regex` in
//! `gems/gitlab-email_handler/lib/gitlab/email_handler/mail_key.rb`). We
//! match parsed addr-specs instead, compare the fixed parts without regard to
//! ASCII case (domains are case-insensitive, RFC 5321 §2.4) and keep the key's
//! case, then hold the key to a strict alphabet before it goes anywhere.

use std::fmt;

/// The placeholder GitLab replaces with the key.
pub const PLACEHOLDER: &str = "%{key}";

/// Longest key accepted: one file-name component (NAME_MAX).
pub const MAX_KEY_LEN: usize = 255;

/// A configured address, split around its placeholder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    /// The address as configured.
    pub address: String,
    /// Text before `%{key}` (the whole address when there is no key).
    prefix: String,
    /// Text after `%{key}`, including `@domain`.
    suffix: String,
    has_key: bool,
}

/// What is wrong with a configured address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplateError {
    NotAnAddress(&'static str),
    PlaceholderTwice,
    PlaceholderInDomain,
}

impl fmt::Display for TemplateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TemplateError::NotAnAddress(why) => write!(f, "not a valid address: {why}"),
            TemplateError::PlaceholderTwice => {
                write!(f, "{PLACEHOLDER} appears more than once")
            }
            TemplateError::PlaceholderInDomain => {
                write!(f, "{PLACEHOLDER} must be in the local part, before the @")
            }
        }
    }
}

impl Template {
    /// Parses a configured address such as `incoming+%{key}@example.com`.
    pub fn parse(address: &str) -> Result<Template, TemplateError> {
        let Some((local, domain)) = address.rsplit_once('@') else {
            return Err(TemplateError::NotAnAddress("no @"));
        };
        if local.is_empty() {
            return Err(TemplateError::NotAnAddress("empty local part"));
        }
        if domain.is_empty() || !is_domain(domain) {
            if domain.contains(PLACEHOLDER) {
                return Err(TemplateError::PlaceholderInDomain);
            }
            return Err(TemplateError::NotAnAddress("invalid domain"));
        }
        if !local.bytes().all(is_atext_or_dot) && !local.contains(PLACEHOLDER) {
            return Err(TemplateError::NotAnAddress(
                "invalid character in local part",
            ));
        }
        match local.matches(PLACEHOLDER).count() {
            0 => Ok(Template {
                address: address.to_string(),
                prefix: address.to_string(),
                suffix: String::new(),
                has_key: false,
            }),
            1 => {
                let (before, after) = local.split_once(PLACEHOLDER).unwrap_or((local, ""));
                let fixed = format!("{before}{after}");
                if !fixed.bytes().all(is_atext_or_dot) {
                    return Err(TemplateError::NotAnAddress(
                        "invalid character in local part",
                    ));
                }
                Ok(Template {
                    address: address.to_string(),
                    prefix: before.to_string(),
                    suffix: format!("{after}@{domain}"),
                    has_key: true,
                })
            }
            _ => Err(TemplateError::PlaceholderTwice),
        }
    }

    /// True when the address carries `%{key}` (sub-address or catch-all);
    /// false for a dedicated address, where only References can give a key.
    pub fn has_key(&self) -> bool {
        self.has_key
    }

    /// The key in `addr`, when `addr` is this template with a valid key.
    /// `addr` is a bare addr-spec (no display name, no brackets).
    pub fn key_of(&self, addr: &str) -> Option<Key> {
        let raw = self.raw_key_of(addr)?;
        Key::new(raw)
    }

    /// The text in the placeholder's place, before any key validation.
    pub fn raw_key_of<'a>(&self, addr: &'a str) -> Option<&'a str> {
        if !self.has_key || addr.len() <= self.prefix.len() + self.suffix.len() {
            return None;
        }
        let head = addr.get(..self.prefix.len())?;
        let tail = addr.get(addr.len() - self.suffix.len()..)?;
        if head.eq_ignore_ascii_case(&self.prefix) && tail.eq_ignore_ascii_case(&self.suffix) {
            addr.get(self.prefix.len()..addr.len() - self.suffix.len())
        } else {
            None
        }
    }

    /// True when `addr` is this template's address exactly (dedicated mode).
    pub fn is_fixed_address(&self, addr: &str) -> bool {
        !self.has_key && addr.eq_ignore_ascii_case(&self.address)
    }

    /// The address with `key` in the placeholder's place.
    pub fn render(&self, key: &Key) -> String {
        if self.has_key {
            format!("{}{}{}", self.prefix, key.as_str(), self.suffix)
        } else {
            self.address.clone()
        }
    }

    /// GitLab's own match (`MailKey.address_regex`): `\A<?prefix(.+)suffix>?\z`,
    /// case-sensitive, greedy, no alphabet. Used only to predict what GitLab
    /// will find in the stored copy.
    pub fn gitlab_key_of<'a>(&self, raw: &'a str) -> Option<&'a str> {
        if !self.has_key {
            return None;
        }
        let s = raw.strip_prefix('<').unwrap_or(raw);
        // `>?\z`: try with the bracket first, as the regex would backtrack to.
        let candidates = [s.strip_suffix('>'), Some(s)];
        for s in candidates.into_iter().flatten() {
            if s.len() > self.prefix.len() + self.suffix.len()
                && s.starts_with(&self.prefix)
                && s.ends_with(&self.suffix)
            {
                let key = &s[self.prefix.len()..s.len() - self.suffix.len()];
                // `.` in Ruby does not match a newline.
                if !key.contains('\n') {
                    return Some(key);
                }
            }
        }
        None
    }

    /// True when one address could match both templates, so a message could
    /// not be routed unambiguously.
    pub fn overlaps(&self, other: &Template) -> bool {
        if !self.has_key || !other.has_key {
            return self.address.eq_ignore_ascii_case(&other.address);
        }
        let (p1, p2) = (
            self.prefix.to_ascii_lowercase(),
            other.prefix.to_ascii_lowercase(),
        );
        let (s1, s2) = (
            self.suffix.to_ascii_lowercase(),
            other.suffix.to_ascii_lowercase(),
        );
        (p1.starts_with(&p2) || p2.starts_with(&p1)) && (s1.ends_with(&s2) || s2.ends_with(&s1))
    }

    /// The domain part, for Postfix routing checks.
    pub fn domain(&self) -> &str {
        self.address.rsplit_once('@').map(|(_, d)| d).unwrap_or("")
    }
}

/// A key that passed the alphabet: 1–255 of `A-Z a-z 0-9 . _ + / -`, not
/// starting with `.` or `/`, without `..`. Such a key can never name a path
/// outside a directory, a hidden file, or carry a control character.
#[derive(Clone, PartialEq, Eq)]
pub struct Key(String);

impl Key {
    /// Validates `raw` against the key alphabet.
    pub fn new(raw: &str) -> Option<Key> {
        let ok = !raw.is_empty()
            && raw.len() <= MAX_KEY_LEN
            && raw
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._+/-".contains(&b))
            && !raw.starts_with('.')
            && !raw.starts_with('/')
            && !raw.contains("..");
        ok.then(|| Key(raw.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A short, stable fingerprint for logs: the key is a credential.
    pub fn fingerprint(&self) -> String {
        // FNV-1a, 64 bit; 32 bits shown. Enough to correlate log lines,
        // far too little to recover or guess a 128-bit key.
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for b in self.0.bytes() {
            hash ^= u64::from(b);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
        format!("{:08x}", hash >> 32)
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key({})", self.fingerprint())
    }
}

/// RFC 5322 atext plus `.`, as allowed in a dot-atom local part.
fn is_atext_or_dot(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-/=?^_`{|}~.".contains(&b)
}

/// A host name: labels of letters, digits and hyphens (RFC 1035 §2.3.1).
fn is_domain(domain: &str) -> bool {
    domain.len() <= 253
        && domain.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Template {
        Template::parse(s).unwrap()
    }

    #[test]
    fn templates_parse_and_refuse() {
        assert!(t("incoming+%{key}@ex.com").has_key());
        assert!(!t("gitlab-incoming@ex.com").has_key());
        assert_eq!(
            Template::parse("a+%{key}+%{key}@ex.com"),
            Err(TemplateError::PlaceholderTwice)
        );
        assert_eq!(
            Template::parse("bot@%{key}.ex.com"),
            Err(TemplateError::PlaceholderInDomain)
        );
        assert!(Template::parse("no-at-sign").is_err());
        assert!(Template::parse("a b@ex.com").is_err());
        assert!(Template::parse("@ex.com").is_err());
    }

    #[test]
    fn keys_match_with_case_kept_and_fixed_parts_folded() {
        let tpl = t("incoming+%{key}@Incoming.Ex.com");
        assert_eq!(
            tpl.key_of("INCOMING+AbC@incoming.ex.COM").unwrap().as_str(),
            "AbC"
        );
        assert!(tpl.key_of("incoming+@incoming.ex.com").is_none());
        assert!(tpl.key_of("other+abc@incoming.ex.com").is_none());
        assert!(
            tpl.key_of("incoming+a@incoming.ex.com@incoming.ex.com")
                .is_none()
        );
        let catch_all = t("incoming-%{key}@ex.com");
        assert_eq!(
            catch_all.key_of("incoming-k1@ex.com").unwrap().as_str(),
            "k1"
        );
    }

    #[test]
    fn key_alphabet() {
        for good in ["abc", "a/b+c", "gitlab-org-gitlab-ce-20-issue-", "A.b_c"] {
            assert!(Key::new(good).is_some(), "{good}");
        }
        let long = "a".repeat(256);
        for bad in [
            "", ".a", "/a", "a..b", "a b", "a@b", "a\0b", "ключ", "a:b", "a\\b", &long,
        ] {
            assert!(Key::new(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn gitlab_match_is_literal() {
        let tpl = t("incoming+%{key}@ex.com");
        assert_eq!(tpl.gitlab_key_of("<incoming+k@ex.com>"), Some("k"));
        assert_eq!(tpl.gitlab_key_of("<incoming+k@ex.com"), Some("k"));
        assert_eq!(tpl.gitlab_key_of("incoming+k@EX.com"), None);
        assert_eq!(tpl.gitlab_key_of("Bot <incoming+k@ex.com>"), None);
    }

    #[test]
    fn overlap() {
        let a = t("incoming+%{key}@ex.com");
        assert!(a.overlaps(&t("incoming+sd-%{key}@ex.com")));
        assert!(!a.overlaps(&t("contact+%{key}@ex.com")));
        assert!(!a.overlaps(&t("incoming+%{key}@other.com")));
    }
}
