//! `mailpipe drain`: hands the spool to GitLab through mail_room's own
//! postback API, `POST <gitlab.url>/api/v4/internal/mail_room/<route>`, one
//! message per request, oldest first, with a pool of workers.
//!
//! Must not: parse mail (the bytes go out as they were spooled), write into
//! `tmp/` or create names in `new/`, delete a message GitLab has not
//! accepted, contact anything but `gitlab.url`, or panic.
//! Fails: a broken configuration, a missing or invalid secret file, or an
//! unusable spool stops the drain before it posts anything, with a
//! [`DrainError`] (exit 1). Per-message trouble never stops it: the message
//! is kept and retried, or moved to `failed/` with its reason.
//!
//! How a message travels (`dispatch` decides what goes next, `attempt` is
//! one worker's attempt, `store` the locking, `http` the status table,
//! `retry` the schedule, `breaker` when a route is held):
//!
//! 1. The dispatcher scans `new/` of every route, drops what is being
//!    posted or waiting for its next attempt, sorts the rest oldest first
//!    and feeds them to `drain.concurrency` workers over a bounded
//!    crossbeam channel.
//! 2. A worker claims the file (flock, then rename into `work/`), reads its
//!    sidecar, reads the route's secret file (every time, like mail_room,
//!    so a rotated secret needs no restart), signs a fresh token and posts.
//! 3. 200 with `{"success":true}`: removed (or kept in `cur/`). 400/413:
//!    `failed/` at once. 401 and other configuration trouble: back to
//!    `new/`, retried, logged as an error, never given up. Anything else:
//!    back to `new/` with the attempt count, the error and the next attempt
//!    time, or `failed/` once it has been failing for
//!    `drain.give_up_after_hours`.
//! 4. A failed message gets its own backoff; the route goes on. Only
//!    `drain.hold_after_failures` GitLab-level failures in a row (no
//!    connection, 5xx, 429, a hang) with no success in between, a 401-like
//!    answer, or a `Retry-After` hold the whole route; then one probe per
//!    delay, and the first success releases it (`breaker`, after Postfix
//!    qmgr's dead-destination rule). So a GitLab that fails now and then
//!    costs retries of those messages only, and an outage one probe per
//!    delay instead of one request per queued message. A hold is logged
//!    once when it starts and once when it ends, and written to
//!    `state/.route-hold.json` for `mailpipe queue`.
//! 5. A request that takes ten times as long as GitLab's answers usually
//!    do is presumed hung: it counts as a failure and stops taking up a
//!    worker slot (a spare thread takes its place), so hangs never stall
//!    the other messages.
//!
//! SIGTERM and SIGINT stop the dispatch; posts in flight finish (bounded by
//! `drain.request_timeout_secs`) and settle their messages, then the drain
//! exits 0. After SIGKILL, messages left in `work/` are put back by the
//! next drain (at start, and every minute by a running one): at worst the
//! message that was in flight is posted twice. Nothing is ever lost.

mod attempt;
use attempt::{Done, Job, report_recovery, worker};
pub mod auth;
pub mod breaker;
mod dispatch;
use dispatch::Dispatcher;
pub mod http;
pub mod journal;
pub mod metrics;
pub mod queue;
pub mod retry;
pub mod snapshot;
pub mod store;

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, bounded, unbounded};

use crate::config::{Config, ConfigError, Route};
use crate::status::{AdminOutcome, printable};

use auth::Secret;
use breaker::{Admit, Breaker, Event, Failure, HoldRecord, Latency};
use http::{Client, Verdict};
use journal::Journal;
use retry::Policy;
use store::{Folder, RouteSpool, State, StoreError};

/// How often the dispatcher looks at the stop flag while it waits.
const TICK: Duration = Duration::from_millis(100);
/// How often a running drain puts back messages orphaned in `work/` by a
/// drain that died next to it.
const RECOVER_EVERY: Duration = Duration::from_secs(60);
/// Spare threads for requests presumed hung, beyond `drain.concurrency`:
/// each waits for its request timeout without holding a worker slot.
const MAX_HUNG: usize = 128;

/// Why the drain could not run at all.
#[derive(Debug)]
#[non_exhaustive]
pub enum DrainError {
    /// The configuration file is missing or invalid.
    Config(Vec<ConfigError>),
    /// `[gitlab] url` is not set.
    NoUrl(PathBuf),
    /// A route's secret file is missing or not what GitLab accepts.
    Secret { route: Route, err: auth::AuthError },
    /// The spool cannot be opened or prepared.
    Store(StoreError),
    /// Signal handlers or worker threads could not be set up.
    Setup(io::Error),
    /// Started as root, and could not become the spool's owner.
    Privilege(crate::privilege::PrivilegeError),
}

impl fmt::Display for DrainError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DrainError::Config(all) => {
                let lines: Vec<String> = all.iter().map(ToString::to_string).collect();
                write!(f, "{}", lines.join("; "))
            }
            DrainError::NoUrl(path) => write!(
                f,
                "{}: gitlab.url is not set (hint: the drain posts to \
                 <gitlab.url>/api/v4/internal/mail_room/<route>; use gitlab_url from \
                 gitlab.yml, like \"https://gitlab.example.com\")",
                path.display()
            ),
            DrainError::Secret { route, err } => write!(f, "{route}.secret_file: {err}"),
            DrainError::Store(e) => write!(f, "{e}"),
            DrainError::Setup(e) => write!(f, "cannot start: {e}"),
            DrainError::Privilege(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for DrainError {}

impl From<StoreError> for DrainError {
    fn from(e: StoreError) -> Self {
        DrainError::Store(e)
    }
}

/// How `drain` runs.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// Try every waiting message once, then exit (cron, tests).
    pub once: bool,
    /// Ignore the next-attempt times: try deferred messages now
    /// (like `postqueue -f`).
    pub flush: bool,
}

/// What a run did: the first six count attempts (a message deferred
/// twice counts twice), the `left_*` ones messages still queued at the end
/// of a `--once` run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    pub delivered: usize,
    /// Refused for good (400/413), moved to `failed/`.
    pub rejected: usize,
    /// Failing for longer than `give_up_after_hours`, moved to `failed/`.
    pub gave_up: usize,
    /// Kept for a later attempt after a temporary failure.
    pub deferred: usize,
    /// Kept because of a configuration problem (401, secret, URL).
    pub misconfigured: usize,
    /// Spool errors while handling a message (the message is kept).
    pub errors: usize,
    /// `--once`: messages in `new/` that have failed before (what `queue`
    /// lists as deferred), whoever deferred them.
    pub left_deferred: usize,
    /// `--once`: messages never tried because their route was held.
    pub left_held: usize,
    /// The `left_*` counts were taken (a `--once` run).
    pub left_counted: bool,
}

impl Summary {
    /// True when nothing was left behind by a failure in this run.
    pub fn clean(&self) -> bool {
        self.deferred == 0
            && self.misconfigured == 0
            && self.errors == 0
            && self.left_deferred == 0
            && self.left_held == 0
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "attempts: delivered={}, rejected={}, gave_up={}, deferred={}, misconfigured={}, \
             errors={}",
            self.delivered,
            self.rejected,
            self.gave_up,
            self.deferred,
            self.misconfigured,
            self.errors,
        )?;
        if self.left_counted {
            write!(
                f,
                "; messages left: deferred={}, held={}",
                self.left_deferred, self.left_held
            )?;
        }
        Ok(())
    }
}

/// `mailpipe drain`: loads the configuration, installs the signal
/// handlers, runs, and reports.
pub fn command(config_path: &Path, options: Options) -> AdminOutcome {
    let journal = Journal::new();
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        // The first signal asks for a clean stop; a second one while
        // stopping exits at once (still safe: see the module header).
        let installed =
            signal_hook::flag::register_conditional_shutdown(signal, 1, Arc::clone(&stop))
                .and_then(|_| signal_hook::flag::register(signal, Arc::clone(&stop)));
        if let Err(e) = installed {
            journal.error(&DrainError::Setup(e).to_string());
            return AdminOutcome::Failed;
        }
    }
    let result = Config::load_all(config_path)
        .map_err(DrainError::Config)
        .and_then(|config| {
            // Root never works on the spool as root (src/privilege.rs).
            crate::privilege::leave_root(&config.spool.dir).map_err(DrainError::Privilege)?;
            run(&config, options, &stop, &journal)
        });
    match result {
        Ok(summary) => {
            journal.info(&format!("finished: {summary}"));
            // Only a single pass reports trouble through its exit status;
            // the daemon's trouble is in its log, and systemd must not
            // restart it for a deferral.
            AdminOutcome::from_success(!options.once || summary.clean())
        }
        Err(e) => {
            journal.error(&e.to_string());
            AdminOutcome::Failed
        }
    }
}

/// The drain itself: checks what it needs, puts back orphans, then
/// dispatches until the spool is empty (`once`) or `stop` is set.
///
/// # Errors
/// Only before the first post: no `gitlab.url`, a bad secret file, an
/// unusable spool, or no threads.
pub fn run(
    config: &Config,
    options: Options,
    stop: &AtomicBool,
    journal: &Journal,
) -> Result<Summary, DrainError> {
    let url = config
        .gitlab_url
        .clone()
        .ok_or_else(|| DrainError::NoUrl(config.path.clone()))?;
    let mut routes = Vec::new();
    for route in &config.routes {
        // Check now, so a wrong secret file fails the start (and `systemctl
        // start`), not only the first post; it is read again per attempt.
        Secret::load(route.secret_file.as_deref()).map_err(|err| DrainError::Secret {
            route: route.route,
            err,
        })?;
        let spool = RouteSpool::open(
            &config.spool.dir,
            route.route,
            config.limits.max_message_bytes,
        )?;
        report_recovery(journal, route.route, spool.recover()?);
        routes.push(RouteContext {
            spool,
            secret_file: route.secret_file.clone(),
        });
    }
    for route in Route::ALL {
        if config.route(route).is_none()
            && let Ok(Some(spool)) = RouteSpool::existing(&config.spool.dir, route)
            && spool.list(Folder::New).is_ok_and(|m| !m.is_empty())
        {
            journal.warn(&format!(
                "{route}: messages are waiting in {}/new but the route is not configured; \
                 they are left alone",
                spool.dir().display()
            ));
        }
    }
    let metrics = metrics::Metrics::new(&config.routes.iter().map(|r| r.route).collect::<Vec<_>>());
    let exporter = metrics::Exporter::start(&config.drain).map_err(DrainError::Setup)?;
    let ctx = Context {
        metrics,
        routes,
        client: Client::new(&url, &config.drain),
        policy: Policy::from_config(&config.drain),
        hold_after: config.drain.hold_after_failures,
        request_timeout: Duration::from_secs(config.drain.request_timeout_secs.max(1)),
        keep_delivered: config.drain.keep_delivered,
        flush: options.flush,
        stop,
        journal,
    };
    journal.info(&format!(
        "started: url={}, routes={}, concurrency={}{}",
        printable(&url, 200),
        ctx.routes
            .iter()
            .map(|r| r.spool.route().as_str())
            .collect::<Vec<_>>()
            .join(","),
        config.drain.concurrency,
        if options.once { ", once" } else { "" }
    ));
    if let Some(exporter) = &exporter {
        journal.info(&format!("metrics: {}", exporter.describe()));
    }
    let exporter_done = AtomicBool::new(false);

    let workers = config.drain.concurrency.max(1);
    let (job_tx, job_rx) = bounded::<(Job, bool)>(workers + MAX_HUNG);
    let (done_tx, done_rx) = unbounded::<Done>();
    let poll = Duration::from_secs(config.drain.poll_interval_secs.max(1));
    std::thread::scope(|scope| {
        // Owned here, so an early return below closes the channel and the
        // workers already started end instead of waiting forever.
        let job_tx = job_tx;
        let mut started = 0usize;
        let mut spawn = || -> io::Result<()> {
            let (jobs, done, ctx) = (job_rx.clone(), done_tx.clone(), &ctx);
            std::thread::Builder::new()
                .name(format!("drain-{started}"))
                .spawn_scoped(scope, move || worker(ctx, &jobs, &done))?;
            started += 1;
            Ok(())
        };
        for _ in 0..workers {
            spawn().map_err(DrainError::Setup)?;
        }
        if let Some(exporter) = &exporter {
            let (ctx, done) = (&ctx, &exporter_done);
            std::thread::Builder::new()
                .name("drain-metrics".into())
                .spawn_scoped(scope, move || {
                    exporter.run(config, &ctx.metrics, ctx.stop, done, ctx.journal)
                })
                .map_err(DrainError::Setup)?;
        }
        let mut dispatcher = Dispatcher::new(&ctx, options, poll, workers);
        dispatcher.run(&job_tx, &done_rx, &mut || spawn().is_ok());
        drop(done_tx);
        if stop.load(Ordering::SeqCst) {
            journal.info("stopping: letting the posts in flight finish");
        }
        drop(job_tx);
        // Workers end when the channel is closed and empty; their last
        // results still count.
        for done in done_rx.iter() {
            dispatcher.apply(done);
        }
        dispatcher.end_holds();
        if options.once {
            dispatcher.count_left();
        }
        exporter_done.store(true, Ordering::SeqCst);
        Ok(dispatcher.summary)
    })
}

struct RouteContext {
    spool: RouteSpool,
    secret_file: Option<PathBuf>,
}

/// What every worker shares.
struct Context<'a> {
    metrics: metrics::Metrics,
    routes: Vec<RouteContext>,
    client: Client,
    policy: Policy,
    /// `drain.hold_after_failures`.
    hold_after: u32,
    request_timeout: Duration,
    keep_delivered: bool,
    flush: bool,
    stop: &'a AtomicBool,
    journal: &'a Journal,
}

impl Context<'_> {
    fn route(&self, route: Route) -> Option<&RouteContext> {
        self.routes.iter().find(|r| r.spool.route() == route)
    }
}

/// Seconds since the epoch (0 if the clock is before 1970).
pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A random number in `[0, 1)`.
fn random_unit() -> f64 {
    (crate::random::u64() >> 11) as f64 / (1u64 << 53) as f64
}
