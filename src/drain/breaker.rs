//! The drain's circuit breaker: when to stop posting to a route because
//! GitLab, not one message, is failing; and the small file through which
//! `mailpipe queue` learns that a route is held.
//!
//! Must not: hold a route for one failed message, let a failure from a
//! request already in flight lengthen a hold, or (the file part) follow a
//! link, open anything but a regular file, or read more than a few KiB.
//! Fails: the state machine never; the file part with an `io::Error` the
//! caller logs (a missing hold file only means "not held").
//!
//! The rule is Postfix qmgr's dead-destination rule (qmgr(8),
//! `default_destination_concurrency_failed_cohort_limit`): a destination
//! is dead only when a whole run of deliveries fails, not when one does.
//!
//! | Phase | Posting | Leaves on |
//! | --- | --- | --- |
//! | closed | every due message | `drain.hold_after_failures` GitLab-level failures in a row, no success in between; at once on a 401-like answer or a `Retry-After` |
//! | held (open) | nothing | the hold's end |
//! | half-open | one probe at a time | the probe's success (closed) or failure (held again, the next delay) |
//!
//! Any success closes the breaker, also one from a request that was in
//! flight when the hold began: GitLab is answering. A failure of such a
//! request while held is ignored (the hold has already been counted). The
//! hold's length follows the retry schedule of [`Policy`], one step per
//! failed probe, or a `Retry-After` (RFC 9110 §10.2.3) capped by
//! `retry_max_secs`.
//!
//! Time is a [`Duration`] since an origin the caller picks (the drain uses
//! its start), so every rule here is a table test.

use std::fs::File;
use std::io::{self, Read, Write};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::retry::Policy;
use crate::layout::{Dir, EntryError};

/// Why a request failed, as far as the route is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// A 5xx, 429, timeout, dropped connection, or a request presumed hung:
    /// counts towards `hold_after_failures`.
    Gitlab(String),
    /// The answer is about the route, not the message (401, 403, 404, a
    /// redirect): every other message would get it too. Holds at once.
    Route(String),
    /// 429/503 with `Retry-After`: GitLab said when to come back. Holds at
    /// once, for that long (capped).
    RetryAfter(String, Duration),
}

impl Failure {
    fn reason(&self) -> &str {
        match self {
            Failure::Gitlab(r) | Failure::Route(r) | Failure::RetryAfter(r, _) => r,
        }
    }
}

/// What the dispatcher may do with a due message of the route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Post it.
    Send,
    /// Post it as the one probe of a half-open route.
    Probe,
    /// Not now.
    Wait,
}

/// A change worth one log line (and an update of the hold file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The route is held from now until `until`.
    Held {
        until: Duration,
        reason: String,
        /// Failures in a row that led to it.
        failures: u32,
    },
    /// A probe failed (or a `Retry-After` came): still held, until `until`.
    Extended { until: Duration, reason: String },
    /// A success ended the hold that began at `since`.
    Released { since: Duration, probes: u32 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Closed,
    Open { until: Duration },
    HalfOpen { probing: bool },
}

/// One route's breaker.
#[derive(Debug, Clone)]
pub struct Breaker {
    threshold: u32,
    /// GitLab-level failures since the last success.
    consecutive: u32,
    /// Steps of the retry schedule used by this hold (1 = first delay).
    steps: u32,
    /// Probes that failed during this hold.
    probes: u32,
    since: Duration,
    phase: Phase,
}

impl Breaker {
    /// A closed breaker that holds after `threshold` failures in a row.
    pub fn new(threshold: u32) -> Breaker {
        Breaker {
            threshold: threshold.max(1),
            consecutive: 0,
            steps: 0,
            probes: 0,
            since: Duration::ZERO,
            phase: Phase::Closed,
        }
    }

    /// May a message of the route go out at `now`? A `Probe` answer
    /// reserves the probe: no other is admitted until it ends.
    pub fn admit(&mut self, now: Duration) -> Admit {
        match self.phase {
            Phase::Closed => Admit::Send,
            Phase::Open { until } if now < until => Admit::Wait,
            Phase::Open { .. } | Phase::HalfOpen { probing: false } => {
                self.phase = Phase::HalfOpen { probing: true };
                Admit::Probe
            }
            Phase::HalfOpen { probing: true } => Admit::Wait,
        }
    }

    /// True when nothing of the route would be admitted at `now` (the
    /// dispatcher does not even scan it).
    pub fn blocked(&self, now: Duration) -> bool {
        match self.phase {
            Phase::Closed | Phase::HalfOpen { probing: false } => false,
            Phase::Open { until } => now < until,
            Phase::HalfOpen { probing: true } => true,
        }
    }

    /// The end of the current hold, while held or probing.
    pub fn held_until(&self) -> Option<Duration> {
        match self.phase {
            Phase::Open { until } => Some(until),
            _ => None,
        }
    }

    /// True unless closed.
    pub fn is_held(&self) -> bool {
        self.phase != Phase::Closed
    }

    /// GitLab answered (delivered, or refused the message itself).
    pub fn success(&mut self) -> Option<Event> {
        self.consecutive = 0;
        if self.phase == Phase::Closed {
            return None;
        }
        let event = Event::Released {
            since: self.since,
            probes: self.probes,
        };
        self.phase = Phase::Closed;
        self.steps = 0;
        self.probes = 0;
        Some(event)
    }

    /// The probe ended without telling anything (the message was gone, not
    /// due, or a spool error): the next due message may probe.
    pub fn probe_void(&mut self) {
        if self.phase == (Phase::HalfOpen { probing: true }) {
            self.phase = Phase::HalfOpen { probing: false };
        }
    }

    /// A request failed at `now`; `probe` when it was the half-open probe.
    /// `unit` is a random number in `[0, 1)` for the jitter.
    pub fn failure(
        &mut self,
        now: Duration,
        probe: bool,
        failure: &Failure,
        policy: &Policy,
        unit: f64,
    ) -> Option<Event> {
        let reason = failure.reason().to_string();
        match self.phase {
            Phase::Closed => {
                self.consecutive = self.consecutive.saturating_add(1);
                let trips = match failure {
                    Failure::Gitlab(_) => self.consecutive >= self.threshold,
                    Failure::Route(_) | Failure::RetryAfter(..) => true,
                };
                if !trips {
                    return None;
                }
                self.steps = 1;
                self.probes = 0;
                self.since = now;
                let until = now + self.delay(failure, policy, unit);
                self.phase = Phase::Open { until };
                Some(Event::Held {
                    until,
                    reason,
                    failures: self.consecutive,
                })
            }
            Phase::HalfOpen { probing: true } if probe => {
                self.steps = self.steps.saturating_add(1);
                self.probes = self.probes.saturating_add(1);
                let until = now + self.delay(failure, policy, unit);
                self.phase = Phase::Open { until };
                Some(Event::Extended { until, reason })
            }
            Phase::Open { until } => match failure {
                // GitLab asked for a longer pause than the hold gives.
                Failure::RetryAfter(_, after) if now + policy.cap(*after) > until => {
                    let until = now + policy.cap(*after);
                    self.phase = Phase::Open { until };
                    Some(Event::Extended { until, reason })
                }
                // From a request sent before the hold: already counted.
                _ => None,
            },
            Phase::HalfOpen { .. } => None,
        }
    }

    fn delay(&self, failure: &Failure, policy: &Policy, unit: f64) -> Duration {
        match failure {
            Failure::RetryAfter(_, after) => policy.cap(*after),
            _ => policy.delay(self.steps, unit),
        }
    }
}

/// When a request in flight counts as hung: it frees its worker slot for
/// the other messages and counts as a failure, long before the request
/// timeout ends it. Ten times the smoothed time of GitLab's answers (RFC
/// 6298 §2's estimator, gain 1/8), at least [`Latency::FLOOR`], at most
/// the request timeout.
#[derive(Debug, Clone, Copy)]
pub struct Latency {
    smoothed: Option<Duration>,
    ceiling: Duration,
}

impl Latency {
    /// The least time before a request is presumed hung.
    pub const FLOOR: Duration = Duration::from_millis(250);
    /// Before any answer was timed.
    pub const FIRST: Duration = Duration::from_secs(2);
    const FACTOR: u32 = 10;

    pub fn new(request_timeout: Duration) -> Latency {
        Latency {
            smoothed: None,
            ceiling: request_timeout.max(Self::FLOOR),
        }
    }

    /// Takes in the time of one answer.
    pub fn observe(&mut self, took: Duration) {
        self.smoothed = Some(match self.smoothed {
            None => took,
            Some(s) => (s * 7 + took) / 8,
        });
    }

    /// How long a request may take before it is presumed hung.
    pub fn hung_after(&self) -> Duration {
        self.smoothed
            .map_or(Self::FIRST, |s| s.saturating_mul(Self::FACTOR))
            .clamp(Self::FLOOR, self.ceiling)
    }
}

/// Name of a route's hold file in its `state/` folder: a dot name, so the
/// sidecar listing skips it, and not ending in `.tmp`, so the stale
/// temporary sidecar sweep leaves it alone.
pub const HOLD_FILE: &str = ".route-hold.json";
/// A hold file is a few hundred bytes; a larger one is not ours.
const MAX_HOLD_BYTES: u64 = 4096;

/// What the drain tells `queue` about a held route.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HoldRecord {
    /// Seconds since the epoch when the hold (or the current probe wait)
    /// ends.
    pub until: u64,
    pub reason: String,
    /// The drain that holds it: a hold of a dead drain is not shown.
    pub pid: u32,
}

impl HoldRecord {
    /// True while `until` is ahead and the drain that wrote it lives.
    pub fn in_force(&self, now: u64) -> bool {
        // pid 0 would ask about our own process group.
        if self.until <= now || self.pid == 0 {
            return false;
        }
        let Ok(pid) = libc::pid_t::try_from(self.pid) else {
            return false;
        };
        // SAFETY: signal 0 only checks that the process exists.
        let rc = unsafe { libc::kill(pid, 0) };
        rc == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
    }
}

/// Replaces the hold file in `state/` (the folder the drain opened once,
/// see `crate::layout`) atomically: a new temporary file (O_EXCL,
/// O_NOFOLLOW), renamed over the old one. Not fsynced: it is a report, and
/// a crash ends the hold with the drain anyway.
///
/// # Errors
/// The file system's.
pub fn write_hold(state: &Dir, record: &HoldRecord) -> io::Result<()> {
    let tmp = format!(
        "{HOLD_FILE}.{}.{:016x}.tmp",
        std::process::id(),
        crate::random::u64()
    );
    let text = serde_json::to_vec(record).map_err(io::Error::other)?;
    let result = state
        .create_file(&tmp, crate::layout::STATE_MODE)
        .and_then(|mut file| file.write_all(&text))
        .and_then(|()| state.rename_over(&tmp, HOLD_FILE));
    if result.is_err() {
        let _ = state.unlink(&tmp);
    }
    result
}

/// Removes the hold file (gone already is fine).
///
/// # Errors
/// The file system's.
pub fn remove_hold(state: &Dir) -> io::Result<()> {
    state.unlink(HOLD_FILE)
}

/// Reads the hold file of `state/`: `None` when there is none. Opened
/// without following a link and without blocking (a FIFO put in its place
/// cannot stall `queue`), regular files only, size-capped, and never quoted
/// when it does not parse.
///
/// # Errors
/// The file system's, or `InvalidData` when it is not a hold file.
pub fn read_hold(state: &Dir) -> io::Result<Option<HoldRecord>> {
    let not_ours = || io::Error::new(io::ErrorKind::InvalidData, "not a hold file of the drain's");
    let file = match state.open_file(HOLD_FILE, Some(MAX_HOLD_BYTES)) {
        Ok((f, _)) => f,
        Err(EntryError::Missing) => return Ok(None),
        Err(EntryError::Io(e)) => return Err(e),
        Err(_) => return Err(not_ours()),
    };
    let mut text = Vec::new();
    Read::take(&file as &File, MAX_HOLD_BYTES).read_to_end(&mut text)?;
    serde_json::from_slice(&text)
        .map(Some)
        .map_err(|_| not_ours())
}

/// `HH:MM:SS` of `unix` seconds in the local time zone (UTC when it
/// cannot be told).
pub fn clock_time(unix: u64) -> String {
    let secs = libc::time_t::try_from(unix).unwrap_or(0);
    // SAFETY: localtime_r writes only into the zeroed struct we own.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    let ok = !unsafe { libc::localtime_r(&secs, &mut tm) }.is_null();
    if ok {
        format!("{:02}:{:02}:{:02}", tm.tm_hour, tm.tm_min, tm.tm_sec)
    } else {
        let day = unix % 86400;
        format!("{:02}:{:02}:{:02}", day / 3600, day % 3600 / 60, day % 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    const S: fn(u64) -> Duration = Duration::from_secs;

    fn policy() -> Policy {
        // 10s, doubling, capped at 60s.
        Policy::new(S(10), S(60), S(3600))
    }

    /// One step of a table: what happens, and what the breaker says after.
    #[derive(Debug, Clone)]
    enum Step {
        /// A request of the closed route fails at second `t`.
        Fail(u64),
        /// As `Fail`, but the answer is a route-level one (401).
        FailRoute(u64),
        /// 429/503 with Retry-After of `secs` at second `t`.
        FailAfter(u64, u64),
        /// A request that was in flight before the hold fails at `t`.
        LateFail(u64),
        Success,
        /// Asks to post at second `t`; wants this answer.
        Ask(u64, Admit),
        /// The admitted probe fails at `t`.
        ProbeFail(u64),
        ProbeVoid,
    }

    /// After each step: held until (None: not held, Some(None): half-open).
    fn run(threshold: u32, steps: &[(Step, Option<Option<u64>>)]) {
        let p = policy();
        let mut b = Breaker::new(threshold);
        for (i, (step, want)) in steps.iter().enumerate() {
            // Jitter 1.0: the full scheduled delay, easy to read.
            match step {
                Step::Fail(t) => {
                    b.failure(S(*t), false, &Failure::Gitlab("503".into()), &p, 1.0);
                }
                Step::FailRoute(t) => {
                    b.failure(S(*t), false, &Failure::Route("401".into()), &p, 1.0);
                }
                Step::FailAfter(t, a) => {
                    let f = Failure::RetryAfter("429".into(), S(*a));
                    b.failure(S(*t), false, &f, &p, 1.0);
                }
                Step::LateFail(t) => {
                    b.failure(S(*t), false, &Failure::Gitlab("503".into()), &p, 1.0);
                }
                Step::ProbeFail(t) => {
                    b.failure(S(*t), true, &Failure::Gitlab("503".into()), &p, 1.0);
                }
                Step::Success => {
                    b.success();
                }
                Step::ProbeVoid => b.probe_void(),
                Step::Ask(t, answer) => {
                    assert_eq!(b.admit(S(*t)), *answer, "step {i}: {step:?}");
                }
            }
            let got = if b.is_held() {
                Some(b.held_until().map(|d| d.as_secs()))
            } else {
                None
            };
            assert_eq!(got, *want, "step {i}: {step:?}");
        }
    }

    use Step::*;

    const CLOSED: Option<Option<u64>> = None;
    const PROBING: Option<Option<u64>> = Some(None);
    fn until(t: u64) -> Option<Option<u64>> {
        Some(Some(t))
    }

    #[test]
    fn sporadic_failures_never_hold() {
        run(
            3,
            &[
                (Fail(0), CLOSED),
                (Fail(1), CLOSED),
                (Success, CLOSED),
                (Fail(2), CLOSED),
                (Fail(3), CLOSED),
                (Success, CLOSED),
                (Ask(4, Admit::Send), CLOSED),
            ],
        );
    }

    #[test]
    fn n_failures_in_a_row_hold_for_the_first_delay() {
        run(
            3,
            &[
                (Fail(0), CLOSED),
                (Fail(1), CLOSED),
                (Fail(2), until(12)),
                (Ask(5, Admit::Wait), until(12)),
                // In flight before the hold: it does not lengthen it.
                (LateFail(6), until(12)),
                (Ask(11, Admit::Wait), until(12)),
            ],
        );
        run(1, &[(Fail(7), until(17))]);
    }

    #[test]
    fn half_open_admits_one_probe_per_delay_doubling_to_the_cap() {
        run(
            2,
            &[
                (Fail(0), CLOSED),
                (Fail(0), until(10)),
                (Ask(10, Admit::Probe), PROBING),
                (Ask(10, Admit::Wait), PROBING),
                (LateFail(10), PROBING),
                (ProbeFail(11), until(31)),
                (Ask(30, Admit::Wait), until(31)),
                (Ask(31, Admit::Probe), PROBING),
                (ProbeFail(31), until(71)),
                (Ask(71, Admit::Probe), PROBING),
                (ProbeFail(71), until(131)),
                (Ask(131, Admit::Probe), PROBING),
                (ProbeFail(131), until(191)), // capped at 60s
            ],
        );
    }

    #[test]
    fn the_first_success_releases_and_starts_the_count_again() {
        run(
            2,
            &[
                (Fail(0), CLOSED),
                (Fail(0), until(10)),
                (Ask(10, Admit::Probe), PROBING),
                (Success, CLOSED),
                (Ask(10, Admit::Send), CLOSED),
                (Fail(11), CLOSED),
                (Fail(12), until(22)), // the first delay again
                // A success of a request sent before the hold also releases.
                (Success, CLOSED),
            ],
        );
    }

    #[test]
    fn a_void_probe_lets_the_next_message_probe() {
        run(
            1,
            &[
                (Fail(0), until(10)),
                (Ask(10, Admit::Probe), PROBING),
                (ProbeVoid, PROBING),
                (Ask(10, Admit::Probe), PROBING),
                (Ask(10, Admit::Wait), PROBING),
            ],
        );
    }

    #[test]
    fn route_level_answers_hold_at_once() {
        run(
            5,
            &[
                (FailRoute(0), until(10)),
                (Ask(10, Admit::Probe), PROBING),
                (ProbeFail(10), until(30)),
            ],
        );
    }

    #[test]
    fn retry_after_holds_at_once_for_its_time_capped() {
        run(5, &[(FailAfter(0, 7), until(7))]);
        run(5, &[(FailAfter(0, 86400), until(60))]);
        // While held, a longer Retry-After lengthens the hold; a shorter
        // one does not shorten it.
        run(
            5,
            &[
                (FailAfter(0, 5), until(5)),
                (FailAfter(1, 20), until(21)),
                (FailAfter(2, 1), until(21)),
            ],
        );
    }

    #[test]
    fn events_say_what_changed_once() {
        let p = policy();
        let mut b = Breaker::new(2);
        let f = Failure::Gitlab("502".into());
        assert_eq!(b.failure(S(0), false, &f, &p, 0.0), None);
        assert_eq!(
            b.failure(S(1), false, &f, &p, 0.0),
            Some(Event::Held {
                until: S(6), // half the delay at jitter 0
                reason: "502".into(),
                failures: 2
            })
        );
        assert_eq!(b.failure(S(2), false, &f, &p, 0.0), None);
        assert!(b.blocked(S(5)));
        assert!(!b.blocked(S(6)));
        assert_eq!(b.admit(S(6)), Admit::Probe);
        assert!(b.blocked(S(6)));
        assert_eq!(
            b.failure(S(7), true, &f, &p, 0.0),
            Some(Event::Extended {
                until: S(17),
                reason: "502".into()
            })
        );
        assert_eq!(b.admit(S(17)), Admit::Probe);
        assert_eq!(
            b.success(),
            Some(Event::Released {
                since: S(1),
                probes: 1
            })
        );
        assert_eq!(b.success(), None);
    }

    #[test]
    fn a_request_is_hung_after_ten_answer_times_within_bounds() {
        let mut l = Latency::new(S(60));
        assert_eq!(l.hung_after(), Latency::FIRST);
        l.observe(Duration::from_millis(2));
        assert_eq!(l.hung_after(), Latency::FLOOR);
        for _ in 0..50 {
            l.observe(Duration::from_millis(200));
        }
        let h = l.hung_after();
        assert!(h > S(1) && h <= S(2), "{h:?}");
        for _ in 0..50 {
            l.observe(S(30));
        }
        assert_eq!(l.hung_after(), S(60));
        assert_eq!(Latency::new(S(1)).hung_after(), S(1));
    }

    #[test]
    fn hold_file_round_trips_and_refuses_what_is_not_ours() {
        let dir = std::env::temp_dir().join(format!(
            "mailpipe-breaker-{}-{:x}",
            std::process::id(),
            crate::random::u64()
        ));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.clone();
        let dir = Dir::open_root(&path).unwrap();
        assert_eq!(read_hold(&dir).unwrap(), None);
        let record = HoldRecord {
            until: 2_000_000_000,
            reason: "503".into(),
            pid: std::process::id(),
        };
        write_hold(&dir, &record).unwrap();
        assert_eq!(read_hold(&dir).unwrap(), Some(record.clone()));
        assert!(record.in_force(1_999_999_999));
        assert!(!record.in_force(2_000_000_000));
        let dead = HoldRecord {
            pid: u32::MAX - 1,
            ..record.clone()
        };
        assert!(!dead.in_force(0));
        remove_hold(&dir).unwrap();
        remove_hold(&dir).unwrap();
        assert_eq!(read_hold(&dir).unwrap(), None);

        // A link, a FIFO, a huge file: refused, never followed or waited on.
        std::os::unix::fs::symlink("/etc/passwd", path.join(HOLD_FILE)).unwrap();
        assert!(read_hold(&dir).is_err());
        fs::remove_file(path.join(HOLD_FILE)).unwrap();
        let fifo = std::ffi::CString::new(path.join(HOLD_FILE).to_str().unwrap()).unwrap();
        // SAFETY: a path we own.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        assert!(read_hold(&dir).is_err());
        fs::remove_file(path.join(HOLD_FILE)).unwrap();
        fs::write(path.join(HOLD_FILE), vec![b' '; 10_000]).unwrap();
        assert!(read_hold(&dir).is_err());
        fs::remove_dir_all(&path).unwrap();
    }

    #[test]
    fn clock_times_are_hh_mm_ss() {
        let t = clock_time(1_700_000_000);
        assert_eq!(t.len(), 8, "{t}");
        assert_eq!(&t[2..3], ":");
        assert_eq!(&t[5..6], ":");
    }
}
