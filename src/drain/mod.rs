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
//! How a message travels (see `store` for the locking, `http` for the
//! status table, `retry` for the schedule):
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
//! 4. A failure that is about the route rather than the message (no
//!    connection, 5xx, 401) also holds the whole route back for a backoff
//!    delay, so a GitLab outage costs one probe per delay instead of one
//!    request per queued message.
//!
//! SIGTERM and SIGINT stop the dispatch; posts in flight finish (bounded by
//! `drain.request_timeout_secs`) and settle their messages, then the drain
//! exits 0. After SIGKILL, messages left in `work/` are put back by the
//! next drain (at start, and every minute by a running one): at worst the
//! message that was in flight is posted twice. Nothing is ever lost.

pub mod auth;
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
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, bounded, unbounded};

use crate::cli::DrainArgs;
use crate::config::{Config, ConfigError, Route};
use crate::status::printable;

use auth::Secret;
use http::{Client, Verdict};
use journal::Journal;
use retry::Policy;
use store::{Folder, RouteSpool, State, StoreError};

/// How often the dispatcher looks at the stop flag while it waits.
const TICK: Duration = Duration::from_millis(100);
/// How often a running drain puts back messages orphaned in `work/` by a
/// drain that died next to it.
const RECOVER_EVERY: Duration = Duration::from_secs(60);

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

/// What a run did.
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
}

impl Summary {
    /// True when nothing was left behind by a failure in this run.
    pub fn clean(&self) -> bool {
        self.deferred == 0 && self.misconfigured == 0 && self.errors == 0
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "delivered={}, rejected={}, gave_up={}, deferred={}, misconfigured={}, errors={}",
            self.delivered,
            self.rejected,
            self.gave_up,
            self.deferred,
            self.misconfigured,
            self.errors
        )
    }
}

/// `mailpipe drain`: loads the configuration, installs the signal
/// handlers, runs, and reports. Returns true for exit status 0.
pub fn command(args: &DrainArgs) -> bool {
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
            return false;
        }
    }
    let options = Options {
        once: args.once,
        flush: args.flush,
    };
    let result = Config::load_all(&args.config)
        .map_err(DrainError::Config)
        .and_then(|config| run(&config, options, &stop, &journal));
    match result {
        Ok(summary) => {
            journal.info(&format!("finished: {summary}"));
            // Only a single pass reports trouble through its exit status;
            // the daemon's trouble is in its log, and systemd must not
            // restart it for a deferral.
            !options.once || summary.clean()
        }
        Err(e) => {
            journal.error(&e.to_string());
            false
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
        let spool = RouteSpool::open(&config.spool.dir, route.route)?;
        report_recovery(journal, route.route, spool.recover()?);
        routes.push(RouteContext {
            spool,
            secret_file: route.secret_file.clone(),
        });
    }
    for route in Route::ALL {
        if config.route(route).is_none()
            && let Some(spool) = RouteSpool::existing(&config.spool.dir, route)
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
    let (job_tx, job_rx) = bounded::<Job>(workers);
    let (done_tx, done_rx) = unbounded::<Done>();
    let poll = Duration::from_secs(config.drain.poll_interval_secs.max(1));
    std::thread::scope(|scope| {
        // Owned here, so an early return below closes the channel and the
        // workers already started end instead of waiting forever.
        let job_tx = job_tx;
        for n in 0..workers {
            let (jobs, done, ctx) = (job_rx.clone(), done_tx.clone(), &ctx);
            std::thread::Builder::new()
                .name(format!("drain-{n}"))
                .spawn_scoped(scope, move || worker(ctx, &jobs, &done))
                .map_err(DrainError::Setup)?;
        }
        drop(done_tx);
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
        dispatcher.run(&job_tx, &done_rx);
        if stop.load(Ordering::SeqCst) {
            journal.info("stopping: letting the posts in flight finish");
        }
        drop(job_tx);
        // Workers end when the channel is closed and empty; their last
        // results still count.
        for done in done_rx.iter() {
            dispatcher.apply(done);
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

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Job {
    route: Route,
    name: String,
}

/// What became of one job.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Delivered,
    Rejected,
    GaveUp,
    /// Kept; `next_attempt` is when it may be tried again.
    Deferred {
        next_attempt: u64,
    },
    Misconfigured {
        next_attempt: u64,
        reason: String,
    },
    /// Claimed but not due yet (another drain deferred it): put back.
    NotDue {
        next_attempt: u64,
    },
    /// Gone, or another worker or drain has it.
    Skipped,
    /// A spool error; the message is kept.
    Error,
}

impl Outcome {
    /// The `outcome` label of `mailpipe_drain_attempts_total`; `None` for
    /// what was not an attempt.
    fn metric(&self) -> Option<&'static str> {
        match self {
            Outcome::Delivered => Some("delivered"),
            Outcome::Rejected => Some("rejected"),
            Outcome::GaveUp => Some("gave_up"),
            Outcome::Deferred { .. } => Some("deferred"),
            Outcome::Misconfigured { .. } => Some("misconfigured"),
            Outcome::Error => Some("error"),
            Outcome::NotDue { .. } | Outcome::Skipped => None,
        }
    }
}

struct Done {
    job: Job,
    outcome: Outcome,
}

fn worker(ctx: &Context<'_>, jobs: &Receiver<Job>, done: &Sender<Done>) {
    for job in jobs.iter() {
        let outcome = if ctx.stop.load(Ordering::SeqCst) {
            // Stopping: what is still queued stays in new/ untouched.
            Outcome::Skipped
        } else {
            attempt(ctx, &job)
        };
        if done.send(Done { job, outcome }).is_err() {
            return;
        }
    }
}

/// One attempt at one message: claim, post, settle.
fn attempt(ctx: &Context<'_>, job: &Job) -> Outcome {
    let journal = ctx.journal;
    let label = format!("{}/{}", job.route, printable(&job.name, 200));
    let Some(route) = ctx.route(job.route) else {
        return Outcome::Skipped;
    };
    let mut claim = match route.spool.claim(&job.name) {
        Ok(Some(c)) => c,
        Ok(None) => return Outcome::Skipped,
        Err(e) => {
            journal.error(&format!("{label}: cannot claim: {e}"));
            return Outcome::Error;
        }
    };
    let mut state = claim.state().unwrap_or_else(|e| {
        journal.warn(&format!("{label}: {e}; starting its retry count afresh"));
        State::default()
    });
    let now = unix_now();
    if !ctx.flush && state.next_attempt > now {
        let next_attempt = state.next_attempt;
        return match claim.release(None) {
            Ok(()) => Outcome::NotDue { next_attempt },
            Err(e) => {
                journal.error(&format!("{label}: cannot put back: {e}"));
                Outcome::Error
            }
        };
    }

    let started = Instant::now();
    let (code, verdict) = match claim.read_body() {
        Err(e) => (None, Verdict::Retry(e.to_string())),
        Ok(body) => match sign(route, now) {
            Err(e) => (None, Verdict::Misconfigured(e.to_string())),
            Ok(token) => {
                let reply = ctx.client.post(job.route, &token, &body);
                ctx.metrics.record_post(job.route, reply.code());
                (reply.code(), http::classify(&reply))
            }
        },
    };
    let took = started.elapsed();
    state.attempts = state.attempts.saturating_add(1);
    let attempt_no = state.attempts;
    let status = code.map_or_else(|| "-".to_string(), |c| c.to_string());
    let head = format!(
        "{label}: attempt={attempt_no}, status={status}, duration={:.1}ms",
        took.as_secs_f64() * 1000.0
    );
    let settle_err = |e: StoreError| {
        journal.error(&format!("{label}: {e}; the message stays queued"));
        Outcome::Error
    };

    match verdict {
        Verdict::Delivered => {
            journal.info(&format!("{head}, outcome=delivered"));
            if let Err(e) = claim.delivered(ctx.keep_delivered) {
                // GitLab has it; it will be posted again (the one
                // duplicate the contract allows), but never lost.
                journal.error(&format!("{label}: delivered, but {e}"));
            }
            Outcome::Delivered
        }
        Verdict::Rejected(reason) => {
            journal.warn(&format!(
                "{head}, outcome=failed, reason=\"{}\"",
                quote(&reason)
            ));
            state.last_attempt = Some(now);
            state.last_status = code;
            state.last_error = reason;
            state.failed_at = Some(now);
            match claim.fail(&state) {
                Ok(()) => Outcome::Rejected,
                Err(e) => settle_err(e),
            }
        }
        Verdict::Misconfigured(reason) => {
            // Not the message's fault: never counts towards giving up.
            let next_attempt = now + ctx.policy.delay(attempt_no, random_unit()).as_secs();
            journal.error(&format!(
                "{head}, outcome=misconfigured, next={}s, reason=\"{}\"",
                next_attempt - now,
                quote(&reason)
            ));
            state.last_attempt = Some(now);
            state.last_status = code;
            state.last_error = reason.clone();
            state.next_attempt = next_attempt;
            match claim.release(Some(&state)) {
                Ok(()) => Outcome::Misconfigured {
                    next_attempt,
                    reason,
                },
                Err(e) => settle_err(e),
            }
        }
        Verdict::Retry(reason) => {
            let first = *state.first_failure.get_or_insert(now);
            state.last_attempt = Some(now);
            state.last_status = code;
            if ctx.policy.gives_up(first, now) {
                let hours = ctx.policy.give_up_after().as_secs() / 3600;
                state.last_error = format!(
                    "gave up after {attempt_no} attempt(s) over {hours}h (drain.give_up_after_hours); \
                     last error: {reason}"
                );
                state.failed_at = Some(now);
                journal.error(&format!(
                    "{head}, outcome=failed, reason=\"{}\"",
                    quote(&state.last_error)
                ));
                return match claim.fail(&state) {
                    Ok(()) => Outcome::GaveUp,
                    Err(e) => settle_err(e),
                };
            }
            let next_attempt = now + ctx.policy.delay(attempt_no, random_unit()).as_secs();
            journal.warn(&format!(
                "{head}, outcome=deferred, next={}s, reason=\"{}\"",
                next_attempt - now,
                quote(&reason)
            ));
            state.last_error = reason;
            state.next_attempt = next_attempt;
            match claim.release(Some(&state)) {
                Ok(()) => Outcome::Deferred { next_attempt },
                Err(e) => settle_err(e),
            }
        }
    }
}

fn report_recovery(journal: &Journal, route: Route, (count, problems): (usize, Vec<StoreError>)) {
    if count > 0 {
        journal.warn(&format!(
            "{route}: put back {count} message(s) left in work/ by a drain that died"
        ));
    }
    for e in problems {
        journal.error(&format!("{route}: {e}; the message stays in work/"));
    }
}

/// Reads the route's secret (again: it may have been rotated) and signs a
/// token for this attempt.
fn sign(route: &RouteContext, now: u64) -> Result<String, auth::AuthError> {
    let secret = Secret::load(route.secret_file.as_deref())?;
    secret.token(now, &auth::nonce(crate::random::bytes::<12>()))
}

fn quote(text: &str) -> String {
    printable(text, 300).replace('"', "'")
}

/// A route that failed as a whole: not dispatched again before `until`.
#[derive(Debug, Default)]
struct Hold {
    failures: u32,
    until: Option<Instant>,
}

/// Decides what to post next; runs on the calling thread.
struct Dispatcher<'c, 'a> {
    ctx: &'c Context<'a>,
    options: Options,
    poll: Duration,
    /// Size of the worker pool: at most this many jobs in flight.
    workers: usize,
    pending: VecDeque<Job>,
    in_flight: HashSet<Job>,
    /// Jobs already tried in this run (`once` tries each at most once).
    tried: HashSet<Job>,
    /// Next-attempt times known for messages in `new/`.
    next_attempt: HashMap<Job, u64>,
    holds: HashMap<Route, Hold>,
    last_scan: Option<Instant>,
    last_scan_found: bool,
    last_recover: Instant,
    summary: Summary,
}

impl<'c, 'a> Dispatcher<'c, 'a> {
    fn new(ctx: &'c Context<'a>, options: Options, poll: Duration, workers: usize) -> Self {
        Dispatcher {
            ctx,
            options,
            poll,
            workers,
            pending: VecDeque::new(),
            in_flight: HashSet::new(),
            tried: HashSet::new(),
            next_attempt: HashMap::new(),
            holds: HashMap::new(),
            last_scan: None,
            last_scan_found: false,
            last_recover: Instant::now(),
            summary: Summary::default(),
        }
    }

    fn stopping(&self) -> bool {
        self.ctx.stop.load(Ordering::SeqCst)
    }

    fn run(&mut self, jobs: &Sender<Job>, done: &Receiver<Done>) {
        loop {
            while let Ok(d) = done.try_recv() {
                self.apply(d);
            }
            if self.stopping() {
                return;
            }
            if self.pending.is_empty() {
                let scan_due = self.options.once
                    || self.last_scan_found
                    || self.last_scan.is_none_or(|t| t.elapsed() >= self.poll);
                if scan_due {
                    self.scan();
                }
                if self.pending.is_empty() {
                    if self.options.once && self.in_flight.is_empty() || !self.wait(done) {
                        return;
                    }
                    continue;
                }
            }
            // A job goes out only when a worker is free, so a failure
            // reported by one is applied (and may hold the route) before
            // the next message of that route is sent.
            if self.in_flight.len() >= self.workers {
                if !self.wait(done) {
                    return;
                }
                continue;
            }
            let Some(job) = self.pending.pop_front() else {
                continue;
            };
            if self.held(job.route) || self.in_flight.contains(&job) {
                continue;
            }
            // Never blocks: the channel holds as many jobs as there are
            // workers, and fewer than that are in flight.
            if jobs.send(job.clone()).is_err() {
                return;
            }
            self.in_flight.insert(job.clone());
            if self.options.once {
                self.tried.insert(job);
            }
        }
    }

    /// Waits up to a tick for a result; false when the workers are gone.
    fn wait(&mut self, done: &Receiver<Done>) -> bool {
        match done.recv_timeout(TICK) {
            Ok(d) => {
                self.apply(d);
                true
            }
            Err(RecvTimeoutError::Timeout) => true,
            Err(RecvTimeoutError::Disconnected) => false,
        }
    }

    fn held(&self, route: Route) -> bool {
        self.holds
            .get(&route)
            .and_then(|h| h.until)
            .is_some_and(|until| Instant::now() < until)
    }

    /// Fills `pending` with the messages that may be tried now, oldest
    /// first, across routes.
    fn scan(&mut self) {
        let ctx = self.ctx;
        if self.last_recover.elapsed() >= RECOVER_EVERY {
            self.last_recover = Instant::now();
            for route in &ctx.routes {
                match route.spool.recover() {
                    Ok(found) => report_recovery(ctx.journal, route.spool.route(), found),
                    Err(e) => ctx.journal.error(&e.to_string()),
                }
            }
        }
        let now = unix_now();
        let mut found = Vec::new();
        let mut known = HashMap::new();
        for route in &ctx.routes {
            let r = route.spool.route();
            if self.held(r) {
                // Not scanned now; keep what is known about it.
                known.extend(
                    self.next_attempt
                        .iter()
                        .filter(|(job, _)| job.route == r)
                        .map(|(job, next)| (job.clone(), *next)),
                );
                continue;
            }
            let entries = match route.spool.list(Folder::New) {
                Ok(e) => e,
                Err(e) => {
                    ctx.journal.error(&e.to_string());
                    continue;
                }
            };
            let with_state = route.spool.names_with_state().unwrap_or_default();
            for entry in entries {
                let job = Job {
                    route: r,
                    name: entry.name,
                };
                if self.in_flight.contains(&job) || self.tried.contains(&job) {
                    continue;
                }
                let next = match self.next_attempt.get(&job) {
                    Some(&n) => n,
                    None if with_state.contains(&job.name) => route
                        .spool
                        .read_state(&job.name)
                        .ok()
                        .flatten()
                        .map_or(0, |s| s.next_attempt),
                    None => 0,
                };
                known.insert(job.clone(), next);
                if self.options.flush || next <= now {
                    found.push((entry.arrived, job));
                }
            }
        }
        for route in &ctx.routes {
            let r = route.spool.route();
            let first_seen = known
                .keys()
                .filter(|j| j.route == r && !self.next_attempt.contains_key(*j))
                .count();
            ctx.metrics.record_arrivals(r, first_seen);
        }
        // Forget messages that left new/ (delivered, failed, or taken by
        // another drain); keep what in-flight results will update.
        self.next_attempt = known;
        found.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.name.cmp(&b.1.name)));
        self.last_scan = Some(Instant::now());
        self.last_scan_found = !found.is_empty();
        self.pending = found.into_iter().map(|(_, job)| job).collect();
    }

    /// Takes in one worker's result.
    fn apply(&mut self, done: Done) {
        self.in_flight.remove(&done.job);
        let route = done.job.route;
        if let Some(outcome) = done.outcome.metric() {
            self.ctx.metrics.record_outcome(route, outcome);
        }
        match done.outcome {
            Outcome::Delivered => {
                self.summary.delivered += 1;
                self.release_hold(route);
            }
            Outcome::Rejected => {
                self.summary.rejected += 1;
                self.release_hold(route);
            }
            Outcome::GaveUp => {
                self.summary.gave_up += 1;
                self.hold(route, None);
            }
            Outcome::Deferred { next_attempt } => {
                self.summary.deferred += 1;
                self.next_attempt.insert(done.job, next_attempt);
                self.hold(route, None);
            }
            Outcome::Misconfigured {
                next_attempt,
                reason,
            } => {
                self.summary.misconfigured += 1;
                self.next_attempt.insert(done.job, next_attempt);
                self.hold(route, Some(&reason));
            }
            Outcome::NotDue { next_attempt } => {
                self.next_attempt.insert(done.job, next_attempt);
            }
            Outcome::Skipped => {}
            Outcome::Error => {
                self.summary.errors += 1;
                // Not again at every scan: the error would fill the log.
                let later = unix_now() + self.ctx.policy.delay(1, random_unit()).as_secs().max(60);
                self.next_attempt.insert(done.job, later);
            }
        }
    }

    fn release_hold(&mut self, route: Route) {
        self.ctx.metrics.set_route_held(route, false, false);
        if let Some(hold) = self.holds.remove(&route)
            && hold.failures > 0
        {
            self.ctx.journal.info(&format!(
                "{route}: delivering again after {} failure(s)",
                hold.failures
            ));
        }
    }

    /// Holds `route` back after a failure that is not the message's own.
    /// `misconfigured`: the reason, said loudly once per hold.
    fn hold(&mut self, route: Route, misconfigured: Option<&str>) {
        let ctx = self.ctx;
        ctx.metrics
            .set_route_held(route, true, misconfigured.is_some());
        let hold = self.holds.entry(route).or_default();
        let was_held = hold.until.is_some_and(|u| Instant::now() < u);
        hold.failures = hold.failures.saturating_add(1);
        let delay = ctx.policy.delay(hold.failures, random_unit());
        hold.until = Some(Instant::now() + delay);
        if was_held {
            return;
        }
        let what = if self.options.once {
            "skipping its other messages in this run".to_string()
        } else {
            format!("pausing it for {}s", delay.as_secs())
        };
        match misconfigured {
            Some(reason) => ctx.journal.error(&format!(
                "{route}: GitLab cannot take mail for this route: {}; messages stay queued; \
                 {what}",
                quote(reason)
            )),
            None => ctx
                .journal
                .warn(&format!("{route}: GitLab unavailable; {what}")),
        }
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
