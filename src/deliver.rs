//! `mailpipe deliver` and `mailpipe explain`: read one message on stdin,
//! decide, and (deliver only) store it durably; one log line either way.
//!
//! Must not: hold any secret, talk to GitLab, or exit by itself: it returns
//! a `Status` and `main.rs` turns it into the exit code.
//! Fails: every failure is a `Status::Deferred` unless `decide` or the size
//! limit made it a final answer. A deadline (SIGALRM, then SIGKILL) defers before Postfix's time
//! limit could kill us (which Postfix would turn into a bounce).

use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};
use std::time::Instant;

use crate::config::Config;
use crate::decide::{self, Decision, Spooled, Verdict};
use crate::gitlab::lookup::Envelope;
use crate::headers;
use crate::log;
use crate::spool::{self, Maildir, SpoolError};
use crate::status::{self, AdminOutcome, Deferral, Rejection, Status, write_raw};

const STDIN: i32 = 0;
/// Bytes asked of stdin per read while looking for the end of the headers.
const HEAD_CHUNK: usize = 16 * 1024;
/// An mbox `From ` line longer than this is not one; keep it as content.
const MAX_FROM_LINE: usize = 1024;

/// The start of the message as read for the decision.
struct Head {
    bytes: Vec<u8>,
    /// Length of a leading mbox `From ` line, which is not stored.
    from_line: usize,
    /// True when stdin ended within `bytes`.
    complete: bool,
}

impl Head {
    fn message(&self) -> &[u8] {
        &self.bytes[self.from_line..]
    }
}

/// Reads until the header section ends, the header cap is reached, or
/// stdin ends; never more than `cap` bytes (plus one read) in memory.
fn read_head(cap: usize) -> Result<Head, std::io::Error> {
    let mut bytes = Vec::with_capacity(HEAD_CHUNK.min(cap + MAX_FROM_LINE));
    let mut scanned = 0; // start of the first line not yet checked
    let mut from_line = None;
    loop {
        let old = bytes.len();
        bytes.resize(old + HEAD_CHUNK, 0);
        let n = spool::read_some(STDIN, &mut bytes[old..])?;
        bytes.truncate(old + n);
        if n == 0 {
            return Ok(Head {
                from_line: from_line.unwrap_or(0),
                bytes,
                complete: true,
            });
        }
        if from_line.is_none() {
            match mbox_from_line(&bytes) {
                Some(len) => from_line = Some(len),
                None => continue,
            }
        }
        let start = from_line.unwrap_or(0);
        // Only look at lines that were not complete before this read, and
        // not at leading blank lines (skipped, as GitLab's mail library
        // skips them). A message of only blank lines is "empty" (65): read
        // on to see whether anything but white space follows.
        let blank_so_far = bytes[start..].iter().all(u8::is_ascii_whitespace);
        let from = scanned.max(headers::leading_blank(&bytes[start..]));
        if !blank_so_far && headers::section_end(&bytes[start + from..]).is_some() {
            return Ok(Head {
                from_line: start,
                bytes,
                complete: false,
            });
        }
        scanned = bytes[start..]
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |i| i + 1);
        if bytes.len() - start >= cap {
            return Ok(Head {
                from_line: start,
                bytes,
                complete: false,
            });
        }
    }
}

/// Length of a leading mbox `From ` line (local(8) and `flags=F` add one),
/// once its end is in `bytes`.
fn mbox_from_line(bytes: &[u8]) -> Option<usize> {
    if !bytes.starts_with(b"From ") {
        return (bytes.len() >= 5 || !b"From ".starts_with(bytes)).then_some(0);
    }
    let end = bytes.iter().take(MAX_FROM_LINE).position(|&b| b == b'\n');
    match end {
        Some(i) => Some(i + 1),
        None if bytes.len() >= MAX_FROM_LINE => Some(0),
        None => None,
    }
}

/// Seconds between mailpipe's own deadline and the SIGKILL fallback.
const KILL_GRACE_SECS: u64 = 2;

/// The deadline's report line, rendered by `status.rs` (`status::deadline`)
/// before the alarm can fire: a signal handler may not allocate or format.
/// Its exit code is `status::DEADLINE_EXIT`.
static DEADLINE_LINE: AtomicPtr<u8> = AtomicPtr::new(std::ptr::null_mut());
static DEADLINE_LEN: AtomicUsize = AtomicUsize::new(0);

extern "C" fn on_deadline(_signal: libc::c_int) {
    spool::abandon_in_flight();
    let (ptr, len) = (
        DEADLINE_LINE.load(Ordering::SeqCst),
        DEADLINE_LEN.load(Ordering::SeqCst),
    );
    if !ptr.is_null() {
        // SAFETY: a leaked, never-freed buffer of `len` bytes.
        write_raw(1, unsafe { std::slice::from_raw_parts(ptr, len) });
    }
    // SAFETY: _exit is async-signal-safe.
    unsafe { libc::_exit(i32::from(status::DEADLINE_EXIT)) }
}

/// Starts the deadline. After `secs`, SIGALRM's handler removes the tmp
/// file, reports `status::deadline` (4.4.7, exit 75); it runs as soon as the blocked system
/// call returns (a read from a stalled pipe returns at once). A killable
/// wait, such as an fsync on a hung NFS server, is not interrupted by a
/// handled signal, so a POSIX timer sends SIGKILL `KILL_GRACE_SECS` later:
/// death by a signal makes Postfix defer too, well before its own time
/// limit would kill us and bounce. Signals, not a watchdog thread: a thread
/// costs more than the rest of a small delivery behind Postfix.
fn start_deadline(secs: u64) {
    let status = status::deadline(secs);
    let line = status.report_line().unwrap_or_default() + "\n";
    let leaked: &'static mut [u8] = Box::leak(line.into_bytes().into_boxed_slice());
    DEADLINE_LEN.store(leaked.len(), Ordering::SeqCst);
    DEADLINE_LINE.store(leaked.as_mut_ptr(), Ordering::SeqCst);
    let to_time = |s: u64| libc::time_t::try_from(s).unwrap_or(libc::time_t::MAX);
    // SAFETY: a handler that only makes async-signal-safe calls, and a
    // timer whose id we keep for the life of the process.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_deadline as extern "C" fn(libc::c_int) as libc::sighandler_t;
        libc::sigemptyset(&mut action.sa_mask);
        libc::sigaction(libc::SIGALRM, &action, std::ptr::null_mut());
        libc::alarm(u32::try_from(secs).unwrap_or(u32::MAX));

        let mut event: libc::sigevent = std::mem::zeroed();
        event.sigev_notify = libc::SIGEV_SIGNAL;
        event.sigev_signo = libc::SIGKILL;
        let mut timer: libc::timer_t = std::mem::zeroed();
        if libc::timer_create(libc::CLOCK_MONOTONIC, &mut event, &mut timer) == 0 {
            let mut when: libc::itimerspec = std::mem::zeroed();
            when.it_value.tv_sec = to_time(secs.saturating_add(KILL_GRACE_SECS));
            libc::timer_settime(timer, 0, &when, std::ptr::null_mut());
        }
    }
}

/// Runs `mailpipe deliver`: the Status to exit with.
pub fn deliver(config_path: &Path, envelope: &Envelope) -> Status {
    let started = Instant::now();
    let config = match Config::load(config_path) {
        Ok(c) => c,
        Err(e) => {
            let status = Status::Deferred(Deferral::Config, e.to_string());
            log_it(envelope, None, None, 0, &status, started);
            return status;
        }
    };
    start_deadline(config.limits.deadline_secs);
    let head = match read_head(config.limits.header_bytes) {
        Ok(h) => h,
        Err(e) => {
            let status = Status::Deferred(Deferral::Input, format!("reading stdin: {e}"));
            log_it(envelope, None, Some(&config), 0, &status, started);
            return status;
        }
    };
    let decision = decide::decide(&config, envelope, head.message(), head.complete);
    let (status, size) = match &decision.verdict {
        Verdict::Store(spooled) => store(&config, envelope, spooled, &head),
        Verdict::Refuse(r) => (r.status.clone(), head.message().len() as u64),
    };
    log_it(
        envelope,
        Some(&decision),
        Some(&config),
        size,
        &status,
        started,
    );
    status
}

/// Writes the message into its route's Maildir; the final Status and the
/// number of bytes stored.
fn store(config: &Config, envelope: &Envelope, decision: &Spooled, head: &Head) -> (Status, u64) {
    let result = (|| {
        let maildir = Maildir::open(&config.spool.dir, decision.route)?;
        let mut pending = maildir.create(envelope.queue_id.as_deref())?;
        let mut extra = 0u64;
        let max = config.limits.max_message_bytes;
        let body = head.message();
        if body.len() as u64 > max {
            return Err(SpoolError::TooLarge(max));
        }
        // The line goes after any leading white space (which GitLab's mail
        // library skips), so it stays inside the header section.
        let at = if decision.prepend.is_some() {
            decision.prepend_at.min(body.len())
        } else {
            0
        };
        pending.write_all(&body[..at])?;
        if let Some(line) = &decision.prepend {
            let eol: &[u8] = if decision.crlf { b"\r\n" } else { b"\n" };
            pending.write_all(line.as_bytes())?;
            pending.write_all(eol)?;
            extra = (line.len() + eol.len()) as u64;
        }
        pending.write_all(&body[at..])?;
        if !head.complete {
            pending.copy_from(STDIN, max + extra)?;
        }
        let size = pending.written();
        pending.commit()?;
        Ok(size)
    })();
    match result {
        Ok(size) => (Status::Accepted, size),
        Err(e) => (spool_status(&e), 0),
    }
}

/// Maps a spool failure to what Postfix must do.
fn spool_status(e: &SpoolError) -> Status {
    match e {
        SpoolError::TooLarge(_) => Status::Rejected(Rejection::TooLarge, e.to_string()),
        SpoolError::Input(_) => Status::Deferred(Deferral::Input, e.to_string()),
        _ if e.is_disk_full() => Status::Deferred(Deferral::DiskFull, e.to_string()),
        _ => Status::Deferred(Deferral::Spool, e.to_string()),
    }
}

/// Runs `mailpipe explain`: the same decision as `deliver`, nothing
/// written, one JSON object on stdout. It always succeeds (the JSON's
/// `exit_code` is what `deliver` would answer).
pub fn explain(config_path: &Path, envelope: &Envelope) -> AdminOutcome {
    let config = Config::load(config_path);
    let (decision, status) = match &config {
        Err(e) => (None, Status::Deferred(Deferral::Config, e.to_string())),
        Ok(config) => match read_head(config.limits.header_bytes) {
            Err(e) => (
                None,
                Status::Deferred(Deferral::Input, format!("reading stdin: {e}")),
            ),
            Ok(head) => {
                let d = decide::decide(config, envelope, head.message(), head.complete);
                let status = match d.status() {
                    Status::Accepted => dry_run_store(config, &head),
                    other => other.clone(),
                };
                (Some(d), status)
            }
        },
    };
    let decision = decision.unwrap_or_else(|| Decision::refuse(status.clone()));
    let mut explanation = decision.explain(&status);
    explanation.policy = config.ok().and_then(|c| policy_answer(&c, envelope));
    let json = serde_json::to_string(&explanation);
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{}", json.unwrap_or_else(|_| "{}".into()));
    let _ = out.flush();
    AdminOutcome::Ok
}

/// What the policy service would answer at RCPT TO for this envelope's
/// recipient: the same function it runs, without spending a rate token.
/// `None` without a recipient (or, at the caller, without a usable
/// config: the policy then says DUNNO, but there is nothing to show).
fn policy_answer(config: &Config, envelope: &Envelope) -> Option<String> {
    let recipient = envelope
        .original_recipients
        .first()
        .or(envelope.recipients.first())?;
    let sender = envelope.sender.as_deref().unwrap_or("");
    let answer =
        crate::policy::answer::for_recipient(config, sender, recipient, None, None, Instant::now());
    Some(answer.action)
}

/// What storing would say, without writing: the size limit (counting the
/// rest of stdin) and whether the spool root is there.
fn dry_run_store(config: &Config, head: &Head) -> Status {
    let max = config.limits.max_message_bytes;
    let mut total = head.message().len() as u64;
    if !head.complete {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match spool::read_some(STDIN, &mut buf) {
                Ok(0) => break,
                Ok(n) => total += n as u64,
                Err(e) => return Status::Deferred(Deferral::Input, format!("reading stdin: {e}")),
            }
        }
    }
    if total > max {
        return spool_status(&SpoolError::TooLarge(max));
    }
    if !config.spool.dir.is_dir() {
        let err = std::io::Error::from(std::io::ErrorKind::NotFound);
        return spool_status(&SpoolError::RootMissing(config.spool.dir.clone(), err));
    }
    Status::Accepted
}

fn log_it(
    envelope: &Envelope,
    decision: Option<&Decision>,
    config: Option<&Config>,
    size: u64,
    status: &Status,
    started: Instant,
) {
    let unsent = log::send_or_return(&log::Record {
        envelope,
        decision,
        config,
        size,
        status,
        duration: started.elapsed(),
    });
    // No syslog daemon: the line would be lost. A spooled message prints
    // nothing else, so its line goes to Postfix instead, which logs it
    // after `status=sent (delivered via … service (…))`. Other outcomes
    // already print their one line (status::report), which Postfix logs.
    if let Some(line) = unsent
        && *status == Status::Accepted
    {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{} mailpipe: {}", status.enhanced_code(), line);
        let _ = out.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_lines() {
        assert_eq!(mbox_from_line(b"From a@b Mon\nTo: x\n"), Some(13));
        assert_eq!(mbox_from_line(b"To: x\n"), Some(0));
        assert_eq!(mbox_from_line(b"Fro"), None);
        assert_eq!(mbox_from_line(b"From a@b"), None);
        assert_eq!(mbox_from_line(b"Fr\n"), Some(0));
    }
}
