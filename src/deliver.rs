//! `mailpipe deliver` and `mailpipe explain`: read one message on stdin,
//! decide, and (deliver only) store it durably; one log line either way.
//!
//! Must not: hold any secret, talk to GitLab, or exit by itself: it returns
//! a `Status` and `main.rs` turns it into the exit code.
//! Fails: every failure is a `Status::Deferred` unless `decide` or the size
//! limit made it a final answer. A watchdog defers before Postfix's time
//! limit could kill us (which Postfix would turn into a bounce).

use std::io::Write;
use std::time::{Duration, Instant};

use crate::cli::EnvelopeArgs;
use crate::config::Config;
use crate::decide::{self, Decision};
use crate::headers;
use crate::log;
use crate::lookup::Envelope;
use crate::spool::{self, Maildir, SpoolError};
use crate::status::{Deferral, Rejection, Status, write_raw};

const STDIN: i32 = 0;
/// Bytes asked of stdin per read while looking for the end of the headers.
const HEAD_CHUNK: usize = 16 * 1024;
/// An mbox `From ` line longer than this is not one; keep it as content.
const MAX_FROM_LINE: usize = 1024;

/// Builds the envelope from the flags, or from local(8)'s environment
/// (SENDER, RECIPIENT, ORIGINAL_RECIPIENT) when no envelope flag is given,
/// as under aliases, `.forward` or procmail.
pub fn envelope(args: &EnvelopeArgs) -> Envelope {
    let flags_given =
        args.sender.is_some() || !args.recipient.is_empty() || !args.original_recipient.is_empty();
    if flags_given {
        return Envelope {
            sender: args.sender.clone(),
            recipients: args.recipient.clone(),
            original_recipients: args.original_recipient.clone(),
            queue_id: args.queue_id.clone(),
        };
    }
    let var = |name| std::env::var(name).ok();
    Envelope {
        sender: var("SENDER"),
        recipients: var("RECIPIENT")
            .into_iter()
            .filter(|r| !r.is_empty())
            .collect(),
        original_recipients: var("ORIGINAL_RECIPIENT")
            .into_iter()
            .filter(|r| !r.is_empty())
            .collect(),
        queue_id: args.queue_id.clone(),
    }
}

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
        // Only look at lines that were not complete before this read.
        // A message of only blank lines is "empty" (65): read on to see
        // whether anything but white space follows.
        let blank_so_far = bytes[start..].iter().all(u8::is_ascii_whitespace);
        if !blank_so_far && headers::section_end(&bytes[start + scanned..]).is_some() {
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

/// Starts the deadline: after `secs`, a watchdog thread removes the tmp
/// file, reports 4.4.7 and exits 75, whatever the main thread is blocked in.
///
/// A thread, not SIGALRM: a signal handler runs only once the blocked
/// system call returns, and a killable wait (an fsync on a hung NFS server)
/// is not interrupted by a non-fatal signal, while `_exit` from another
/// thread kills it. The thread costs tens of microseconds per delivery.
fn start_deadline(secs: u64) {
    let spawned = std::thread::Builder::new()
        .name("deadline".into())
        .stack_size(64 * 1024)
        .spawn(move || {
            std::thread::sleep(Duration::from_secs(secs));
            spool::abandon_in_flight();
            let line = format!(
                "4.4.7 mailpipe: deadline of {secs}s (limits.deadline_secs) exceeded; message \
                 deferred\n"
            );
            write_raw(1, line.as_bytes());
            // SAFETY: _exit skips destructors, which the blocked main
            // thread may be using.
            unsafe { libc::_exit(75) }
        });
    // Without a watchdog Postfix's own time limit still applies; a failed
    // spawn is not worth deferring every message for.
    drop(spawned);
}

/// Runs `mailpipe deliver`: the Status to exit with.
pub fn deliver(args: &EnvelopeArgs) -> Status {
    let started = Instant::now();
    let envelope = envelope(args);
    let config = match Config::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            let status = Status::Deferred(Deferral::Config, e.to_string());
            log_it(&envelope, None, None, 0, &status, started);
            return status;
        }
    };
    start_deadline(config.limits.deadline_secs);
    let head = match read_head(config.limits.header_bytes) {
        Ok(h) => h,
        Err(e) => {
            let status = Status::Deferred(Deferral::Input, format!("reading stdin: {e}"));
            log_it(&envelope, None, Some(&config), 0, &status, started);
            return status;
        }
    };
    let decision = decide::decide(&config, &envelope, head.message(), head.complete);
    let (status, size) = match &decision.status {
        Status::Accepted => store(&config, &envelope, &decision, &head),
        other => (other.clone(), head.message().len() as u64),
    };
    log_it(
        &envelope,
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
fn store(config: &Config, envelope: &Envelope, decision: &Decision, head: &Head) -> (Status, u64) {
    let Some(route) = decision.route else {
        return (
            Status::Deferred(Deferral::Internal, "accepted without a route".into()),
            0,
        );
    };
    let result = (|| {
        let maildir = Maildir::open(&config.spool.dir, route)?;
        let mut pending = maildir.create(envelope.queue_id.as_deref())?;
        let mut extra = 0u64;
        if let Some(line) = &decision.prepend {
            let eol: &[u8] = if head_is_crlf(head.message()) {
                b"\r\n"
            } else {
                b"\n"
            };
            pending.write_all(line.as_bytes())?;
            pending.write_all(eol)?;
            extra = pending.written();
        }
        let max = config.limits.max_message_bytes;
        let body = head.message();
        if body.len() as u64 > max {
            return Err(SpoolError::TooLarge(max));
        }
        pending.write_all(body)?;
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

/// True when the message's first line ends in CRLF.
fn head_is_crlf(message: &[u8]) -> bool {
    message
        .iter()
        .position(|&b| b == b'\n')
        .is_some_and(|i| i > 0 && message[i - 1] == b'\r')
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
/// written, one JSON object on stdout.
pub fn explain(args: &EnvelopeArgs) -> Status {
    let envelope = envelope(args);
    let (decision, status) = match Config::load(&args.config) {
        Err(e) => (None, Status::Deferred(Deferral::Config, e.to_string())),
        Ok(config) => match read_head(config.limits.header_bytes) {
            Err(e) => (
                None,
                Status::Deferred(Deferral::Input, format!("reading stdin: {e}")),
            ),
            Ok(head) => {
                let d = decide::decide(&config, &envelope, head.message(), head.complete);
                let status = match &d.status {
                    Status::Accepted => dry_run_store(&config, &head),
                    other => other.clone(),
                };
                (Some(d), status)
            }
        },
    };
    let json = match &decision {
        Some(d) => serde_json::to_string(&d.explain(&status)),
        None => serde_json::to_string(&decide::Explanation {
            action: status.action(),
            exit_code: status.exit_code(),
            route: None,
            key: None,
            found_in: None,
            kind: None,
            reason: status.reason().to_string(),
            prepend: None,
        }),
    };
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{}", json.unwrap_or_else(|_| "{}".into()));
    let _ = out.flush();
    status
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
    log::send(&log::Record {
        envelope,
        decision,
        config,
        size,
        status,
        duration: started.elapsed(),
    });
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
