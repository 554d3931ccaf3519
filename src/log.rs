//! One syslog line per message (facility mail, ident mailpipe), in the
//! key=value style of Postfix's own lines, so `grep QUEUEID /var/log/mail.log`
//! shows mailpipe's verdict next to Postfix's.
//!
//! Must not: log a whole key (it is a user's credential: only its kind and
//! fingerprint) in any field, any body text, any byte that is not printable
//! ASCII, or more than one line per message; nor let a header's text pass
//! for another field (values that could are quoted).
//! Fails: silently. Logging is best effort; it must never change an exit
//! code, and glibc's syslog(3) drops the line if no syslog daemon listens.

use std::ffi::CString;
use std::time::Duration;

use crate::config::Config;
use crate::decide::Decision;
use crate::gitlab::lookup::Envelope;
use crate::status::{Status, printable};

/// Everything the line reports.
pub struct Record<'a> {
    pub envelope: &'a Envelope,
    pub decision: Option<&'a Decision>,
    pub config: Option<&'a Config>,
    pub size: u64,
    pub status: &'a Status,
    pub duration: Duration,
}

/// Formats the line (without the syslog prefix).
///
/// Every free-text value (queue id, message-id, sender, recipient, reason)
/// goes through the same steps: keys masked ([`Masks`]), then
/// [`printable`] (one line of printable ASCII: no ESC, CR, LF or other
/// control, no bidi override), then [`quoted`]. So a header such as
/// `Message-ID: <x>, sender=<root@localhost>` is logged as
/// `message-id="<x>, sender=<root@localhost>"` and cannot add a field.
pub fn format(r: &Record) -> String {
    let env = r.envelope;
    let d = r.decision;
    let message_id = d.and_then(|d| d.message_id.as_deref());
    let reason = r.status.reason();
    let mut texts: Vec<&str> = vec![reason];
    texts.extend(env.sender.as_deref());
    texts.extend(env.queue_id.as_deref());
    texts.extend(message_id);
    texts.extend(env.recipients.iter().map(String::as_str));
    texts.extend(env.original_recipients.iter().map(String::as_str));
    let texts: Vec<&str> = texts.into_iter().map(head).collect();
    let masks = Masks::collect(r.config, d, &texts);
    let text = |s: &str, max: usize| printable(&masks.apply(head(s)), max);
    let queue = env
        .queue_id
        .as_deref()
        .map_or("NOQUEUE".to_string(), |q| quoted(&text(q, 40)));
    let address =
        |a: Option<&String>| quoted(&format!("<{}>", a.map_or(String::new(), |a| text(a, 200))));
    let recipient = env.original_recipients.first().or(env.recipients.first());
    // Fixed words (route, kind, header names): printable, never masked.
    let word = |v: Option<&str>| v.map_or("-".to_string(), |s| quoted(&printable(s, 120)));
    format!(
        "{queue}: message-id={}, sender={}, recipient={}, size={}, route={}, kind={}, \
         key={}, found_in={}, outcome={}, reason={}, duration={:.1}ms",
        message_id.map_or("-".to_string(), |m| quoted(&text(m, 120))),
        address(env.sender.as_ref()),
        address(recipient),
        r.size,
        word(d.and_then(Decision::route).map(|r| r.as_str())),
        word(d.and_then(Decision::kind).map(|k| k.as_str())),
        d.and_then(Decision::key)
            .map_or("-".to_string(), |k| format!("fp:{}", k.fingerprint())),
        word(d.and_then(Decision::found_in).map(|f| f.as_str())),
        r.status.action(),
        always_quoted(&text(reason, 300)),
        r.duration.as_secs_f64() * 1000.0,
    )
}

/// Bytes of a field that are masked and shown. Enough that the widest
/// field (300 characters) cannot reach the cut even if every shown
/// character stood for masked text (a 255-byte key logged as a 9-character
/// mask); and a bound on the work a hostile header can cause.
const SCANNED: usize = 9 * 1024;

/// The first [`SCANNED`] bytes of `text`, cut at a character boundary.
fn head(text: &str) -> &str {
    let mut end = text.len().min(SCANNED);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// A value as it goes into the line: as it is when it cannot be mistaken
/// for more than one value (printable, no space, comma, quote or
/// backslash: the form of Postfix's own `from=<…>`), else in double quotes.
fn quoted(value: &str) -> String {
    let plain = !value.is_empty()
        && value
            .chars()
            .all(|c| c.is_ascii_graphic() && !matches!(c, '"' | '\\' | ','));
    if plain {
        value.to_string()
    } else {
        always_quoted(value)
    }
}

/// `"value"` with `\` and `"` escaped by a backslash. Controls cannot
/// occur: the value has been through [`printable`] first.
fn always_quoted(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            c if c.is_control() => out.push('?'),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The texts that are, or could be, a key, each with what to log instead.
///
/// `find_key` normalises what it reads (brackets, white space, the case of
/// the fixed parts, quoting in headers); masking only the form it matched
/// would leave the key readable in the other forms and fields. So
/// the key found, and every raw candidate any field shows (text after a
/// template's prefix, text before its `@domain`, the key of a GitLab
/// `reply-KEY@host` id), is replaced wherever it occurs in any field.
struct Masks {
    /// Longest first, so a key that contains another is masked whole.
    secrets: Vec<(String, String)>,
    /// Indexes into `secrets` by their first byte, in the same order.
    by_first_byte: Vec<Vec<usize>>,
}

/// Ends a raw key candidate: what no address local part (or key) carries
/// unquoted, in any form a field can show it.
fn ends_candidate(c: char) -> bool {
    c.is_whitespace() || c.is_control() || "@<>\",;()[]\\".contains(c)
}

impl Masks {
    fn collect(config: Option<&Config>, decision: Option<&Decision>, texts: &[&str]) -> Masks {
        let mut raw: Vec<String> = Vec::new();
        if let Some(key) = decision.and_then(Decision::key) {
            raw.push(key.as_str().to_string());
        }
        if let Some(config) = config {
            for text in texts {
                for route in &config.routes {
                    let Some((prefix, suffix)) = route
                        .template
                        .address
                        .split_once(crate::gitlab::address::PLACEHOLDER)
                    else {
                        continue;
                    };
                    raw.extend(after_prefix(text, prefix, suffix, None));
                    raw.extend(before_suffix(text, prefix, suffix));
                }
                let host = format!("@{}", config.gitlab_host);
                raw.extend(after_prefix(text, "reply-", "", Some(&host)));
                // A custom Service Desk reply address carries a reply key
                // too (`support+KEY@customer.example`).
                for custom in &config.custom_email.addresses {
                    if let Some((local, domain)) = custom.rsplit_once('@') {
                        let (prefix, suffix) = (format!("{local}+"), format!("@{domain}"));
                        raw.extend(after_prefix(text, &prefix, &suffix, None));
                    }
                }
            }
        }
        raw.retain(|k| !k.is_empty() && k != crate::gitlab::address::PLACEHOLDER);
        raw.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        raw.dedup();
        let secrets = raw
            .into_iter()
            .map(|k| {
                let mask = crate::gitlab::address::Key::new(&k).map_or_else(
                    || "[invalid]".to_string(),
                    |k| format!("[fp:{}]", k.fingerprint()),
                );
                (k, mask)
            })
            .collect::<Vec<_>>();
        let mut by_first_byte = vec![Vec::new(); 256];
        for (i, (k, _)) in secrets.iter().enumerate() {
            by_first_byte[usize::from(k.as_bytes()[0])].push(i);
        }
        Masks {
            secrets,
            by_first_byte,
        }
    }

    /// `text` with every secret replaced, in one pass (a mask is never
    /// searched again, so one key cannot reappear inside another's mask).
    fn apply(&self, text: &str) -> String {
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        'scan: while let Some(c) = rest.chars().next() {
            let starting_here = &self.by_first_byte[usize::from(rest.as_bytes()[0])];
            for (secret, mask) in starting_here.iter().map(|&i| &self.secrets[i]) {
                if let Some(after) = rest.strip_prefix(secret.as_str()) {
                    out.push_str(mask);
                    rest = after;
                    continue 'scan;
                }
            }
            out.push(c);
            rest = &rest[c.len_utf8()..];
        }
        out
    }
}

/// Byte offsets where `needle` occurs in `text`, ASCII case ignored.
fn find_all(text: &str, needle: &str) -> Vec<usize> {
    if needle.is_empty() || needle.len() > text.len() {
        return Vec::new();
    }
    let (t, n) = (text.as_bytes(), needle.as_bytes());
    (0..=t.len() - n.len())
        .filter(|&i| t[i..i + n.len()].eq_ignore_ascii_case(n))
        .collect()
}

/// The candidate after each `prefix` in `text`: up to [`ends_candidate`],
/// without the template's text between the key and the `@` (`suffix` up
/// to `@`). With `then`, only candidates that `then` follows (a host).
fn after_prefix(text: &str, prefix: &str, suffix: &str, then: Option<&str>) -> Vec<String> {
    let between = suffix.split('@').next().unwrap_or("");
    find_all(text, prefix)
        .into_iter()
        .filter_map(|at| {
            let rest = &text[at + prefix.len()..];
            let end = rest.find(ends_candidate).unwrap_or(rest.len());
            if let Some(then) = then {
                let next = rest[end..].get(..then.len())?;
                if !next.eq_ignore_ascii_case(then) {
                    return None;
                }
            }
            let run = &rest[..end];
            let cut = run.len().checked_sub(between.len())?;
            let key = match run.get(cut..) {
                Some(tail) if !between.is_empty() && tail.eq_ignore_ascii_case(between) => {
                    &run[..cut]
                }
                _ => run,
            };
            Some(key.to_string())
        })
        .collect()
}

/// The candidate before each `suffix` (`@domain`) in `text`, for templates
/// whose prefix is empty or was written with other characters around it.
fn before_suffix(text: &str, prefix: &str, suffix: &str) -> Vec<String> {
    find_all(text, suffix)
        .into_iter()
        .filter_map(|at| {
            let head = &text[..at];
            let start = head.rfind(ends_candidate).map_or(0, |i| {
                i + head[i..].chars().next().map_or(1, char::len_utf8)
            });
            let run = &head[start..];
            let p = run.get(..prefix.len())?;
            p.eq_ignore_ascii_case(prefix)
                .then(|| run[prefix.len()..].to_string())
        })
        .collect()
}

/// Sends the line to syslog.
pub fn send(r: &Record) {
    let line = format(r);
    let priority = match r.status {
        Status::Deferred(..) => libc::LOG_WARNING,
        _ => libc::LOG_INFO,
    };
    let Ok(c_line) = CString::new(line) else {
        return;
    };
    // SAFETY: static NUL-terminated ident (openlog keeps the pointer);
    // "%s" with a valid C string.
    unsafe {
        libc::openlog(
            c"mailpipe".as_ptr(),
            libc::LOG_PID | libc::LOG_NDELAY,
            libc::LOG_MAIL,
        );
        libc::syslog(priority, c"%s".as_ptr(), c_line.as_ptr());
        libc::closelog();
    }
}

/// Where syslog(3) sends its lines.
pub const SYSLOG_SOCKET: &str = "/dev/log";

/// True when a syslog daemon takes datagrams on [`SYSLOG_SOCKET`]: glibc's
/// syslog(3) drops the line silently otherwise (no daemon in a container,
/// a minimal host, or Postfix logging to its `maillog_file` alone).
pub fn syslog_reachable() -> bool {
    syslog_reachable_at(SYSLOG_SOCKET)
}

/// [`syslog_reachable`] for another socket path (`check` names it).
pub fn syslog_reachable_at(path: &str) -> bool {
    let Ok(c_path) = CString::new(path) else {
        return false;
    };
    let bytes = c_path.as_bytes_with_nul();
    // SAFETY: plain socket calls on a zeroed sockaddr_un whose path fits
    // (checked); the descriptor is closed on every path.
    unsafe {
        let mut addr: libc::sockaddr_un = std::mem::zeroed();
        if bytes.len() > addr.sun_path.len() {
            return false;
        }
        addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
        for (d, s) in addr.sun_path.iter_mut().zip(bytes) {
            *d = *s as libc::c_char;
        }
        let fd = libc::socket(libc::AF_UNIX, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return false;
        }
        let ok = libc::connect(
            fd,
            (&raw const addr).cast::<libc::sockaddr>(),
            std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t,
        ) == 0;
        libc::close(fd);
        ok
    }
}

/// Sends the line to syslog when a daemon listens; otherwise returns the
/// part of it Postfix does not log itself ([`for_postfix`]), so `deliver`
/// can hand it to Postfix on stdout: pipe(8) logs a successful command's
/// output after `status=sent`, wherever Postfix logs (syslog or its
/// `maillog_file`).
pub fn send_or_return(r: &Record) -> Option<String> {
    if syslog_reachable() {
        send(r);
        None
    } else {
        Some(for_postfix(r))
    }
}

/// The fields of [`format`]'s line that Postfix's own lines lack (queue id,
/// sender, recipient, Message-ID and size are in them already), most
/// useful first: pipe(8) keeps only the first 100 characters of a
/// successful command's output (`pipe_command.c`).
pub fn for_postfix(r: &Record) -> String {
    let d = r.decision;
    let field = |v: Option<&str>| v.map_or("-".to_string(), |s| printable(s, 40));
    format!(
        "route={} kind={} key={} found_in={} size={}",
        field(d.and_then(Decision::route).map(|r| r.as_str())),
        field(d.and_then(Decision::kind).map(|k| k.as_str())),
        d.and_then(Decision::key)
            .map_or("-".to_string(), |k| format!("fp:{}", k.fingerprint())),
        field(d.and_then(Decision::found_in).map(|f| f.as_str())),
        r.size,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decide::decide;
    use crate::status::Status;
    use std::path::Path;

    #[test]
    fn the_line_names_everything_but_the_key() {
        let config = Config::from_text(
            Path::new("t.toml"),
            "[incoming_email]\naddress = \"incoming+%{key}@in.example.com\"\n\
             [gitlab]\nhost = \"gitlab.example.com\"\n[spool]\ndir = \"/tmp\"\n",
        )
        .unwrap();
        let key = "59d8df8370b7e95c5a49fbf86aeb2c93";
        let envelope = Envelope {
            sender: Some("jake@example.com".into()),
            recipients: vec![format!("incoming+{key}@in.example.com")],
            original_recipients: vec![],
            queue_id: Some("4XYZ123".into()),
        };
        let head = b"Message-ID: <m1@example.com>\nTo: x@y\n\nsecret body text\n";
        let d = decide(&config, &envelope, head, true);
        let line = format(&Record {
            envelope: &envelope,
            decision: Some(&d),
            config: Some(&config),
            size: 42,
            status: &Status::Accepted,
            duration: Duration::from_micros(1500),
        });
        assert!(
            line.starts_with("4XYZ123: message-id=<m1@example.com>, sender=<jake@example.com>"),
            "{line}"
        );
        for part in [
            "size=42",
            "route=incoming_email",
            "kind=create_note",
            "found_in=envelope",
            "outcome=accept",
            "duration=1.5ms",
            "key=fp:",
        ] {
            assert!(line.contains(part), "{part} in {line}");
        }
        assert!(!line.contains(key), "the key never appears: {line}");
        assert!(!line.contains("secret body"), "{line}");
        assert!(line.contains("recipient=<incoming+[fp:"), "{line}");
    }

    const KEY: &str = "59d8df8370b7e95c5a49fbf86aeb2c93";

    fn config() -> Config {
        Config::from_text(
            Path::new("t.toml"),
            "[incoming_email]\naddress = \"incoming+%{key}@in.example.com\"\n\
             [service_desk_email]\naddress = \"contact-%{key}@sd.example.com\"\n\
             [gitlab]\nhost = \"gitlab.example.com\"\n[spool]\ndir = \"/tmp\"\n",
        )
        .unwrap()
    }

    fn envelope(sender: &str, recipient: &str) -> Envelope {
        Envelope {
            sender: Some(sender.into()),
            recipients: vec![recipient.into()],
            original_recipients: vec![],
            queue_id: Some("4XYZ123".into()),
        }
    }

    /// The line for this envelope and header section, as deliver logs it.
    fn line_for(envelope: &Envelope, head: &[u8]) -> String {
        let config = config();
        let d = decide(&config, envelope, head, true);
        format(&Record {
            envelope,
            decision: Some(&d),
            config: Some(&config),
            size: 1,
            status: d.status(),
            duration: Duration::ZERO,
        })
    }

    /// The line with this decision (for header values `decide` would not
    /// pass through unchanged).
    fn line_with(envelope: &Envelope, decision: &Decision) -> String {
        let config = config();
        format(&Record {
            envelope,
            decision: Some(decision),
            config: Some(&config),
            size: 1,
            status: &Status::Accepted,
            duration: Duration::ZERO,
        })
    }

    /// The fields of a line, read the way a log parser would: `QUEUE: `,
    /// then `name=value` separated by `, `, values bare or in quotes with
    /// backslash escapes.
    fn fields(line: &str) -> Vec<(String, String)> {
        let mut parts = Vec::new();
        let mut current = String::new();
        let (mut quoted, mut escaped) = (false, false);
        for c in line.chars() {
            if escaped {
                escaped = false;
                current.push(c);
                continue;
            }
            match c {
                '\\' if quoted => escaped = true,
                '"' => quoted = !quoted,
                ',' | ':' if !quoted && (c == ',' || parts.is_empty()) => {
                    parts.push(std::mem::take(&mut current));
                }
                _ => current.push(c),
            }
        }
        assert!(!quoted, "unbalanced quotes: {line}");
        parts.push(current);
        let mut out = vec![("queue".to_string(), parts.remove(0))];
        for p in parts {
            let p = p.trim_start();
            let (name, value) = p
                .split_once('=')
                .unwrap_or_else(|| panic!("{p:?} in {line}"));
            out.push((name.to_string(), value.to_string()));
        }
        out
    }

    const NAMES: [&str; 12] = [
        "queue",
        "message-id",
        "sender",
        "recipient",
        "size",
        "route",
        "kind",
        "key",
        "found_in",
        "outcome",
        "reason",
        "duration",
    ];

    fn assert_shape(line: &str) {
        let names: Vec<String> = fields(line).into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, NAMES, "{line}");
        assert!(
            line.chars().all(|c| c.is_ascii_graphic() || c == ' '),
            "printable ASCII only: {line:?}"
        );
    }

    fn field(line: &str, name: &str) -> String {
        fields(line)
            .into_iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v)
            .unwrap()
    }

    #[test]
    fn the_key_is_masked_however_the_recipient_is_written() {
        let fp = crate::gitlab::address::Key::new(KEY).unwrap().fingerprint();
        for recipient in [
            format!("<incoming+{KEY}@in.example.com>"),
            format!("incoming+{KEY}@in.example.com "),
            format!(" <incoming+{KEY}@in.example.com> "),
            format!("incoming+{KEY}@IN.Example.COM"),
            format!("INCOMING+{KEY}@in.example.com"),
            format!("\"incoming+{KEY}\"@in.example.com"),
            format!("incoming+{KEY}"),
            format!("contact-{KEY}@SD.example.com>"),
        ] {
            let env = envelope("jake@example.com", &recipient);
            let line = line_for(&env, b"Message-ID: <m1@example.com>\n\nbody\n");
            assert!(!line.contains(KEY), "{recipient:?}: {line}");
            assert!(
                line.contains(&format!("[fp:{fp}]")),
                "{recipient:?}: {line}"
            );
            assert_shape(&line);
        }
    }

    #[test]
    fn custom_service_desk_reply_keys_are_masked() {
        let config = Config::from_text(
            Path::new("t.toml"),
            "[incoming_email]\naddress = \"incoming+%{key}@in.example.com\"\n\
             [gitlab]\nhost = \"gitlab.example.com\"\n[spool]\ndir = \"/tmp\"\n\
             [service_desk_custom_email]\naddresses = [\"support@customer.example\"]\n",
        )
        .unwrap();
        for recipient in [
            format!("support+{KEY}@customer.example"),
            format!("<support+{KEY}@Customer.Example> "),
        ] {
            let env = envelope("jake@example.com", &recipient);
            let head = b"Message-ID: <m1@example.com>\n\nbody\n";
            let d = decide(&config, &env, head, true);
            let line = format(&Record {
                envelope: &env,
                decision: Some(&d),
                config: Some(&config),
                size: 1,
                status: &Status::Accepted,
                duration: Duration::from_micros(1),
            });
            assert!(!line.contains(KEY), "{recipient:?}: {line}");
        }
    }

    #[test]
    fn the_key_is_masked_in_every_field() {
        let recipient = format!("incoming+{KEY}@in.example.com");
        let other = "a1b2c3d4e5f60718293a4b5c6d7e8f90";
        let cases: Vec<(String, String)> = vec![
            // The key itself in the Message-ID, in the sender, in both.
            (
                "jake@example.com".into(),
                format!("<{KEY}@client.example.com>"),
            ),
            (format!("{KEY}@example.com"), "<m1@example.com>".into()),
            (
                recipient.clone(),
                format!("<incoming+{KEY}@in.example.com>"),
            ),
            // Other keys, in any template's form or GitLab's reply id.
            (
                "jake@example.com".into(),
                format!("<incoming+{other}@in.example.com>"),
            ),
            (
                "jake@example.com".into(),
                format!("<reply-{other}@GitLab.example.com>"),
            ),
            (
                format!("contact-{other}@sd.example.com"),
                "<m1@example.com>".into(),
            ),
        ];
        for (sender, message_id) in cases {
            let env = envelope(&sender, &recipient);
            let head = format!("Message-ID: {message_id}\n\nbody\n");
            let line = line_for(&env, head.as_bytes());
            assert!(!line.contains(KEY), "{sender} {message_id}: {line}");
            assert!(!line.contains(other), "{sender} {message_id}: {line}");
            assert_shape(&line);
        }
        // A key that is not valid is masked too, and the template in the
        // reason stays readable.
        let env = envelope("jake@example.com", "incoming+bad..key@in.example.com");
        let line = line_for(&env, b"Message-ID: <m@x>\n\nbody\n");
        assert!(line.contains("outcome=bounce"), "{line}");
        assert!(!line.contains("bad..key"), "{line}");
        assert!(line.contains("incoming+[invalid]@in.example.com"), "{line}");
        assert!(line.contains("incoming+<key>@in.example.com"), "{line}");
    }

    #[test]
    fn header_and_argv_text_cannot_forge_fields() {
        let recipient = format!("incoming+{KEY}@in.example.com");
        let env = envelope("jake@example.com", &recipient);
        let line = line_for(
            &env,
            b"Message-ID: <x>, sender=<root@localhost>, recipient=<postmaster@localhost>\n\nb\n",
        );
        assert_shape(&line);
        assert_eq!(
            field(&line, "message-id"),
            "<x>, sender=<root@localhost>, recipient=<postmaster@localhost>"
        );
        assert!(
            line.contains(r#"message-id="<x>, sender=<root@localhost>, recipient=<postmaster@localhost>", sender=<jake@example.com>"#),
            "{line}"
        );
        // Quotes and backslashes in a value are escaped, not closing it.
        let env = envelope(r#"a"b\"@x>, recipient=<root@localhost"#, &recipient);
        let line = line_for(&env, b"Message-ID: <q\"uote\\d@x>\n\nb\n");
        assert_shape(&line);
        assert_eq!(
            field(&line, "sender"),
            r#"<a"b\"@x>, recipient=<root@localhost>"#
        );
        assert_eq!(field(&line, "message-id"), r#"<q"uote\d@x>"#);
        assert!(field(&line, "recipient").contains("[fp:"), "{line}");
        // The queue id comes first: it cannot start the line's fields.
        let mut env = envelope("jake@example.com", &recipient);
        env.queue_id = Some("Q1: message-id=<forged>,".into());
        let line = line_for(&env, b"Message-ID: <m@x>\n\nb\n");
        assert!(
            line.starts_with("\"Q1: message-id=<forged>,\": message-id=<m@x>,"),
            "{line}"
        );
    }

    #[test]
    fn control_bidi_and_invalid_bytes_never_reach_the_log() {
        let recipient = format!("incoming+{KEY}@in.example.com");
        let hostile = "a\r\nFAKE: b\x1b[31mc\0d\x7fe\u{9b}f\u{202e}g\u{2066}h\th";
        let mut env = envelope(hostile, &recipient);
        env.queue_id = Some(hostile.into());
        let mut decision = decide(&config(), &env, b"Message-ID: <m@x>\n\nb\n", true);
        decision.message_id = Some(hostile.into());
        let line = line_with(&env, &decision);
        assert_shape(&line);
        assert_eq!(field(&line, "message-id"), "a  FAKE: b?[31mc?d?e?f?g?h h");
        assert_eq!(field(&line, "sender"), "<a  FAKE: b?[31mc?d?e?f?g?h h>");
        // Bytes that are not UTF-8 arrive converted lossily (cli.rs).
        let sender = String::from_utf8_lossy(b"j\xf6\xff@example.com").into_owned();
        let env = envelope(&sender, &recipient);
        let line = line_for(&env, b"Message-ID: <m@x>\n\nb\n");
        assert_shape(&line);
        assert_eq!(field(&line, "sender"), "<j??@example.com>");
    }

    #[test]
    fn masking_work_is_bounded_on_a_hostile_header() {
        let recipient = format!("incoming+{KEY}@in.example.com");
        let env = envelope("jake@example.com", &recipient);
        let mut id = String::from("<");
        for i in 0..20_000 {
            id.push_str(&format!("incoming+k{i}@in.example.com "));
        }
        let mut decision = decide(&config(), &env, b"Message-ID: <m@x>\n\nb\n", true);
        decision.message_id = Some(id);
        let started = std::time::Instant::now();
        let line = line_with(&env, &decision);
        assert_shape(&line);
        assert!(!line.contains("k1@"), "{line}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
    }
}
