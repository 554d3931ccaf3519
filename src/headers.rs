//! The top-level header section of a message: where it ends, its fields
//! (unfolded), and the auto-reply test.
//!
//! Must not: look into the body, decode MIME, or allocate more than the
//! bytes it is given (the caller caps those at `limits.header_bytes`).
//! Fails: never; malformed input yields fewer fields, not an error.
//!
//! Framing follows RFC 5322 §2.2 and §3.5 strictly enough to be safe with
//! hostile input: a line is ended by LF (a CR before it is dropped; a bare CR
//! is just a byte, RFC 5322 forbids it); a field is a name of printable
//! ASCII without `:`, optional white space (the obsolete `To : x` of §4.5.3),
//! then `:`; a line starting with SP or HT continues the previous field; the
//! section ends at the first empty line or the first line that is neither,
//! so a `To:` hidden in the body never counts.
//!
//! Leading white space before the first field (blank lines a procmail recipe
//! or a `.forward` script left) is skipped, as GitLab's mail library does:
//! `Mail::Message#parse_message` splits `raw_source.lstrip` (mail 2.7 and
//! 2.8), and Ruby's `lstrip` removes NUL, HT, LF, VT, FF, CR and SP.

/// One header field, unfolded (RFC 5322 §2.2.3: only the line breaks are
/// removed), with outer white space trimmed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field<'a> {
    pub name: &'a [u8],
    pub value: Vec<u8>,
}

impl Field<'_> {
    /// Case-insensitive name test (RFC 5322 §1.2.2).
    pub fn is(&self, name: &str) -> bool {
        self.name.eq_ignore_ascii_case(name.as_bytes())
    }

    /// The value as text; invalid UTF-8 becomes U+FFFD, which no key or
    /// keyword can contain.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.value).into_owned()
    }
}

/// The parsed header section.
#[derive(Debug, Clone, Default)]
pub struct HeaderSection<'a> {
    pub fields: Vec<Field<'a>>,
    /// True when the first line ends in CRLF; lines we add copy it.
    pub crlf: bool,
    /// Bytes of leading white space skipped before the first field
    /// ([`leading_blank`]); a line we add goes after them.
    pub lead: usize,
}

/// How many bytes of `bytes` Ruby's `String#lstrip` would remove: the
/// leading run of NUL, HT, LF, VT, FF, CR and SP.
pub fn leading_blank(bytes: &[u8]) -> usize {
    bytes
        .iter()
        .position(|b| !b"\0\t\n\x0b\x0c\r ".contains(b))
        .unwrap_or(bytes.len())
}

impl<'a> HeaderSection<'a> {
    /// Parses the header section at the start of `bytes`.
    ///
    /// `complete` says whether `bytes` holds the whole message. When it does
    /// not (the header cap was reached), a last line without its LF is
    /// dropped: a key cut short by the cap would be a different key.
    pub fn parse(bytes: &'a [u8], complete: bool) -> HeaderSection<'a> {
        let mut section = HeaderSection::default();
        let mut pending: Option<Field<'a>> = None;
        let lead = leading_blank(bytes);
        // A message of white space only has no header section to skip to.
        if lead == bytes.len() {
            return section;
        }
        section.lead = lead;
        let mut rest = &bytes[lead..];
        let mut first = true;
        while !rest.is_empty() {
            let (line, next, terminated) = match rest.iter().position(|&b| b == b'\n') {
                Some(i) => (&rest[..i], &rest[i + 1..], true),
                None => (rest, &rest[rest.len()..], false),
            };
            if !terminated && !complete {
                break;
            }
            let crlf = line.last() == Some(&b'\r');
            let line = if crlf { &line[..line.len() - 1] } else { line };
            if first {
                section.crlf = crlf && terminated;
                first = false;
            }
            rest = next;
            if line.is_empty() {
                break;
            }
            if line[0] == b' ' || line[0] == b'\t' {
                match pending.as_mut() {
                    Some(field) => field.value.extend_from_slice(line),
                    // A continuation with nothing to continue: not a header.
                    None => break,
                }
                continue;
            }
            let Some((name, value)) = split_field(line) else {
                break;
            };
            if let Some(done) = pending.take() {
                section.fields.push(finish(done));
            }
            pending = Some(Field {
                name,
                value: value.to_vec(),
            });
        }
        if let Some(done) = pending.take() {
            section.fields.push(finish(done));
        }
        section
    }

    /// Every field called `name`, in document order.
    pub fn all<'s>(&'s self, name: &'s str) -> impl Iterator<Item = &'s Field<'a>> + 's {
        self.fields.iter().filter(move |f| f.is(name))
    }

    /// The first field called `name`.
    pub fn first(&self, name: &str) -> Option<&Field<'a>> {
        self.fields.iter().find(|f| f.is(name))
    }

    /// Why this message is an automatic one, or `None` for a human's.
    ///
    /// RFC 3834 §5: `Auto-Submitted` with any keyword but `no` (keywords are
    /// case-insensitive; comments and `;` parameters are not part of it; an
    /// empty or unknown value counts as automatic, as in Pigeonhole and
    /// GitLab). Every instance is checked, so a forged `no` cannot hide a
    /// second field. `X-Autoreply: yes` is GitLab's other signal, compared
    /// without case.
    pub fn auto_reply(&self) -> Option<String> {
        for field in self.all("Auto-Submitted") {
            let keyword = keyword_of(&field.text());
            if !keyword.eq_ignore_ascii_case("no") {
                return Some(format!(
                    "auto-reply dropped (Auto-Submitted: {})",
                    crate::status::printable(&keyword, 40)
                ));
            }
        }
        for field in self.all("X-Autoreply") {
            if keyword_of(&field.text()).eq_ignore_ascii_case("yes") {
                return Some("auto-reply dropped (X-Autoreply: yes)".into());
            }
        }
        None
    }
}

/// Splits `Name: value` (or the obsolete `Name : value`), or `None` when the
/// line is not a field.
fn split_field(line: &[u8]) -> Option<(&[u8], &[u8])> {
    let colon = line.iter().position(|&b| b == b':')?;
    let name = trim_end(&line[..colon]);
    // ftext (RFC 5322 §3.6.8): printable US-ASCII except ':'. White space
    // between name and colon is allowed (obs-optional), not inside the name.
    if name.is_empty() || !name.iter().all(|&b| (33..=126).contains(&b)) {
        return None;
    }
    Some((name, &line[colon + 1..]))
}

fn finish(mut field: Field<'_>) -> Field<'_> {
    let value = trim(&field.value);
    field.value = value.to_vec();
    field
}

fn is_wsp(b: u8) -> bool {
    b == b' ' || b == b'\t' || b == b'\r'
}

fn trim(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|&b| !is_wsp(b))
        .unwrap_or(bytes.len());
    trim_end(&bytes[start..])
}

fn trim_end(bytes: &[u8]) -> &[u8] {
    let end = bytes.iter().rposition(|&b| !is_wsp(b)).map_or(0, |i| i + 1);
    &bytes[..end]
}

/// The keyword of a structured value: comments removed (RFC 5322 §3.2.2,
/// nested, with quoted-pairs), parameters after `;` dropped, white space
/// trimmed. An unbalanced comment swallows the rest, leaving no keyword.
pub fn keyword_of(value: &str) -> String {
    let mut out = String::new();
    let mut depth = 0usize;
    let mut escaped = false;
    for c in value.chars() {
        if escaped {
            escaped = false;
            continue;
        }
        match c {
            '\\' if depth > 0 => escaped = true,
            '(' => depth += 1,
            ')' if depth > 0 => depth -= 1,
            ';' if depth == 0 => break,
            _ if depth == 0 => out.push(c),
            _ => {}
        }
    }
    out.trim().to_string()
}

/// The first line break style and where the header section ends, for a
/// message whose start is in `bytes`: the offset just past the empty line,
/// or `None` when it is not within `bytes`. `bytes` starts at a line start
/// after any [`leading_blank`] run: the caller skips that, since only the
/// message's own start has one.
pub fn section_end(bytes: &[u8]) -> Option<usize> {
    let mut at = 0;
    while at < bytes.len() {
        let end = bytes[at..].iter().position(|&b| b == b'\n')? + at;
        let line = &bytes[at..end];
        if line.is_empty() || line == b"\r" {
            return Some(end + 1);
        }
        at = end + 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(h: &HeaderSection) -> Vec<String> {
        h.fields
            .iter()
            .map(|f| String::from_utf8_lossy(f.name).into_owned())
            .collect()
    }

    #[test]
    fn lf_and_crlf_frame_the_same() {
        let lf = b"To: a@b\nSubject: x\n y\n\nTo: body@x\n";
        let crlf = b"To: a@b\r\nSubject: x\r\n y\r\n\r\nTo: body@x\r\n";
        let (a, b) = (
            HeaderSection::parse(lf, true),
            HeaderSection::parse(crlf, true),
        );
        assert_eq!(a.fields, b.fields);
        assert_eq!(names(&a), ["To", "Subject"]);
        assert_eq!(a.fields[1].value, b"x y");
        assert!(b.crlf && !a.crlf);
    }

    #[test]
    fn body_without_blank_line_ends_the_section() {
        let h = HeaderSection::parse(b"To: a@b\nhello there\nCc: c@d\n", true);
        assert_eq!(names(&h), ["To"]);
    }

    #[test]
    fn odd_lines() {
        // Leading white space is skipped as Ruby's lstrip does, so a
        // first line " To: a@b" is the field "To: a@b" (mail gem).
        let h = HeaderSection::parse(b" To: a@b\n\n", true);
        assert_eq!(names(&h), ["To"]);
        let h = HeaderSection::parse(b"Subject: x\n To: a@b\n\n", true);
        assert_eq!(h.fields[0].value, b"x To: a@b");
        let h = HeaderSection::parse(b"To : a@b\n:novalue\nCc: x\n", true);
        assert_eq!(names(&h), ["To"]);
        let h = HeaderSection::parse(b"To: a@x\rTo: k@ex\n", true);
        assert_eq!(h.fields.len(), 1);
        assert_eq!(h.fields[0].value, b"a@x\rTo: k@ex");
        let h = HeaderSection::parse(b"Received:\n\t", true);
        assert_eq!(names(&h), ["Received"]);
    }

    #[test]
    fn truncated_last_line_is_dropped_when_incomplete() {
        let h = HeaderSection::parse(b"Subject: x\nTo: incoming+abc", false);
        assert_eq!(names(&h), ["Subject"]);
        let h = HeaderSection::parse(b"Subject: x\nTo: incoming+abc", true);
        assert_eq!(names(&h), ["Subject", "To"]);
    }

    #[test]
    fn auto_submitted_rules() {
        let auto = |v: &str| {
            let msg = format!("Auto-Submitted:{v}\n\n");
            HeaderSection::parse(msg.as_bytes(), true)
                .auto_reply()
                .is_some()
        };
        for human in [
            " no",
            " No",
            " NO",
            "  no  ",
            " no (human)",
            " no; x=y",
            "\n no",
        ] {
            assert!(!auto(human), "{human:?}");
        }
        for machine in [
            " auto-replied",
            " Auto-Generated",
            " auto-notified; owner-email=\"a@b\"",
            " auto-replied (vacation)",
            "",
            " yes",
            " =?us-ascii?q?no?=",
            "\n auto-replied",
            " (unbalanced no",
        ] {
            assert!(auto(machine), "{machine:?}");
        }
        let both =
            HeaderSection::parse(b"Auto-Submitted: no\nAuto-Submitted: auto-replied\n", true);
        assert!(both.auto_reply().is_some());
        for (v, want) in [
            ("yes", true),
            ("YES", true),
            ("yes (vacation)", true),
            ("no", false),
        ] {
            let msg = format!("X-Autoreply: {v}\n\n");
            let h = HeaderSection::parse(msg.as_bytes(), true);
            assert_eq!(h.auto_reply().is_some(), want, "{v}");
        }
        let h = HeaderSection::parse(b"X-Autoreply: true\n\n", true);
        assert!(h.auto_reply().is_none());
    }

    /// mail 2.7/2.8 `Message#parse_message` parses `raw_source.lstrip`:
    /// leading blank lines (and spaces) are skipped, LF and CRLF alike.
    #[test]
    fn mail_gem_lstrip_leading_blank_lines_are_skipped() {
        for (input, lead) in [
            (&b"\n\nTo: a@b\nCc: c@d\n\nbody"[..], 2),
            (b"\r\n\r\nTo: a@b\r\nCc: c@d\r\n\r\nbody", 4),
            (b" \t\n  To: a@b\nCc: c@d\n\n", 5),
            (b"\0\x0b\x0cTo: a@b\nCc: c@d\n\n", 3),
        ] {
            let h = HeaderSection::parse(input, true);
            assert_eq!(names(&h), ["To", "Cc"], "{input:?}");
            assert_eq!(h.lead, lead, "{input:?}");
            assert_eq!(h.crlf, input.windows(2).any(|w| w == b"\r\n"));
            let end = lead + section_end(&input[lead..]).unwrap();
            assert!(input[..end].ends_with(b"\n\n") || input[..end].ends_with(b"\r\n\r\n"));
        }
        assert!(HeaderSection::parse(b"\n\n\n", true).fields.is_empty());
    }

    #[test]
    fn section_end_finds_the_blank_line() {
        assert_eq!(section_end(b"A: b\n\nbody"), Some(6));
        assert_eq!(section_end(b"A: b\r\n\r\nbody"), Some(8));
        assert_eq!(section_end(b"A: b\n"), None);
    }
}
