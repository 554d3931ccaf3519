//! Token buckets per (envelope sender, key) and per key, in the memory of the
//! one `mailpipe policy` process that every smtpd connection talks to: that
//! process is the place the state is shared (see postfix/README.md, "Why a
//! daemon"). A restart forgets it, which only lifts limits early.
//!
//! Must not: keep sender or key text (buckets are found by a keyed 64-bit
//! hash), or grow past `policy.max_tracked` buckets per table.
//! Fails: open. When a table is full of buckets still in use, a new pair is
//! not limited (and [`Limiter::allow`] says so once, through its result).

use std::collections::HashMap;
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::Mutex;
use std::time::Instant;

use crate::config::PolicyConfig;

/// Which bucket ran dry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limited {
    /// This sender sent too much to this key.
    SenderKey,
    /// This key got too much from all senders together.
    Key,
}

/// What [`Limiter::allow`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Allowed,
    Limited(Limited),
    /// The tables are full: not limited, and worth one log line.
    Untracked,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    /// Tokens now, after the refill since the last look.
    fn level(&self, burst: u32, per_hour: u32, now: Instant) -> f64 {
        let secs = now.saturating_duration_since(self.at).as_secs_f64();
        (self.tokens + secs * f64::from(per_hour) / 3600.0).min(f64::from(burst))
    }
}

struct Table {
    buckets: HashMap<u64, Bucket>,
}

impl Table {
    /// The bucket's level, or `None` when the table has no room for it.
    fn level(
        &mut self,
        id: u64,
        burst: u32,
        per_hour: u32,
        max: usize,
        now: Instant,
    ) -> Option<f64> {
        if let Some(b) = self.buckets.get(&id) {
            return Some(b.level(burst, per_hour, now));
        }
        if self.buckets.len() >= max {
            // A full bucket is the same as none: forget those first.
            self.buckets
                .retain(|_, b| b.level(burst, per_hour, now) < f64::from(burst));
            if self.buckets.len() >= max {
                return None;
            }
        }
        Some(f64::from(burst))
    }

    fn set(&mut self, id: u64, tokens: f64, now: Instant) {
        self.buckets.insert(id, Bucket { tokens, at: now });
    }
}

/// Both tables, behind one lock: one request touches both.
pub struct Limiter {
    hasher: RandomState,
    tables: Mutex<(Table, Table)>,
}

impl Default for Limiter {
    fn default() -> Self {
        Limiter::new()
    }
}

impl Limiter {
    pub fn new() -> Limiter {
        Limiter {
            hasher: RandomState::new(),
            tables: Mutex::new((
                Table {
                    buckets: HashMap::new(),
                },
                Table {
                    buckets: HashMap::new(),
                },
            )),
        }
    }

    /// Takes one token from the (sender, key) bucket and one from the key's
    /// bucket, or none when either is empty. `sender` is compared without
    /// ASCII case (RFC 5321 §2.4 lets the local part be case-sensitive, but
    /// a loop does not change case); `key` with case, as GitLab does.
    pub fn allow(&self, rates: &PolicyConfig, sender: &str, key: &str, now: Instant) -> Outcome {
        let pair_id = self
            .hasher
            .hash_one((sender.to_ascii_lowercase().as_str(), key));
        let key_id = self.hasher.hash_one(key);
        // A poisoned lock only means another thread panicked between two
        // plain assignments; the numbers are still numbers.
        let mut guard = self.tables.lock().unwrap_or_else(|e| e.into_inner());
        let (pairs, keys) = &mut *guard;
        let max = rates.max_tracked;
        let Some(pair) = pairs.level(
            pair_id,
            rates.sender_key_burst,
            rates.sender_key_per_hour,
            max,
            now,
        ) else {
            return Outcome::Untracked;
        };
        let Some(all) = keys.level(key_id, rates.key_burst, rates.key_per_hour, max, now) else {
            return Outcome::Untracked;
        };
        if pair < 1.0 {
            return Outcome::Limited(Limited::SenderKey);
        }
        if all < 1.0 {
            return Outcome::Limited(Limited::Key);
        }
        pairs.set(pair_id, pair - 1.0, now);
        keys.set(key_id, all - 1.0, now);
        Outcome::Allowed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn rates(burst: u32, per_hour: u32, key_burst: u32) -> PolicyConfig {
        PolicyConfig {
            sender_key_burst: burst,
            sender_key_per_hour: per_hour,
            key_burst,
            key_per_hour: per_hour,
            max_tracked: 1000,
            ..PolicyConfig::default()
        }
    }

    #[test]
    fn burst_then_refill() {
        let l = Limiter::new();
        let r = rates(3, 3600, 100);
        let t = Instant::now();
        for _ in 0..3 {
            assert_eq!(l.allow(&r, "A@x", "k", t), Outcome::Allowed);
        }
        assert_eq!(
            l.allow(&r, "a@x", "k", t),
            Outcome::Limited(Limited::SenderKey)
        );
        // Other senders and other keys are not touched.
        assert_eq!(l.allow(&r, "b@x", "k", t), Outcome::Allowed);
        assert_eq!(l.allow(&r, "a@x", "k2", t), Outcome::Allowed);
        // 3600 per hour: one token a second.
        let later = t + Duration::from_millis(1100);
        assert_eq!(l.allow(&r, "a@x", "k", later), Outcome::Allowed);
        assert_eq!(
            l.allow(&r, "a@x", "k", later),
            Outcome::Limited(Limited::SenderKey)
        );
    }

    #[test]
    fn per_key_limit_spans_senders() {
        let l = Limiter::new();
        let r = rates(10, 0, 2);
        let t = Instant::now();
        assert_eq!(l.allow(&r, "a@x", "k", t), Outcome::Allowed);
        assert_eq!(l.allow(&r, "b@x", "k", t), Outcome::Allowed);
        assert_eq!(l.allow(&r, "c@x", "k", t), Outcome::Limited(Limited::Key));
    }

    #[test]
    fn full_tables_fail_open_and_forget_full_buckets() {
        let l = Limiter::new();
        let mut r = rates(1, 3600, 100);
        r.max_tracked = 2;
        let t = Instant::now();
        assert_eq!(l.allow(&r, "a", "k1", t), Outcome::Allowed);
        assert_eq!(l.allow(&r, "b", "k2", t), Outcome::Allowed);
        assert_eq!(l.allow(&r, "c", "k3", t), Outcome::Untracked);
        // After a refill the old buckets are full again and make room.
        let later = t + Duration::from_secs(2);
        assert_eq!(l.allow(&r, "c", "k3", later), Outcome::Allowed);
    }
}
