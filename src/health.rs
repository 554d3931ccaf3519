//! `mailpipe health`: one check for Nagios, Icinga, Zabbix and their kin,
//! with the monitoring-plugin conventions: exit 0 OK, 1 WARNING, 2
//! CRITICAL, 3 UNKNOWN, one status line, performance data after `|`.
//!
//! CRITICAL when mail is not reaching GitLab and will not by itself: a
//! route GitLab refuses (the last answer to a waiting message was 401 or
//! 403: wrong secret or mailbox disabled; the drain keeps such messages
//! and retries them forever), a spool without room for two maximal
//! messages or below the critical free share (deliver then defers every
//! message with 4.3.1), a missing spool, or the oldest waiting message
//! older than the critical age. WARNING: the oldest older than the warning
//! age, failed messages (GitLab refused them for good or the drain gave
//! up; `mailpipe queue` lists them), free space or inodes below the
//! warning share.
//!
//! Must not: change anything, read a secret, talk to GitLab, or read
//! message content: it sees the spool's names, locks and sidecars only
//! (`drain::snapshot`) and the file system's free counts.
//! Fails: UNKNOWN (3) when the configuration cannot be loaded or the spool
//! cannot be read (for instance: the monitoring user is not in the
//! spool's group), with the reason on the status line.

use std::ffi::CString;
use std::fmt::Write as _;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crate::config::Config;
use crate::drain::snapshot::{self, RouteCounts};
use crate::drain::store::StoreError;
use crate::drain::unix_now;
use crate::status::printable;

/// A plugin's state, in the order the monitoring plugins' `max_state`
/// combines them: CRITICAL beats WARNING beats UNKNOWN beats OK.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum State {
    Ok,
    Unknown,
    Warning,
    Critical,
}

impl State {
    /// The monitoring-plugin exit status.
    pub fn exit_code(self) -> u8 {
        match self {
            State::Ok => 0,
            State::Warning => 1,
            State::Critical => 2,
            State::Unknown => 3,
        }
    }

    fn word(self) -> &'static str {
        match self {
            State::Ok => "OK",
            State::Warning => "WARNING",
            State::Critical => "CRITICAL",
            State::Unknown => "UNKNOWN",
        }
    }
}

/// Thresholds, from the command line.
#[derive(Debug, Clone, Copy)]
pub struct Thresholds {
    pub warning_age_secs: u64,
    pub critical_age_secs: u64,
    pub warning_free_percent: u8,
    pub critical_free_percent: u8,
}

impl Thresholds {
    /// The thresholds, the critical ones never milder than the warnings.
    pub fn new(warning_age: u64, critical_age: u64, warning_free: u8, critical_free: u8) -> Self {
        Thresholds {
            warning_age_secs: warning_age,
            critical_age_secs: critical_age.max(warning_age),
            warning_free_percent: warning_free,
            critical_free_percent: critical_free.min(warning_free),
        }
    }
}

/// The result: the state, the line and the exit code.
#[derive(Debug, Clone)]
pub struct Report {
    pub state: State,
    pub line: String,
}

/// Free room on the spool's file system.
#[derive(Debug, Clone, Copy)]
struct Room {
    free_bytes: u64,
    total_bytes: u64,
    free_inodes: u64,
    total_inodes: u64,
}

impl Room {
    fn of(path: &Path) -> std::io::Result<Room> {
        let c = CString::new(path.as_os_str().as_bytes())
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
        // SAFETY: a valid C string and a zeroed out-parameter.
        let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
        if unsafe { libc::statvfs(c.as_ptr(), &mut s) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let unit = s.f_frsize as u64;
        Ok(Room {
            free_bytes: (s.f_bavail as u64).saturating_mul(unit),
            total_bytes: (s.f_blocks as u64).saturating_mul(unit),
            free_inodes: s.f_favail as u64,
            total_inodes: s.f_files as u64,
        })
    }

    fn percent(free: u64, total: u64) -> Option<u64> {
        (total > 0).then(|| free.saturating_mul(100) / total)
    }
}

/// `mailpipe health`: prints the line; the exit status.
pub fn command(config_path: &Path, thresholds: Thresholds) -> u8 {
    let report = match Config::load_all(config_path) {
        // Root never works on the spool as root (src/privilege.rs).
        Ok(config) => match crate::privilege::leave_root(&config.spool.dir) {
            // A spool that cannot be opened is nothing to work on: the
            // evaluation reports it (CRITICAL).
            Ok(()) | Err(crate::privilege::PrivilegeError::Root(..)) => {
                evaluate(&config, thresholds)
            }
            Err(e) => Report {
                state: State::Unknown,
                line: format!("MAILPIPE UNKNOWN - {}", printable(&e.to_string(), 400)),
            },
        },
        Err(all) => Report {
            state: State::Unknown,
            line: format!(
                "MAILPIPE UNKNOWN - {}",
                printable(
                    &all.iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join("; "),
                    400
                )
            ),
        },
    };
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{}", report.line);
    let _ = out.flush();
    report.state.exit_code()
}

/// Looks at the spool of `config`.
pub fn evaluate(config: &Config, t: Thresholds) -> Report {
    let mut problems: Vec<(State, String)> = Vec::new();
    let counts = match snapshot::scan(config) {
        Ok(c) => c,
        Err(StoreError::RootMissing { path, err }) => {
            return Report {
                state: State::Critical,
                line: format!(
                    "MAILPIPE CRITICAL - spool {} is not usable ({err}); deliver defers every \
                     message",
                    printable(&path.display().to_string(), 200)
                ),
            };
        }
        Err(e) => {
            return Report {
                state: State::Unknown,
                line: format!(
                    "MAILPIPE UNKNOWN - cannot read the spool: {} (hint: run as a member of \
                     the spool's group)",
                    printable(&e.to_string(), 300)
                ),
            };
        }
    };
    let now = unix_now();
    let oldest = counts
        .iter()
        .filter_map(|c| c.oldest_arrival)
        .min()
        .map(|t| now.saturating_sub(t));

    for c in &counts {
        if c.refused > 0 {
            problems.push((
                State::Critical,
                format!(
                    "{}: GitLab refuses the route ({} for {} message(s): {}; check its \
                     secret_file and that the mailbox is enabled in gitlab.yml)",
                    c.route,
                    c.refused_status.unwrap_or(401),
                    c.refused,
                    printable(c.refused_reason.as_deref().unwrap_or(""), 120)
                ),
            ));
        }
        if c.failed > 0 {
            problems.push((
                State::Warning,
                format!(
                    "{}: {} failed message(s) (mailpipe queue; mailpipe requeue)",
                    c.route, c.failed
                ),
            ));
        }
        if !c.configured {
            problems.push((
                State::Warning,
                format!(
                    "{}: {} message(s) on a route that is not configured",
                    c.route,
                    c.queued() + c.failed
                ),
            ));
        }
    }
    if let Some(age) = oldest {
        let state = if age > t.critical_age_secs {
            State::Critical
        } else if age > t.warning_age_secs {
            State::Warning
        } else {
            State::Ok
        };
        if state != State::Ok {
            problems.push((
                state,
                format!(
                    "oldest message waiting {} ({age}s)",
                    crate::drain::queue::age(age)
                ),
            ));
        }
    }

    let room = Room::of(&config.spool.dir);
    match &room {
        Ok(r) => {
            let two_messages = config.limits.max_message_bytes.saturating_mul(2);
            let bytes_pct = Room::percent(r.free_bytes, r.total_bytes);
            let inode_pct = Room::percent(r.free_inodes, r.total_inodes);
            if r.free_bytes < two_messages {
                problems.push((
                    State::Critical,
                    format!(
                        "spool full: {} bytes free, less than two messages of \
                         limits.max_message_bytes; deliver defers with 4.3.1",
                        r.free_bytes
                    ),
                ));
            } else if let Some(p) = bytes_pct.filter(|p| *p < u64::from(t.warning_free_percent)) {
                let state = if p < u64::from(t.critical_free_percent) {
                    State::Critical
                } else {
                    State::Warning
                };
                problems.push((state, format!("spool file system {p}% free")));
            }
            if r.total_inodes > 0 && r.free_inodes < 16 {
                problems.push((
                    State::Critical,
                    format!("spool full: {} inodes free", r.free_inodes),
                ));
            } else if let Some(p) = inode_pct.filter(|p| *p < u64::from(t.warning_free_percent)) {
                let state = if p < u64::from(t.critical_free_percent) {
                    State::Critical
                } else {
                    State::Warning
                };
                problems.push((state, format!("spool inodes {p}% free")));
            }
        }
        Err(e) => problems.push((
            State::Unknown,
            format!("cannot measure the spool's free space: {e}"),
        )),
    }

    problems.sort_by_key(|p| std::cmp::Reverse(p.0));
    let state = problems.first().map_or(State::Ok, |p| p.0);
    let queued: usize = counts.iter().map(RouteCounts::queued).sum();
    let summary = format!(
        "{queued} queued, oldest {}",
        oldest.map_or_else(|| "-".to_string(), crate::drain::queue::age)
    );
    let text = if problems.is_empty() {
        summary
    } else {
        let list: Vec<&str> = problems.iter().map(|p| p.1.as_str()).collect();
        format!("{}; {summary}", list.join("; "))
    };
    let mut perf = String::new();
    for c in &counts {
        for (what, n) in [
            ("queued", c.queued()),
            ("deferred", c.deferred),
            ("failed", c.failed),
            ("refused", c.refused),
        ] {
            let _ = write!(perf, "'{}_{what}'={n};;;0 ", c.route);
        }
    }
    let _ = write!(
        perf,
        "'oldest_age'={}s;{};{};0",
        oldest.unwrap_or(0),
        t.warning_age_secs,
        t.critical_age_secs
    );
    if let Ok(r) = room {
        if let Some(p) = Room::percent(r.free_bytes, r.total_bytes) {
            let _ = write!(
                perf,
                " 'spool_free'={p}%;{}:;{}:;0;100",
                t.warning_free_percent, t.critical_free_percent
            );
        }
        if let Some(p) = Room::percent(r.free_inodes, r.total_inodes) {
            let _ = write!(
                perf,
                " 'spool_inodes_free'={p}%;{}:;{}:;0;100",
                t.warning_free_percent, t.critical_free_percent
            );
        }
        let _ = write!(perf, " 'spool_free_bytes'={}B;;;0", r.free_bytes);
    }
    Report {
        state,
        line: format!(
            "MAILPIPE {} - {} | {perf}",
            state.word(),
            printable(&text, 900).replace('|', "/")
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_order_and_codes() {
        assert!(State::Critical > State::Warning && State::Warning > State::Unknown);
        assert_eq!(State::Ok.exit_code(), 0);
        assert_eq!(State::Warning.exit_code(), 1);
        assert_eq!(State::Critical.exit_code(), 2);
        assert_eq!(State::Unknown.exit_code(), 3);
    }
}
