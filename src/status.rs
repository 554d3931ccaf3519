//! Outcomes of every command and the only place that turns them into exit
//! codes: [`Status`] for `deliver` (the one-line report Postfix reads) and
//! [`AdminOutcome`] for the commands a person or a service manager runs
//! (`check`, `explain`, `queue`, `requeue`, `drain`).
//!
//! Must not: do I/O beyond writing that one line (or an admin command's
//! usage error on stderr), or know why a module failed beyond the outcome
//! it was handed.
//! Fails: never. A panic anywhere becomes `Deferred` through the hook
//! installed by [`install_panic_hook`], because Postfix bounces exit 101.
//!
//! Postfix's pipe(8) contract (`pipe_command.c`, `sys_exits.c`): exit 0 is
//! delivered, 71 and 75 defer, every other status bounces, and output that
//! starts with an RFC 3463 enhanced status code overrides the exit status.
//! So every line `deliver` prints starts with the code that matches its
//! exit, and nothing else is ever printed. The other commands never speak
//! that protocol: they exit like interactive tools (sysexits(3): 64 for a
//! usage error, its text on stderr; 1 for a failure or problems found).

use std::fmt;
use std::io::Write;

/// sysexits(3) values. The only numbers 64–78 in the crate.
const EX_OK: u8 = 0;
const EX_USAGE: u8 = 64;
const EX_DATAERR: u8 = 65;
const EX_NOUSER: u8 = 67;
const EX_SOFTWARE: u8 = 70;
const EX_TEMPFAIL: u8 = 75;
/// The conventional "it did not work" of an interactive tool (not a
/// sysexits value: `check` found errors, `drain --once` left mail deferred).
const EXIT_FAILURE: u8 = 1;

/// What happened to one message, as the MTA must learn it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    /// The message is durably in `new/`.
    Accepted,
    /// An auto-reply, dropped on purpose (RFC 3834: never answer one).
    Discarded(String),
    /// A final "no": Postfix returns the message to its sender.
    Rejected(Rejection, String),
    /// Anything not classified on purpose: Postfix keeps the message.
    Deferred(Deferral, String),
}

/// Why a message is refused for good.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// No key, an unsafe key, or one no GitLab handler accepts.
    UnknownKey,
    /// Larger than `limits.max_message_bytes`.
    TooLarge,
    /// Nothing that could be a header section.
    Empty,
}

/// Why a message is kept in the Postfix queue for a later try.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deferral {
    /// The configuration file is missing or invalid, or the command line is.
    Config,
    /// The spool is missing, unwritable or failed on I/O.
    Spool,
    /// The file system is full (ENOSPC, EDQUOT, EFBIG).
    DiskFull,
    /// Reading the message from stdin failed.
    Input,
    /// mailpipe's own deadline fired before Postfix's time limit would.
    Deadline,
    /// A bug: a panic, caught before it could exit 101.
    Internal,
}

impl Status {
    /// The sysexits code Postfix acts on.
    pub fn exit_code(&self) -> u8 {
        match self {
            Status::Accepted | Status::Discarded(_) => EX_OK,
            Status::Rejected(Rejection::UnknownKey, _) => EX_NOUSER,
            Status::Rejected(Rejection::TooLarge | Rejection::Empty, _) => EX_DATAERR,
            Status::Deferred(..) => EX_TEMPFAIL,
        }
    }

    /// RFC 3463 enhanced status code, matching [`Status::exit_code`].
    pub fn enhanced_code(&self) -> &'static str {
        match self {
            Status::Accepted | Status::Discarded(_) => "2.0.0",
            // 5.1.1: bad destination mailbox address.
            Status::Rejected(Rejection::UnknownKey, _) => "5.1.1",
            // 5.3.4: message too big for system.
            Status::Rejected(Rejection::TooLarge, _) => "5.3.4",
            // 5.6.0: other or undefined media error.
            Status::Rejected(Rejection::Empty, _) => "5.6.0",
            // 4.3.5: system incorrectly configured.
            Status::Deferred(Deferral::Config, _) => "4.3.5",
            // 4.3.1: mail system full.
            Status::Deferred(Deferral::DiskFull, _) => "4.3.1",
            // 4.4.7: delivery time expired.
            Status::Deferred(Deferral::Deadline, _) => "4.4.7",
            Status::Deferred(Deferral::Spool | Deferral::Input | Deferral::Internal, _) => "4.3.0",
        }
    }

    /// The word `explain` and the log use: accept, discard, bounce, defer.
    pub fn action(&self) -> &'static str {
        match self {
            Status::Accepted => "accept",
            Status::Discarded(_) => "discard",
            Status::Rejected(..) => "bounce",
            Status::Deferred(..) => "defer",
        }
    }

    /// The human part of the report.
    pub fn reason(&self) -> &str {
        match self {
            Status::Accepted => "spooled",
            Status::Discarded(why) | Status::Rejected(_, why) | Status::Deferred(_, why) => why,
        }
    }

    /// The line for Postfix, or `None` when we say nothing (spooled).
    ///
    /// Postfix copies this text into the bounce or defer notice, turning tabs
    /// and newlines into spaces and keeping only the first ~4 KB, so it is one
    /// short printable line.
    pub fn report_line(&self) -> Option<String> {
        match self {
            Status::Accepted => None,
            // Exit 0 with output: pipe(8) logs `status=sent (delivered via
            // <service> service (<this text>))`, so Postfix's own log tells
            // a dropped auto-reply from a delivery.
            _ => Some(format!(
                "{} mailpipe: {}",
                self.enhanced_code(),
                printable(self.reason(), 400)
            )),
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.action(), self.reason())
    }
}

/// The outcome of `deliver` when mailpipe's own deadline (`limits.deadline_secs`)
/// fires. The SIGALRM handler cannot format or allocate, so `deliver`
/// renders this once, before arming the alarm, with [`Status::report_line`],
/// and the handler writes those bytes and exits with [`DEADLINE_EXIT`].
pub fn deadline(secs: u64) -> Status {
    Status::Deferred(
        Deferral::Deadline,
        format!("deadline of {secs}s (limits.deadline_secs) exceeded; message deferred"),
    )
}

/// `deadline(..).exit_code()`, as a constant the signal handler can use.
pub const DEADLINE_EXIT: u8 = EX_TEMPFAIL;

/// What an admin command (`check`, `explain`, `queue`, `requeue`, `drain`,
/// and any command a person or systemd runs) ends with. It has already
/// printed its own report or errors; this is only the exit status.
/// A new command returns one of these and gets one match arm in `main.rs`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminOutcome {
    /// It did what was asked and found nothing wrong.
    Ok,
    /// It failed, or found problems (`check` errors, a deferred message
    /// after `drain --once`); the reasons are already on stdout/stderr.
    Failed,
    /// The command line is wrong: this text goes to stderr.
    Usage(String),
    /// A monitoring plugin's state (`mailpipe health`), the Nagios plugin
    /// convention: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN.
    Plugin(u8),
    /// A monitoring plugin's usage error: this text to stderr, UNKNOWN (3).
    PluginUsage(String),
}

/// The Nagios plugin guidelines' UNKNOWN.
const PLUGIN_UNKNOWN: u8 = 3;

impl AdminOutcome {
    /// `Ok` when `ok`, else `Failed`.
    pub fn from_success(ok: bool) -> AdminOutcome {
        if ok {
            AdminOutcome::Ok
        } else {
            AdminOutcome::Failed
        }
    }

    /// The exit status of an interactive tool.
    pub fn exit_code(&self) -> u8 {
        match self {
            AdminOutcome::Ok => EX_OK,
            AdminOutcome::Failed => EXIT_FAILURE,
            AdminOutcome::Usage(_) => EX_USAGE,
            AdminOutcome::Plugin(state) => (*state).min(PLUGIN_UNKNOWN),
            AdminOutcome::PluginUsage(_) => PLUGIN_UNKNOWN,
        }
    }
}

/// Writes a usage error to stderr (nothing for the other outcomes, which
/// reported themselves), ignoring a broken stderr.
pub fn report_admin(outcome: &AdminOutcome) {
    if let AdminOutcome::Usage(text) | AdminOutcome::PluginUsage(text) = outcome {
        let mut err = std::io::stderr().lock();
        let _ = err.write_all(text.as_bytes());
        if !text.ends_with('\n') {
            let _ = err.write_all(b"\n");
        }
        let _ = err.flush();
    }
}

/// Writes the report line to stdout, ignoring a broken stdout: the exit code
/// still carries the answer, and `println!` would panic (exit 101, a bounce).
pub fn report(status: &Status) {
    if let Some(line) = status.report_line() {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }
}

/// Keeps `text` to printable ASCII on one line, at most `max` bytes: the
/// one filter for every header-derived text or file name that reaches a
/// log or a terminal. Tabs and line breaks read as spaces; every other
/// control (C0, ESC, DEL, C1), every bidi override or isolate (U+202A–E,
/// U+2066–9) and anything else outside ASCII becomes `?`, so no escape
/// sequence, forged line or reordered text gets through.
pub fn printable(text: &str, max: usize) -> String {
    text.chars()
        .map(|c| match c {
            // Line breaks and tabs (a TOML error spans lines) read as spaces.
            '\n' | '\r' | '\t' => ' ',
            c if c.is_ascii_graphic() || c == ' ' => c,
            _ => '?',
        })
        .take(max)
        .collect()
}

/// Installs a panic hook that reports `4.3.0`, runs `cleanup` (which removes
/// a half-written spool file) and exits 75 at once, so no panic in any
/// thread can reach Rust's exit status 101, which Postfix would bounce.
pub fn install_panic_hook(cleanup: fn()) {
    std::panic::set_hook(Box::new(move |info| {
        cleanup();
        let location = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        let status = Status::Deferred(
            Deferral::Internal,
            format!("internal error{location}; message deferred"),
        );
        let line = status.report_line().unwrap_or_default() + "\n";
        // Raw write(2): the stdout lock may be held by the panicking code.
        write_raw(1, line.as_bytes());
        // SAFETY: _exit(2) is always safe to call; it skips destructors on
        // purpose because state may be inconsistent after a panic.
        unsafe { libc::_exit(i32::from(status.exit_code())) }
    }));
}

/// The panic hook of the admin commands: they do not answer Postfix, so a
/// bug is reported on stderr like any tool's and exits 70 (sysexits'
/// EX_SOFTWARE) at once, from any thread (the release build aborts on
/// panic; exiting first keeps that from dumping core).
pub fn install_admin_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let location = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        let line = format!("mailpipe: internal error{location} (a bug: please report it)");
        write_raw(2, format!("{}\n", printable(&line, 400)).as_bytes());
        // SAFETY: as in `install_panic_hook`.
        unsafe { libc::_exit(i32::from(EX_SOFTWARE)) }
    }));
}

/// Best-effort write(2) that never panics and never blocks on a lock.
pub fn write_raw(fd: i32, bytes: &[u8]) {
    // SAFETY: the pointer and length come from a valid slice.
    let _ = unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_report_starts_with_the_code_of_its_exit() {
        let all = [
            Status::Rejected(Rejection::UnknownKey, "x".into()),
            Status::Rejected(Rejection::TooLarge, "x".into()),
            Status::Rejected(Rejection::Empty, "x".into()),
            Status::Deferred(Deferral::Config, "x".into()),
            Status::Deferred(Deferral::Spool, "x".into()),
            Status::Deferred(Deferral::DiskFull, "x".into()),
            Status::Deferred(Deferral::Input, "x".into()),
            Status::Deferred(Deferral::Deadline, "x".into()),
            Status::Deferred(Deferral::Internal, "x".into()),
        ];
        for s in all {
            let line = s.report_line().unwrap();
            let class = if s.exit_code() == 75 { '4' } else { '5' };
            assert!(line.starts_with(class), "{line}");
        }
        assert_eq!(Status::Accepted.report_line(), None);
        assert_eq!(Status::Discarded("auto".into()).exit_code(), 0);
        assert_eq!(
            Status::Discarded("Auto-Submitted: auto-replied".into())
                .report_line()
                .as_deref(),
            Some("2.0.0 mailpipe: Auto-Submitted: auto-replied")
        );
    }

    #[test]
    fn the_deadline_defers_with_4_4_7() {
        let status = deadline(30);
        assert_eq!(status.exit_code(), 75);
        assert_eq!(status.exit_code(), DEADLINE_EXIT);
        assert_eq!(
            status.report_line().as_deref(),
            Some(
                "4.4.7 mailpipe: deadline of 30s (limits.deadline_secs) exceeded; message deferred"
            )
        );
    }

    #[test]
    fn admin_commands_exit_like_interactive_tools() {
        assert_eq!(AdminOutcome::Ok.exit_code(), 0);
        assert_eq!(AdminOutcome::Failed.exit_code(), 1);
        assert_eq!(AdminOutcome::Usage("x".into()).exit_code(), 64);
        assert_eq!(AdminOutcome::from_success(true), AdminOutcome::Ok);
        assert_eq!(AdminOutcome::from_success(false), AdminOutcome::Failed);
    }

    #[test]
    fn printable_keeps_one_line() {
        assert_eq!(printable("a\nb\tc\u{e9}\0", 10), "a b c??");
        assert_eq!(printable("abcdef", 3), "abc");
    }

    #[test]
    fn printable_lets_no_control_or_bidi_through() {
        // ESC (a terminal escape), CR, LF, other C0, DEL, C1 (CSI U+009B),
        // bidi overrides and isolates, U+FFFD from bytes that were not UTF-8.
        let hostile =
            "n\x1b[2Jm\r\nx\x07\x08\x7f\u{9b}1m\u{85}\u{202e}gpj.exe\u{2066}\u{2069}\u{fffd}";
        let shown = printable(hostile, 100);
        assert_eq!(shown, "n?[2Jm  x????1m??gpj.exe???");
        assert!(
            shown.bytes().all(|b| (b' '..=b'~').contains(&b)),
            "{shown:?}"
        );
        for c in (0u32..0x20).chain(0x7f..0xa0).chain([
            0x202a, 0x202b, 0x202c, 0x202d, 0x202e, 0x2066, 0x2067, 0x2068, 0x2069,
        ]) {
            let c = char::from_u32(c).unwrap();
            let out = printable(&c.to_string(), 4);
            assert!(out == "?" || out == " ", "{c:?} -> {out:?}");
        }
    }
}
