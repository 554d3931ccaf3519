//! The properties the fuzz targets check, in one place, so that
//! `tests/fuzz_regressions.rs` and `tests/properties.rs` (stable Rust, plain
//! `cargo test`) check exactly what libFuzzer checks. They include this file
//! with `#[path = "../fuzz/src/lib.rs"]`, so it depends on `mailpipe` and
//! `std` only.
//!
//! Every check panics on a violation: libFuzzer reports a panic as a crash
//! and saves the input; `cargo test` reports it as a failure.
//!
//! Input layout of the `decide` target (see [`DecideInput::from_bytes`]):
//! one flags byte, then an optional recipient line and an optional original
//! recipient line (each ended by LF), then the header bytes.

use std::path::Path;
use std::sync::OnceLock;

use mailpipe::config::Config;
use mailpipe::decide::{self, Decision};
use mailpipe::gitlab::address::{Key, MAX_KEY_LEN, Template};
use mailpipe::gitlab::kind::{self, Kind};
use mailpipe::gitlab::lookup::{self, Envelope, FoundIn};
use mailpipe::headers::{self, HeaderSection};
use mailpipe::status::Status;

/// The configurations `decide` is fuzzed under: sub-addressing with both
/// routes, a catch-all local part, and a dedicated address (no key in the
/// address: only References can give one).
pub const CONFIG_TEXTS: [&str; 3] = [
    r#"
[incoming_email]
address = "incoming+%{key}@incoming.example.com"
[service_desk_email]
address = "contact+%{key}@example.com"
[gitlab]
host = "gitlab.example.com"
[spool]
dir = "/nonexistent/mailpipe-fuzz"
"#,
    r#"
[incoming_email]
address = "%{key}@in.example.com"
[gitlab]
host = "gitlab.example.com"
[spool]
dir = "/nonexistent/mailpipe-fuzz"
"#,
    r#"
[incoming_email]
address = "gitlab-incoming@example.com"
[gitlab]
host = "gitlab.example.com"
[spool]
dir = "/nonexistent/mailpipe-fuzz"
"#,
];

/// The templates `address_list` matches every address it reads against.
pub const TEMPLATES: [&str; 4] = [
    "incoming+%{key}@incoming.example.com",
    "contact+%{key}@example.com",
    "%{key}@in.example.com",
    "gitlab-incoming@example.com",
];

/// The three configurations, parsed once.
pub fn configs() -> &'static [Config; 3] {
    static CONFIGS: OnceLock<[Config; 3]> = OnceLock::new();
    CONFIGS.get_or_init(|| {
        CONFIG_TEXTS.map(|text| {
            Config::from_text(Path::new("fuzz.toml"), text).expect("fixed fuzz config parses")
        })
    })
}

fn templates() -> &'static [Template; 4] {
    static TEMPLATES_PARSED: OnceLock<[Template; 4]> = OnceLock::new();
    TEMPLATES_PARSED
        .get_or_init(|| TEMPLATES.map(|t| Template::parse(t).expect("fixed template parses")))
}

/// One `decide` call, decoded from fuzzer bytes.
#[derive(Debug, Clone)]
pub struct DecideInput {
    /// Index into [`configs`].
    pub config: usize,
    pub complete: bool,
    pub envelope: Envelope,
    pub head: Vec<u8>,
}

impl DecideInput {
    /// Flags byte: bits 0–1 the configuration (3 reads as 0), bit 2
    /// `complete`, bit 3 a recipient line follows, bit 4 an original
    /// recipient line follows, bit 5 the recipient is given twice (the
    /// several-recipients refusal). Everything after the lines is the head.
    pub fn from_bytes(data: &[u8]) -> DecideInput {
        let flags = data.first().copied().unwrap_or(0);
        let mut rest = data.get(1..).unwrap_or(&[]);
        let mut line = |present: bool| -> Option<String> {
            if !present {
                return None;
            }
            let end = rest.iter().position(|&b| b == b'\n');
            let (l, r) = match end {
                Some(i) => (&rest[..i], &rest[i + 1..]),
                None => (rest, &rest[rest.len()..]),
            };
            rest = r;
            Some(String::from_utf8_lossy(l).into_owned())
        };
        let recipient = line(flags & 0x08 != 0);
        let original = line(flags & 0x10 != 0);
        let mut recipients: Vec<String> = recipient.into_iter().collect();
        if flags & 0x20 != 0
            && let Some(r) = recipients.first().cloned()
        {
            recipients.push(r);
        }
        DecideInput {
            config: usize::from(flags & 0x03) % 3,
            complete: flags & 0x04 != 0,
            envelope: Envelope {
                sender: None,
                recipients,
                original_recipients: original.into_iter().collect(),
                queue_id: None,
            },
            head: rest.to_vec(),
        }
    }

    /// The inverse of [`DecideInput::from_bytes`] (recipient lines must
    /// not contain LF), for building seeds and regression files.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut flags = (self.config % 3) as u8;
        if self.complete {
            flags |= 0x04;
        }
        let mut out = vec![0];
        if let Some(r) = self.envelope.recipients.first() {
            flags |= 0x08;
            if self.envelope.recipients.len() > 1 {
                flags |= 0x20;
            }
            out.extend_from_slice(r.as_bytes());
            out.push(b'\n');
        }
        if let Some(o) = self.envelope.original_recipients.first() {
            flags |= 0x10;
            out.extend_from_slice(o.as_bytes());
            out.push(b'\n');
        }
        out[0] = flags;
        out.extend_from_slice(&self.head);
        out
    }
}

/// What must not differ between two forms of one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub exit_code: u8,
    pub status: Status,
    pub route: Option<&'static str>,
    pub key: Option<String>,
    pub kind: Option<Kind>,
    pub found_in: Option<FoundIn>,
    pub prepend: Option<String>,
    pub gitlab_sees_other_key: bool,
    pub message_id: Option<String>,
}

impl Summary {
    pub fn of(d: &Decision) -> Summary {
        Summary {
            exit_code: d.status().exit_code(),
            status: d.status().clone(),
            route: d.route().map(|r| r.as_str()),
            key: d.key().map(|k| k.as_str().to_string()),
            kind: d.kind(),
            found_in: d.found_in(),
            prepend: d.spooled().and_then(|s| s.prepend.clone()),
            gitlab_sees_other_key: d.spooled().is_some_and(|s| s.gitlab_sees_other_key),
            message_id: d.message_id.clone(),
        }
    }
}

/// The key alphabet, written out independently of `Key::new`: 1–255 of
/// `A-Z a-z 0-9 . _ + / -`, not starting with `.` or `/`, without `..`.
pub fn key_obeys_alphabet(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= MAX_KEY_LEN
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._+/-".contains(&b))
        && !key.starts_with(['.', '/'])
        && !key.contains("..")
}

/// Panics unless `key` is one mailpipe may use in a path or a log line.
pub fn assert_key_ok(key: &str, context: &str) {
    assert!(
        key_obeys_alphabet(key),
        "{context}: key {key:?} breaks the alphabet"
    );
    assert!(
        Key::new(key).is_some_and(|k| k.as_str() == key),
        "{context}: Key::new refuses {key:?}"
    );
}

/// The two line-ending forms of `head`: split at LF, every trailing CR of a
/// line dropped, joined with LF and with CRLF. Both frame the same lines
/// for the parser, which drops one CR before each LF.
pub fn line_forms(head: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let lines: Vec<&[u8]> = head
        .split(|&b| b == b'\n')
        .map(|l| {
            let end = l.iter().rposition(|&b| b != b'\r').map_or(0, |i| i + 1);
            &l[..end]
        })
        .collect();
    (lines.join(&b"\n"[..]), lines.join(&b"\r\n"[..]))
}

/// Runs `decide` and checks every property of one decision.
pub fn decide_checked(config: &Config, input: &DecideInput, head: &[u8], form: &str) -> Summary {
    let d = decide::decide(config, &input.envelope, head, input.complete);
    let s = Summary::of(&d);
    // Exit discipline: only 0, 65, 67, 75; the report line's class matches.
    assert!(
        matches!(s.exit_code, 0 | 65 | 67 | 75),
        "{form}: exit {}",
        s.exit_code
    );
    if let Some(line) = d.status().report_line() {
        // Exit 0 speaks only for a dropped auto-reply (2.0.0, which pipe(8)
        // logs after status=sent).
        let class = match s.exit_code {
            75 => "4.",
            0 => "2.",
            _ => "5.",
        };
        assert!(line.starts_with(class), "{form}: report {line:?}");
        assert!(
            !line.contains(['\n', '\r', '\0']),
            "{form}: report not one line: {line:?}"
        );
    }
    if let Some(key) = d.key() {
        assert_key_ok(key.as_str(), form);
    }
    if let Some(spooled) = d.spooled() {
        // A keyless accept is only a configured custom Service Desk address
        // (an accept always has a route and a kind: the types say so).
        assert!(
            spooled.key.is_some() || spooled.custom_address.is_some(),
            "{form}: accepted without key or custom address: {s:?}"
        );
    }
    if input.complete && !head.is_empty() && head.iter().all(u8::is_ascii_whitespace) {
        assert!(
            input.envelope.recipients.len() > 1 || s.exit_code == 65,
            "{form}: blank message not refused as empty: {s:?}"
        );
    }
    if let Some(spooled) = d.spooled()
        && let Some(line) = &spooled.prepend
    {
        // The line goes on top of the stored copy: one header line, which
        // names the same key on the same route when read back.
        assert!(
            !line.contains(['\n', '\r', '\0']),
            "{form}: prepend is not one line: {line:?}"
        );
        let addr = line
            .strip_prefix("Delivered-To: ")
            .unwrap_or_else(|| panic!("{form}: prepend {line:?} is not Delivered-To"));
        let template = &config
            .route(spooled.route)
            .expect("the route is configured")
            .template;
        let back = template.key_of(addr).map(|k| k.as_str().to_string());
        assert_eq!(
            back, s.key,
            "{form}: prepended {line:?} does not name the key"
        );
    }
    s
}

/// Fuzz target `decide`: no panic, keys obey the alphabet, exit codes and
/// report lines are consistent, and the LF and CRLF forms decide the same.
pub fn check_decide(data: &[u8]) {
    let input = DecideInput::from_bytes(data);
    let config = &configs()[input.config];
    decide_checked(config, &input, &input.head, "raw");
    let (lf, crlf) = line_forms(&input.head);
    let a = decide_checked(config, &input, &lf, "LF");
    let b = decide_checked(config, &input, &crlf, "CRLF");
    assert_eq!(a, b, "LF and CRLF forms decide differently");
}

/// Fuzz target `address_list`: the header readers on arbitrary bytes.
pub fn check_address_list(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    check_value(&text);

    let complete = HeaderSection::parse(data, true);
    let cut = HeaderSection::parse(data, false);
    check_section(&complete, data);
    check_section(&cut, data);
    // Without the whole message only an unterminated last line is dropped:
    // every field but the last of the cut parse is the same.
    assert!(cut.fields.len() <= complete.fields.len());
    if let Some((last, whole)) = cut.fields.split_last() {
        assert_eq!(whole, &complete.fields[..whole.len()]);
        assert_eq!(last.name, complete.fields[whole.len()].name);
    }
    if !data.contains(&b'\n') {
        assert!(cut.fields.is_empty(), "a line without LF parsed as cut");
    }
    let (lf, crlf) = line_forms(data);
    for c in [true, false] {
        let a = HeaderSection::parse(&lf, c);
        let b = HeaderSection::parse(&crlf, c);
        assert_eq!(a.fields, b.fields, "LF and CRLF frame differently");
    }
    for field in &complete.fields {
        check_value(&field.text());
    }
    let _ = complete.auto_reply();
    for t in templates() {
        if let Some((key, _)) = lookup::gitlab_key(&complete, t, "gitlab.example.com") {
            assert!(!key.contains('\n'), "GitLab's `.` never matches LF");
        }
    }
    if let Some(end) = headers::section_end(data) {
        assert!(end <= data.len() && data[end - 1] == b'\n');
    }
}

/// The readers of one header value.
fn check_value(text: &str) {
    let addrs = lookup::address_list(text);
    let total: usize = addrs.iter().map(String::len).sum();
    assert!(
        total <= text.len(),
        "address_list produced more text than it read"
    );
    for a in &addrs {
        assert!(
            !a.is_empty() && a.trim() == a,
            "address {a:?} empty or untrimmed"
        );
        for t in templates() {
            if let Some(key) = t.key_of(a) {
                assert_key_ok(key.as_str(), "address_list");
                let _ = kind::classify(key.as_str());
                assert!(
                    t.render(&key).eq_ignore_ascii_case(a),
                    "{a:?} is not its template with key {:?}",
                    key.as_str()
                );
            }
        }
    }
    for id in lookup::message_ids(text) {
        assert!(
            is_within(id, text),
            "message id is not a slice of the value"
        );
        assert!(!id.contains(['<', '>']), "message id {id:?} has a bracket");
    }
    if let Some(addr) = lookup::received_for(text) {
        assert!(is_within(addr, text), "received_for is not a slice");
        assert!(
            !addr.contains(['<', '>']),
            "received_for {addr:?} has a bracket"
        );
    }
    let _ = headers::keyword_of(text);
}

fn is_within(part: &str, whole: &str) -> bool {
    let (p, w) = (part.as_ptr() as usize, whole.as_ptr() as usize);
    p >= w && p + part.len() <= w + whole.len()
}

fn check_section(section: &HeaderSection, data: &[u8]) {
    let mut total = 0;
    for f in &section.fields {
        assert!(
            !f.name.is_empty() && f.name.iter().all(|&b| (33..=126).contains(&b) && b != b':'),
            "bad field name {:?}",
            String::from_utf8_lossy(f.name)
        );
        assert!(!f.value.contains(&b'\n'), "value keeps a line break");
        let wsp = |b: &u8| matches!(b, b' ' | b'\t' | b'\r');
        assert!(
            !f.value.first().is_some_and(wsp) && !f.value.last().is_some_and(wsp),
            "value not trimmed"
        );
        total += f.name.len() + f.value.len();
    }
    assert!(total <= data.len(), "fields hold more than the input");
}

// ----- policy_request --------------------------------------------------------

/// Property of the `policy_request` target: bytes from a Postfix policy
/// client (first byte: where to split the stream in two reads, and which
/// configuration), through the server's own parser, answer and reply
/// writer. Every empty line (a request's end) gets exactly one reply, each
/// reply is one `action=` line of printable ASCII followed by an empty
/// line, the action is one of the four the policy may give, and a 550 is
/// given only for a recipient `decide::for_recipient` rejects.
pub fn check_policy_request(data: &[u8]) {
    use mailpipe::policy::answer;
    use mailpipe::policy::protocol::{self, Parser};
    use mailpipe::policy::ratelimit::Limiter;
    use std::time::Instant;

    let Some((&flags, stream)) = data.split_first() else {
        return;
    };
    let config = &configs()[usize::from(flags % 3)];
    let split = if stream.is_empty() {
        0
    } else {
        usize::from(flags) * 257 % (stream.len() + 1)
    };
    let limiter = Limiter::new();
    let now = Instant::now();
    let mut parser = Parser::new();
    let mut out = Vec::new();
    let mut answers = Vec::new();
    for part in [&stream[..split], &stream[split..]] {
        parser.feed(part, |request| {
            let a = answer::for_request(config, &request, Some(&limiter), now);
            if a.action.starts_with("550 ") {
                let r = request
                    .recipient
                    .as_deref()
                    .expect("550 without a recipient");
                let d = decide::for_recipient(config, r);
                assert!(
                    matches!(d.status(), Status::Rejected(..)),
                    "550 for {r:?}, which decide accepts"
                );
            }
            protocol::reply(&a.action, &mut out);
            answers.push(a.action);
        });
    }
    // The reference count of request ends: complete lines that are empty
    // once one trailing CR is dropped.
    let complete = match stream.iter().rposition(|&b| b == b'\n') {
        Some(i) => &stream[..=i],
        None => &stream[..0],
    };
    let ends = complete
        .split(|&b| b == b'\n')
        .rev()
        .skip(1) // the empty piece after the last LF
        .filter(|l| l.is_empty() || *l == b"\r")
        .count();
    assert_eq!(answers.len(), ends, "one answer per request");
    // The reply bytes are exactly the answers, each `action=X\n\n`.
    let mut rest = out.as_slice();
    for a in &answers {
        let line = rest
            .strip_prefix(b"action=")
            .expect("reply starts with action=");
        let end = line
            .iter()
            .position(|&b| b == b'\n')
            .expect("reply line ends");
        let text = &line[..end];
        assert!(
            text.iter().all(|&b| b == b' ' || b.is_ascii_graphic()),
            "unprintable reply {text:?}"
        );
        assert!(text.len() <= protocol::MAX_ACTION);
        assert_eq!(
            &line[end..end + 2],
            b"\n\n",
            "reply ends with an empty line"
        );
        let text = std::str::from_utf8(text).expect("ASCII");
        assert!(
            text == answer::DUNNO
                || ["550 5.1.1 ", "552 5.3.4 ", "450 4.7.1 "]
                    .iter()
                    .any(|p| text.starts_with(p)),
            "unexpected action {text:?}"
        );
        assert_eq!(text, crate_printable(a), "reply is the answer");
        rest = &line[end + 2..];
    }
    assert!(rest.is_empty(), "bytes after the last reply");
}

fn crate_printable(a: &str) -> String {
    mailpipe::status::printable(a, mailpipe::policy::protocol::MAX_ACTION)
}
