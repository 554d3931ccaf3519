//! The drain's retry arithmetic: how long a message (or a whole route)
//! waits after a failed attempt, and when a message is given up.
//!
//! Must not: do I/O, read clocks or draw random numbers; callers pass the
//! time and the randomness in, so every rule here is a table test.
//! Fails: never. Overflowing arithmetic saturates at the cap.
//!
//! The delay doubles per failure from `retry_initial_secs` up to
//! `retry_max_secs`, then "equal jitter" keeps half of it and draws the
//! other half at random: two drains (or a thousand messages that failed
//! together while GitLab was down) do not come back in lockstep, and no
//! delay is ever shorter than half the schedule.

use std::time::Duration;

use crate::config::DrainConfig;

/// The retry schedule, from `[drain]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    initial: Duration,
    max: Duration,
    give_up_after: Duration,
}

impl Policy {
    /// The schedule the configuration asks for.
    pub fn from_config(config: &DrainConfig) -> Policy {
        Policy::new(
            Duration::from_secs(config.retry_initial_secs),
            Duration::from_secs(config.retry_max_secs),
            Duration::from_secs(config.give_up_after_hours.saturating_mul(3600)),
        )
    }

    pub fn new(initial: Duration, max: Duration, give_up_after: Duration) -> Policy {
        Policy {
            initial,
            max,
            give_up_after,
        }
    }

    /// The wait after `failures` failed attempts in a row (1 = the first
    /// failure), before jitter: `initial * 2^(failures-1)`, capped.
    pub fn schedule(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(63);
        let factor = 1u64 << doublings;
        let secs = self.initial.as_secs().saturating_mul(factor);
        Duration::from_secs(secs).min(self.max)
    }

    /// The wait after `failures` failures with jitter applied: `unit` is a
    /// random number in `[0, 1)`; half the scheduled delay is kept, the
    /// other half scaled by `unit`.
    pub fn delay(&self, failures: u32, unit: f64) -> Duration {
        let full = self.schedule(failures);
        let unit = if unit.is_finite() {
            unit.clamp(0.0, 1.0)
        } else {
            0.0
        };
        let half = full / 2;
        half + (full - half).mul_f64(unit)
    }

    /// True when a message whose first failure was at `first_failure`
    /// (seconds since the epoch) has been failing for long enough to be
    /// moved to `failed/`.
    pub fn gives_up(&self, first_failure: u64, now: u64) -> bool {
        now.saturating_sub(first_failure) >= self.give_up_after.as_secs()
    }

    /// A wait GitLab asked for (`Retry-After`), capped by `retry_max_secs`.
    pub fn cap(&self, wait: Duration) -> Duration {
        wait.min(self.max)
    }

    /// `give_up_after_hours`, for messages.
    pub fn give_up_after(&self) -> Duration {
        self.give_up_after
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(initial: u64, max: u64, hours: u64) -> Policy {
        Policy::new(
            Duration::from_secs(initial),
            Duration::from_secs(max),
            Duration::from_secs(hours * 3600),
        )
    }

    #[test]
    fn schedule_doubles_then_caps() {
        let p = policy(30, 3600, 120);
        let table = [
            (0, 30),
            (1, 30),
            (2, 60),
            (3, 120),
            (7, 1920),
            (8, 3600),
            (200, 3600),
        ];
        for (failures, want) in table {
            assert_eq!(
                p.schedule(failures),
                Duration::from_secs(want),
                "failures {failures}"
            );
        }
    }

    #[test]
    fn jitter_keeps_at_least_half_and_never_exceeds_the_schedule() {
        let p = policy(30, 3600, 120);
        for failures in 1..20 {
            let full = p.schedule(failures);
            assert_eq!(p.delay(failures, 0.0), full / 2);
            assert_eq!(p.delay(failures, 1.0), full);
            let mid = p.delay(failures, 0.5);
            assert!(mid >= full / 2 && mid <= full, "{mid:?} {full:?}");
        }
        // Garbage randomness cannot make a delay longer than the cap.
        assert_eq!(p.delay(30, f64::NAN), Duration::from_secs(1800));
        assert_eq!(p.delay(30, 7.0), Duration::from_secs(3600));
    }

    #[test]
    fn zero_initial_retries_at_once_and_huge_values_saturate() {
        assert_eq!(policy(0, 3600, 1).delay(5, 0.9), Duration::ZERO);
        let p = policy(u64::MAX / 2, u64::MAX, 1);
        assert_eq!(p.schedule(64), Duration::from_secs(u64::MAX));
    }

    #[test]
    fn retry_after_is_capped_by_the_maximum() {
        let p = policy(30, 600, 1);
        assert_eq!(p.cap(Duration::from_secs(5)), Duration::from_secs(5));
        assert_eq!(p.cap(Duration::from_secs(86400)), Duration::from_secs(600));
    }

    #[test]
    fn gives_up_only_after_the_window() {
        let p = policy(30, 3600, 2);
        assert!(!p.gives_up(1000, 1000));
        assert!(!p.gives_up(1000, 1000 + 7199));
        assert!(p.gives_up(1000, 1000 + 7200));
        // A clock that went backwards does not give up.
        assert!(!p.gives_up(5000, 1000));
        assert!(policy(30, 3600, 0).gives_up(1000, 1000));
    }
}
