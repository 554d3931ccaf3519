//! One syslog line per message (facility mail, ident mailpipe), in the
//! key=value style of Postfix's own lines, so `grep QUEUEID /var/log/mail.log`
//! shows mailpipe's verdict next to Postfix's.
//!
//! Must not: log a whole key (it is a user's credential: only its kind and
//! fingerprint), any body text, or more than one line per message.
//! Fails: silently. Logging is best effort; it must never change an exit
//! code, and glibc's syslog(3) drops the line if no syslog daemon listens.

use std::ffi::CString;
use std::time::Duration;

use crate::config::Config;
use crate::decide::Decision;
use crate::lookup::Envelope;
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
pub fn format(r: &Record) -> String {
    let env = r.envelope;
    let d = r.decision;
    let queue = env
        .queue_id
        .as_deref()
        .map_or("NOQUEUE".to_string(), |q| printable(q, 40));
    let recipient = env
        .original_recipients
        .first()
        .or(env.recipients.first())
        .map_or(String::new(), |a| mask_key(r.config, a));
    let field = |v: Option<&str>| v.map_or("-".to_string(), |s| printable(s, 120));
    format!(
        "{queue}: message-id={}, sender=<{}>, recipient=<{}>, size={}, route={}, kind={}, \
         key={}, found_in={}, outcome={}, reason=\"{}\", duration={:.1}ms",
        field(d.and_then(|d| d.message_id.as_deref())),
        field(env.sender.as_deref()).trim_start_matches('-'),
        printable(&recipient, 200),
        r.size,
        field(d.and_then(|d| d.route).map(|r| r.as_str())),
        field(d.and_then(|d| d.kind).map(|k| k.as_str())),
        d.and_then(|d| d.key.as_ref())
            .map_or("-".to_string(), |k| format!("fp:{}", k.fingerprint())),
        field(d.and_then(|d| d.found_in)),
        r.status.action(),
        printable(r.status.reason(), 300).replace('"', "'"),
        r.duration.as_secs_f64() * 1000.0,
    )
}

/// Replaces the key in an address with its fingerprint.
fn mask_key(config: Option<&Config>, addr: &str) -> String {
    let Some(config) = config else {
        return addr.to_string();
    };
    for route in &config.routes {
        if let Some(raw) = route.template.raw_key_of(addr) {
            let fp = crate::address::Key::new(raw).map_or_else(
                || "invalid".to_string(),
                |k| format!("fp:{}", k.fingerprint()),
            );
            return addr.replacen(raw, &format!("[{fp}]"), 1);
        }
    }
    // A custom Service Desk reply address carries a reply key too (issue 14).
    if let Some(key) = crate::lookup::custom_reply_key(&config.custom_email.addresses, addr, false)
    {
        let fp = format!("[fp:{}]", key.fingerprint());
        return addr.replacen(key.as_str(), &fp, 1);
    }
    addr.to_string()
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

    #[test]
    fn custom_service_desk_reply_keys_are_masked() {
        let config = Config::from_text(
            Path::new("t.toml"),
            "[incoming_email]\naddress = \"incoming+%{key}@in.example.com\"\n\
             [gitlab]\nhost = \"gitlab.example.com\"\n[spool]\ndir = \"/tmp\"\n\
             [service_desk_custom_email]\naddresses = [\"support@customer.example\"]\n",
        )
        .unwrap();
        let key = "59d8df8370b7e95c5a49fbf86aeb2c93";
        let masked = mask_key(Some(&config), &format!("support+{key}@customer.example"));
        assert!(masked.starts_with("support+[fp:"), "{masked}");
        assert!(!masked.contains(key), "{masked}");
    }
}
