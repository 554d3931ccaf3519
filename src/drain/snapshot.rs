//! A read-only count of the spool, per route and state, for the metrics,
//! `mailpipe health` and `mailpipe queue`: what waits, what is deferred and
//! why, what is being posted, what a dead drain left, what failed, and since
//! when.
//!
//! Must not: write anything in the spool, read message content, or read a
//! secret. It sees only names, locks and the drain's sidecar files.
//! Fails: with the `StoreError` of the first folder that cannot be read;
//! a sidecar that cannot be understood counts the message as waiting.
//!
//! The states are `mailpipe queue`'s: waiting (in `new/`, never tried),
//! deferred (in `new/` with a sidecar: tried and failed), active (in
//! `work/`, locked by a drain), orphaned (in `work/`, lock free: a drain
//! died; the next one puts it back), failed (in `failed/`).

use std::path::Path;

use crate::config::{Config, Route};

use super::store::{Entry, Folder, RouteSpool, State, StoreError};

/// HTTP statuses that say GitLab will not take any mail for the route
/// (wrong secret, mailbox disabled): `http::classify` keeps such
/// messages in `new/` and retries them forever, so they are held, not
/// failed.
pub const REFUSED_BY_GITLAB: [u16; 2] = [401, 403];

/// One route's counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteCounts {
    pub route: Route,
    /// The route is in the configuration (an unconfigured route with
    /// messages left by an earlier configuration is counted too).
    pub configured: bool,
    pub waiting: usize,
    pub deferred: usize,
    pub active: usize,
    pub orphaned: usize,
    pub failed: usize,
    /// Arrival time (seconds since the epoch) of the oldest message not
    /// yet failed (in `new/` or `work/`).
    pub oldest_arrival: Option<u64>,
    /// Messages in `new/` whose last answer was 401 or 403.
    pub refused: usize,
    /// The last such status and its reason, from the newest attempt.
    pub refused_status: Option<u16>,
    pub refused_reason: Option<String>,
    /// When the newest refused attempt was made.
    refused_at: u64,
}

impl RouteCounts {
    pub fn new(route: Route, configured: bool) -> RouteCounts {
        RouteCounts {
            route,
            configured,
            waiting: 0,
            deferred: 0,
            active: 0,
            orphaned: 0,
            failed: 0,
            oldest_arrival: None,
            refused: 0,
            refused_status: None,
            refused_reason: None,
            refused_at: 0,
        }
    }

    /// Messages not yet failed: waiting, deferred, active and orphaned.
    pub fn queued(&self) -> usize {
        self.waiting + self.deferred + self.active + self.orphaned
    }

    pub fn is_empty(&self) -> bool {
        self.queued() + self.failed == 0
    }
}

/// Counts every configured route, and every unconfigured one that still
/// holds messages.
///
/// # Errors
/// `RootMissing` when `spool.dir` is not there, `Io` when a folder cannot
/// be read.
pub fn scan(config: &Config) -> Result<Vec<RouteCounts>, StoreError> {
    scan_root(&config.spool.dir, |r| config.route(r).is_some())
}

fn scan_root(
    root: &Path,
    configured: impl Fn(Route) -> bool,
) -> Result<Vec<RouteCounts>, StoreError> {
    let mut all = Vec::new();
    for route in Route::ALL {
        let mut c = RouteCounts::new(route, configured(route));
        if let Some(spool) = RouteSpool::for_reading(root, route)? {
            count(&spool, &mut c, |_| {})?;
        }
        if c.configured || !c.is_empty() {
            all.push(c);
        }
    }
    Ok(all)
}

/// A message [`count`] looked at that a caller may list (`mailpipe
/// queue`): a deferred one in `new/` with its sidecar, or a failed one.
pub enum Seen<'a> {
    Deferred(&'a Entry, &'a State),
    Failed(&'a Entry),
}

/// Counts one route's messages into `c`, telling `seen` about each
/// deferred and failed one. The one place that decides which state a
/// message is in (metrics, health and `queue` alike).
///
/// # Errors
/// `Io` when a folder cannot be read.
pub fn count(
    spool: &RouteSpool,
    c: &mut RouteCounts,
    mut seen: impl FnMut(Seen<'_>),
) -> Result<(), StoreError> {
    let older = |c: &mut RouteCounts, arrived: u64| {
        c.oldest_arrival = Some(c.oldest_arrival.map_or(arrived, |o| o.min(arrived)));
    };
    let with_state = spool.names_with_state().unwrap_or_default();
    for entry in spool.list(Folder::New)? {
        older(c, entry.arrived.0);
        let state = if with_state.contains(&entry.name) {
            spool.read_state(&entry.name).ok().flatten()
        } else {
            None
        };
        match state {
            Some(s) if s.attempts > 0 => {
                c.deferred += 1;
                seen(Seen::Deferred(&entry, &s));
                if let Some(code) = s.last_status.filter(|s| REFUSED_BY_GITLAB.contains(s)) {
                    c.refused += 1;
                    let at = s.last_attempt.unwrap_or(0);
                    if c.refused_status.is_none() || at >= c.refused_at {
                        c.refused_at = at;
                        c.refused_status = Some(code);
                        c.refused_reason = Some(s.last_error.clone());
                    }
                }
            }
            _ => c.waiting += 1,
        }
    }
    for entry in spool.list(Folder::Work)? {
        older(c, entry.arrived.0);
        if spool.is_locked(Folder::Work, &entry.name)? {
            c.active += 1;
        } else {
            c.orphaned += 1;
        }
    }
    for entry in spool.list(Folder::Failed)? {
        c.failed += 1;
        seen(Seen::Failed(&entry));
    }
    Ok(())
}
