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
        field(d.and_then(|d| d.route).map(|r| r.as_str())),
        field(d.and_then(|d| d.kind).map(|k| k.as_str())),
        d.and_then(|d| d.key.as_ref())
            .map_or("-".to_string(), |k| format!("fp:{}", k.fingerprint())),
        field(d.and_then(|d| d.found_in)),
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
}
