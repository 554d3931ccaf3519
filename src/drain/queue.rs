//! `mailpipe queue` and `mailpipe requeue`: the admin's view of the spool,
//! like Postfix's `postqueue -p` and `postsuper -r`.
//!
//! `queue` prints, per route, how many messages wait (never tried), are
//! deferred (tried, waiting for their next attempt), are being posted
//! (active), sit in `work/` with no drain holding them (orphaned: put back
//! by the next drain), and have failed; the age of the oldest message not
//! yet failed; a route the drain is holding because GitLab is failing
//! ("held until HH:MM:SS: reason", from the drain's hold file); then every
//! deferred and failed message with its reason.
//! `requeue` moves failed messages back to `new/` with a clean slate.
//!
//! Must not: read the secret, talk to GitLab, read message content, or
//! (`queue`) change anything in the spool.
//! Fails: with a `QueueError` when the configuration or the spool cannot
//! be read, or a named message is not in `failed/`.

use std::fmt;
use std::io::{self, Write};

use std::path::Path;

use crate::cli::Format;
use crate::config::{Config, ConfigError, Route};
use crate::status::{AdminOutcome, printable};

use super::breaker::{self, HoldRecord};
use super::snapshot::{self, RouteCounts, Seen};
use super::store::{Folder, RouteSpool, State, StoreError};
use super::unix_now;

/// Why `queue` or `requeue` failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum QueueError {
    Config(Vec<ConfigError>),
    Store(StoreError),
    /// Writing the report failed.
    Output(io::Error),
    /// A message named on the command line is not in any `failed/`.
    NotFailed(String),
    /// `--route` names no configured route.
    UnknownRoute(String),
    /// Started as root, and could not become the spool's owner.
    Privilege(crate::privilege::PrivilegeError),
}

impl fmt::Display for QueueError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            QueueError::Config(all) => {
                let lines: Vec<String> = all.iter().map(ToString::to_string).collect();
                write!(f, "{}", lines.join("; "))
            }
            QueueError::Store(e) => write!(f, "{e}"),
            QueueError::Output(e) => write!(f, "cannot write the report: {e}"),
            QueueError::NotFailed(name) => write!(
                f,
                "{}: not in failed/ (hint: `mailpipe queue` lists failed messages as \
                 route/name)",
                printable(name, 200)
            ),
            QueueError::UnknownRoute(r) => write!(
                f,
                "{}: not a configured route (incoming_email or service_desk_email)",
                printable(r, 100)
            ),
            QueueError::Privilege(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for QueueError {}

impl From<StoreError> for QueueError {
    fn from(e: StoreError) -> Self {
        QueueError::Store(e)
    }
}

impl From<io::Error> for QueueError {
    fn from(e: io::Error) -> Self {
        QueueError::Output(e)
    }
}

/// `mailpipe queue`: prints the report.
pub fn command(config_path: &Path, format: Format) -> AdminOutcome {
    let result = Config::load_all(config_path)
        .map_err(QueueError::Config)
        .and_then(|config| {
            leave_root(&config)?;
            show(&config, format, &mut io::stdout().lock())
        });
    report(result)
}

/// `mailpipe requeue`.
pub fn requeue_command(config_path: &Path, route: Option<&str>, names: &[String]) -> AdminOutcome {
    let result = Config::load_all(config_path)
        .map_err(QueueError::Config)
        .and_then(|config| {
            leave_root(&config)?;
            requeue(&config, route, names, &mut io::stdout().lock())
        });
    report(result)
}

/// Root never works on the spool as root (src/privilege.rs).
fn leave_root(config: &Config) -> Result<(), QueueError> {
    crate::privilege::leave_root(&config.spool.dir).map_err(QueueError::Privilege)
}

fn report(result: Result<(), QueueError>) -> AdminOutcome {
    match result {
        Ok(()) => AdminOutcome::Ok,
        Err(e) => {
            let _ = writeln!(io::stderr(), "mailpipe: {e}");
            AdminOutcome::Failed
        }
    }
}

/// One message for the listing.
struct Listed {
    route: Route,
    name: String,
    arrived: u64,
    state: Option<State>,
}

/// Writes the queue report for every configured route, as text or as one
/// JSON object ([`render_json`]).
///
/// # Errors
/// `Store` when the spool root or a folder cannot be read, `Output` when
/// writing fails.
pub fn show(config: &Config, format: Format, out: &mut dyn Write) -> Result<(), QueueError> {
    let now = unix_now();
    let mut rows = Vec::new();
    let mut deferred = Vec::new();
    let mut failed = Vec::new();
    let mut unconfigured = Vec::new();
    let mut holds: Vec<(Route, HoldRecord)> = Vec::new();
    let mut unreadable_holds = Vec::new();
    for route in Route::ALL {
        let configured = config.route(route).is_some();
        let mut counts = RouteCounts::new(route, configured);
        if let Some(spool) = RouteSpool::for_reading(&config.spool.dir, route)? {
            match spool.state_dir().map(breaker::read_hold) {
                Some(Ok(Some(hold))) if hold.in_force(now) => holds.push((route, hold)),
                Some(Err(e)) => unreadable_holds.push((route, e)),
                _ => {}
            }
            snapshot::count(&spool, &mut counts, |seen| match seen {
                Seen::Deferred(entry, state) => deferred.push(Listed {
                    route,
                    name: entry.name.clone(),
                    arrived: entry.arrived.0,
                    state: Some(state.clone()),
                }),
                Seen::Failed(entry) => failed.push(Listed {
                    route,
                    state: spool.read_state(&entry.name).ok().flatten(),
                    name: entry.name.clone(),
                    arrived: entry.arrived.0,
                }),
            })?;
        }
        if configured {
            rows.push((route, counts));
        } else if !counts.is_empty() {
            // Left by an earlier configuration: show it, or it is forgotten.
            unconfigured.push(route);
            rows.push((route, counts));
        }
    }

    if format == Format::Json {
        return render_json(out, now, &rows, &unconfigured, &holds, &deferred, &failed);
    }
    writeln!(
        out,
        "{:<20} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "route", "waiting", "deferred", "active", "orphaned", "failed", "oldest"
    )?;
    for (route, c) in &rows {
        let oldest = c
            .oldest_arrival
            .map_or_else(|| "-".to_string(), |t| age(now.saturating_sub(t)));
        writeln!(
            out,
            "{:<20} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
            route.as_str(),
            c.waiting,
            c.deferred,
            c.active,
            c.orphaned,
            c.failed,
            oldest
        )?;
    }
    for (route, hold) in &holds {
        writeln!(
            out,
            "\n{route}: held until {}: {}",
            breaker::clock_time(hold.until),
            printable(&hold.reason, 300)
        )?;
    }
    for (route, e) in &unreadable_holds {
        writeln!(
            out,
            "\nnote: {route}: the drain's hold record ({}) cannot be read: {}",
            breaker::HOLD_FILE,
            printable(&e.to_string(), 200)
        )?;
    }
    for route in unconfigured {
        writeln!(
            out,
            "\nnote: {route} is not configured; the drain leaves its messages alone \
             (configure the route again to deliver them)"
        )?;
    }
    if !deferred.is_empty() {
        writeln!(out, "\ndeferred ({}):", deferred.len())?;
        for m in &deferred {
            let s = m.state.clone().unwrap_or_default();
            let held = holds
                .iter()
                .find(|(r, h)| *r == m.route && h.until > s.next_attempt)
                .map(|(_, h)| h.until);
            let next = match held {
                Some(until) => format!("in {} (route held)", age(until.saturating_sub(now))),
                None if s.next_attempt > now => format!("in {}", age(s.next_attempt - now)),
                None => "now".to_string(),
            };
            writeln!(
                out,
                "  {}/{}  age={}  attempts={}  next={}  last=\"{}\"",
                m.route,
                printable(&m.name, 200),
                age(now.saturating_sub(m.arrived)),
                s.attempts,
                next,
                printable(&s.last_error, 300)
            )?;
        }
    }
    if !failed.is_empty() {
        writeln!(out, "\nfailed ({}):", failed.len())?;
        for m in &failed {
            let (attempts, reason) = m.state.as_ref().map_or_else(
                || ("?".to_string(), "(no reason recorded)".to_string()),
                |s| (s.attempts.to_string(), s.last_error.clone()),
            );
            writeln!(
                out,
                "  {}/{}  age={}  attempts={}  reason=\"{}\"",
                m.route,
                printable(&m.name, 200),
                age(now.saturating_sub(m.arrived)),
                attempts,
                printable(&reason, 300)
            )?;
        }
    }
    Ok(())
}

/// The queue report as one JSON object, for scripts and monitoring: the
/// same counts, deferred and failed messages as the text (ages and times
/// in seconds; names and reasons made printable like the text's).
fn render_json(
    out: &mut dyn Write,
    now: u64,
    rows: &[(Route, RouteCounts)],
    unconfigured: &[Route],
    holds: &[(Route, HoldRecord)],
    deferred: &[Listed],
    failed: &[Listed],
) -> Result<(), QueueError> {
    use serde_json::{Value, json};
    let message = |m: &Listed| {
        let s = m.state.clone().unwrap_or_default();
        let mut v = json!({
            "route": m.route.as_str(),
            "name": printable(&m.name, 200),
            "age_secs": now.saturating_sub(m.arrived),
            "attempts": m.state.as_ref().map(|s| s.attempts),
            "last_status": s.last_status,
            "last_error": m.state.as_ref().map(|s| printable(&s.last_error, 300)),
        });
        if s.next_attempt > 0 && s.failed_at.is_none() {
            v["next_attempt_in_secs"] = json!(s.next_attempt.saturating_sub(now));
        }
        if let Some(t) = s.failed_at {
            v["failed_at"] = json!(t);
        }
        v
    };
    let routes: Vec<Value> = rows
        .iter()
        .map(|(route, c)| {
            let hold = holds.iter().find(|(r, _)| r == route).map(|(_, h)| h);
            json!({
                "route": route.as_str(),
                "held_until": hold.map(|h| h.until),
                "held_reason": hold.map(|h| printable(&h.reason, 300)),
                "configured": !unconfigured.contains(route),
                "waiting": c.waiting,
                "deferred": c.deferred,
                "active": c.active,
                "orphaned": c.orphaned,
                "failed": c.failed,
                "oldest_age_secs": c.oldest_arrival.map(|t| now.saturating_sub(t)),
            })
        })
        .collect();
    let report = json!({
        "now": now,
        "routes": routes,
        "deferred": deferred.iter().map(message).collect::<Vec<_>>(),
        "failed": failed.iter().map(message).collect::<Vec<_>>(),
    });
    writeln!(out, "{report}")?;
    Ok(())
}

/// Moves failed messages back to `new/`: `ALL` of them (of `route`, when
/// given), or those named (`name` or `route/name`).
///
/// # Errors
/// `UnknownRoute`, `NotFailed` for a name not found (the others are still
/// requeued), `Store` when the file system fails.
pub fn requeue(
    config: &Config,
    route: Option<&str>,
    names: &[String],
    out: &mut dyn Write,
) -> Result<(), QueueError> {
    let only = match route {
        None => None,
        Some(r) => Some(
            Route::ALL
                .into_iter()
                .find(|x| x.as_str() == r)
                .filter(|x| config.route(*x).is_some())
                .ok_or_else(|| QueueError::UnknownRoute(r.to_string()))?,
        ),
    };
    let mut spools = Vec::new();
    for r in config
        .routes
        .iter()
        .filter(|r| only.is_none_or(|o| o == r.route))
    {
        if let Some(spool) = RouteSpool::existing(&config.spool.dir, r.route)? {
            spools.push(spool);
        }
    }
    let all = names.iter().any(|n| n == "ALL");
    let mut count = 0;
    let mut missing = None;
    let mut first_error: Option<StoreError> = None;
    if all {
        for spool in &spools {
            for entry in spool.list(Folder::Failed)? {
                // One message's trouble (its owner, the deliver account,
                // may have made it unreadable) does not stop the others.
                match spool.requeue(&entry.name) {
                    Ok(true) => {
                        writeln!(
                            out,
                            "requeued {}/{}",
                            spool.route(),
                            printable(&entry.name, 200)
                        )?;
                        count += 1;
                    }
                    Ok(false) => {}
                    Err(e) => {
                        let _ = writeln!(io::stderr(), "mailpipe: {e}");
                        first_error.get_or_insert(e);
                    }
                }
            }
        }
    } else {
        for given in names {
            let (want_route, name) = match given.split_once('/') {
                Some((r, n)) => (Some(r), n),
                None => (None, given.as_str()),
            };
            let mut done = false;
            for spool in &spools {
                if want_route.is_some_and(|r| r != spool.route().as_str()) {
                    continue;
                }
                if crate::layout::is_plain_name(name) && spool.requeue(name)? {
                    writeln!(out, "requeued {}/{}", spool.route(), printable(name, 200))?;
                    count += 1;
                    done = true;
                    break;
                }
            }
            if !done {
                missing.get_or_insert_with(|| given.clone());
            }
        }
    }
    writeln!(out, "{count} message(s) requeued")?;
    if let Some(e) = first_error {
        return Err(QueueError::Store(e));
    }
    match missing {
        Some(name) => Err(QueueError::NotFailed(name)),
        None => Ok(()),
    }
}

/// A short age: `45s`, `12m`, `3h12m`, `2d4h` (`queue` and `health`).
pub(crate) fn age(secs: u64) -> String {
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m", secs / 60),
        3600..86400 => format!("{}h{:02}m", secs / 3600, secs % 3600 / 60),
        _ => format!("{}d{}h", secs / 86400, secs % 86400 / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_are_short() {
        let table = [
            (0, "0s"),
            (59, "59s"),
            (60, "1m"),
            (3599, "59m"),
            (3600, "1h00m"),
            (7325, "2h02m"),
            (86400, "1d0h"),
            (190_000, "2d4h"),
        ];
        for (secs, want) in table {
            assert_eq!(age(secs), want);
        }
    }
}
