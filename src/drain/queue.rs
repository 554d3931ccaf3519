//! `mailpipe queue` and `mailpipe requeue`: the admin's view of the spool,
//! like Postfix's `postqueue -p` and `postsuper -r`.
//!
//! `queue` prints, per route, how many messages wait (never tried), are
//! deferred (tried, waiting for their next attempt), are being posted
//! (active), sit in `work/` with no drain holding them (orphaned: put back
//! by the next drain), and have failed; the age of the oldest message not
//! yet failed; then every deferred and failed message with its reason.
//! `requeue` moves failed messages back to `new/` with a clean slate.
//!
//! Must not: read the secret, talk to GitLab, read message content, or
//! (`queue`) change anything in the spool.
//! Fails: with a `QueueError` when the configuration or the spool cannot
//! be read, or a named message is not in `failed/`.

use std::fmt;
use std::io::{self, Write};

use crate::cli::{Format, QueueArgs, RequeueArgs};
use crate::config::{Config, ConfigError, Route};
use crate::status::printable;

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
                "{name}: not in failed/ (hint: `mailpipe queue` lists failed messages as \
                 route/name)"
            ),
            QueueError::UnknownRoute(r) => write!(
                f,
                "{r}: not a configured route (incoming_email or service_desk_email)"
            ),
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

/// `mailpipe queue`: prints the report; true for exit status 0.
pub fn command(args: &QueueArgs) -> bool {
    let result = Config::load_all(&args.config)
        .map_err(QueueError::Config)
        .and_then(|config| show(&config, args.format, &mut io::stdout().lock()));
    report(result)
}

/// `mailpipe requeue`: true for exit status 0.
pub fn requeue_command(args: &RequeueArgs) -> bool {
    let result = Config::load_all(&args.config)
        .map_err(QueueError::Config)
        .and_then(|config| {
            requeue(
                &config,
                args.route.as_deref(),
                &args.names,
                &mut io::stdout().lock(),
            )
        });
    report(result)
}

fn report(result: Result<(), QueueError>) -> bool {
    match result {
        Ok(()) => true,
        Err(e) => {
            let _ = writeln!(io::stderr(), "mailpipe: {e}");
            false
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

#[derive(Default)]
struct Counts {
    waiting: usize,
    deferred: usize,
    active: usize,
    orphaned: usize,
    failed: usize,
    oldest: Option<u64>,
}

/// Writes the queue report for every configured route, as text or as one
/// JSON object ([`render_json`]).
///
/// # Errors
/// `Store` when the spool root or a folder cannot be read, `Output` when
/// writing fails.
pub fn show(config: &Config, format: Format, out: &mut dyn Write) -> Result<(), QueueError> {
    std::fs::metadata(&config.spool.dir).map_err(|err| StoreError::RootMissing {
        path: config.spool.dir.clone(),
        err,
    })?;
    let now = unix_now();
    let mut rows = Vec::new();
    let mut deferred = Vec::new();
    let mut failed = Vec::new();
    let mut unconfigured = Vec::new();
    for route in Route::ALL {
        let configured = config.route(route).is_some();
        let mut counts = Counts::default();
        if let Some(spool) = RouteSpool::existing(&config.spool.dir, route) {
            let mut older = |arrived: u64| {
                counts.oldest = Some(counts.oldest.map_or(arrived, |o| o.min(arrived)));
            };
            for entry in spool.list(Folder::New)? {
                older(entry.arrived.0);
                let state = spool.read_state(&entry.name).ok().flatten();
                if state.as_ref().is_some_and(|s| s.attempts > 0) {
                    counts.deferred += 1;
                    deferred.push(Listed {
                        route,
                        name: entry.name,
                        arrived: entry.arrived.0,
                        state,
                    });
                } else {
                    counts.waiting += 1;
                }
            }
            for entry in spool.list(Folder::Work)? {
                older(entry.arrived.0);
                if spool.is_locked(Folder::Work, &entry.name)? {
                    counts.active += 1;
                } else {
                    counts.orphaned += 1;
                }
            }
            for entry in spool.list(Folder::Failed)? {
                counts.failed += 1;
                failed.push(Listed {
                    route,
                    state: spool.read_state(&entry.name).ok().flatten(),
                    name: entry.name,
                    arrived: entry.arrived.0,
                });
            }
        }
        let empty =
            counts.waiting + counts.deferred + counts.active + counts.orphaned + counts.failed == 0;
        if configured {
            rows.push((route, counts));
        } else if !empty {
            // Left by an earlier configuration: show it, or it is forgotten.
            unconfigured.push(route);
            rows.push((route, counts));
        }
    }

    if format == Format::Json {
        return render_json(out, now, &rows, &unconfigured, &deferred, &failed);
    }
    writeln!(
        out,
        "{:<20} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "route", "waiting", "deferred", "active", "orphaned", "failed", "oldest"
    )?;
    for (route, c) in &rows {
        let oldest = c
            .oldest
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
            let next = if s.next_attempt > now {
                format!("in {}", age(s.next_attempt - now))
            } else {
                "now".to_string()
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
    rows: &[(Route, Counts)],
    unconfigured: &[Route],
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
            json!({
                "route": route.as_str(),
                "configured": !unconfigured.contains(route),
                "waiting": c.waiting,
                "deferred": c.deferred,
                "active": c.active,
                "orphaned": c.orphaned,
                "failed": c.failed,
                "oldest_age_secs": c.oldest.map(|t| now.saturating_sub(t)),
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
    let spools: Vec<RouteSpool> = config
        .routes
        .iter()
        .filter(|r| only.is_none_or(|o| o == r.route))
        .filter_map(|r| RouteSpool::existing(&config.spool.dir, r.route))
        .collect();
    let all = names.iter().any(|n| n == "ALL");
    let mut count = 0;
    let mut missing = None;
    if all {
        for spool in &spools {
            for entry in spool.list(Folder::Failed)? {
                if spool.requeue(&entry.name)? {
                    writeln!(out, "requeued {}/{}", spool.route(), entry.name)?;
                    count += 1;
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
                if is_plain_name(name) && spool.requeue(name)? {
                    writeln!(out, "requeued {}/{name}", spool.route())?;
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
    match missing {
        Some(name) => Err(QueueError::NotFailed(name)),
        None => Ok(()),
    }
}

/// A message name as the spool makes them: no path, no dotfile.
fn is_plain_name(name: &str) -> bool {
    !name.is_empty() && !name.starts_with('.') && !name.contains('/')
}

/// A short age: `45s`, `12m`, `3h12m`, `2d4h`.
fn age(secs: u64) -> String {
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
