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

pub mod auth;
pub mod breaker;
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
pub fn command(args: &DrainArgs) -> AdminOutcome {
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
    let options = Options {
        once: args.once,
        flush: args.flush,
    };
    let result = Config::load_all(&args.config)
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
    GaveUp {
        failure: Option<Failure>,
    },
    /// Kept; `next_attempt` is when it may be tried again. `failure`:
    /// what it says about GitLab (none for a spool read error).
    Deferred {
        next_attempt: u64,
        failure: Option<Failure>,
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
            Outcome::GaveUp { .. } => Some("gave_up"),
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
    /// How long GitLab took to answer, when it did.
    answered_in: Option<Duration>,
}

fn worker(ctx: &Context<'_>, jobs: &Receiver<(Job, bool)>, done: &Sender<Done>) {
    for (job, probe) in jobs.iter() {
        let mut answered_in = None;
        let outcome = if ctx.stop.load(Ordering::SeqCst) {
            // Stopping: what is still queued stays in new/ untouched.
            Outcome::Skipped
        } else {
            attempt(ctx, &job, probe, &mut answered_in)
        };
        let done_msg = Done {
            job,
            outcome,
            answered_in,
        };
        if done.send(done_msg).is_err() {
            return;
        }
    }
}

/// One attempt at one message: claim, post, settle. `answered_in`: how
/// long GitLab took to answer, when it did.
fn attempt(
    ctx: &Context<'_>,
    job: &Job,
    probe: bool,
    answered_in: &mut Option<Duration>,
) -> Outcome {
    let journal = ctx.journal;
    let label = format!(
        "{}/{}{}",
        job.route,
        printable(&job.name, 200),
        if probe { " (probe)" } else { "" }
    );
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
    // `posted`: GitLab was asked, so a failure says something about it.
    let (code, verdict, retry_after, posted) = if claim.oversized() {
        // deliver never stores more than limits.max_message_bytes plus one
        // header line: this file was put there by someone else (or the
        // limit was lowered since). Never read into memory, never posted.
        (
            None,
            Verdict::Rejected(format!(
                "{} bytes, larger than anything deliver stores ({} bytes: \
                 limits.max_message_bytes plus one header line); not posted",
                claim.size(),
                claim.max_body()
            )),
            None,
            false,
        )
    } else {
        match sign(route, now) {
            Err(e) => (None, Verdict::Misconfigured(e.to_string()), None, false),
            Ok(token) => {
                let size = claim.size();
                match claim.body() {
                    Err(e) => (None, Verdict::Retry(e.to_string()), None, false),
                    Ok(body) => {
                        let reply = ctx.client.post(job.route, &token, size, body);
                        ctx.metrics.record_post(job.route, reply.code());
                        (
                            reply.code(),
                            http::classify(&reply),
                            reply.retry_after(),
                            true,
                        )
                    }
                }
            }
        }
    };
    let took = started.elapsed();
    if code.is_some() {
        *answered_in = Some(took);
    }
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
            let failure = posted.then(|| match retry_after {
                Some(after) if !after.is_zero() => Failure::RetryAfter(reason.clone(), after),
                _ => Failure::Gitlab(reason.clone()),
            });
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
                    Ok(()) => Outcome::GaveUp { failure },
                    Err(e) => settle_err(e),
                };
            }
            // Its own backoff, and never before what GitLab asked for.
            let wait = ctx
                .policy
                .delay(attempt_no, random_unit())
                .max(retry_after.map_or(Duration::ZERO, |a| ctx.policy.cap(a)));
            let next_attempt = now + wait.as_secs();
            journal.warn(&format!(
                "{head}, outcome=deferred, next={}s, reason=\"{}\"",
                next_attempt - now,
                quote(&reason)
            ));
            state.last_error = reason;
            state.next_attempt = next_attempt;
            match claim.release(Some(&state)) {
                Ok(()) => Outcome::Deferred {
                    next_attempt,
                    failure,
                },
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

/// One job being posted.
#[derive(Debug, Clone, Copy)]
struct Flight {
    since: Instant,
    /// The half-open probe of its route.
    probe: bool,
    /// Presumed hung: already counted as a failure, no longer takes a
    /// worker slot.
    hung: bool,
}

/// Decides what to post next; runs on the calling thread.
struct Dispatcher<'c, 'a> {
    ctx: &'c Context<'a>,
    options: Options,
    poll: Duration,
    /// `drain.concurrency`: at most this many requests not presumed hung.
    workers: usize,
    /// Worker threads started (workers, plus spares for hung requests).
    threads: usize,
    pending: VecDeque<Job>,
    in_flight: HashMap<Job, Flight>,
    /// Jobs already tried in this run (`once` tries each at most once).
    tried: HashSet<Job>,
    /// Next-attempt times known for messages in `new/`.
    next_attempt: HashMap<Job, u64>,
    /// The breakers' clock starts here.
    origin: Instant,
    breakers: HashMap<Route, Breaker>,
    /// Routes whose hold file this drain wrote.
    hold_files: HashSet<Route>,
    latency: Latency,
    /// Scan at once: a hold was released.
    rescan: bool,
    last_scan: Option<Instant>,
    /// `last_scan` on the breakers' clock.
    last_scan_at: Duration,
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
            threads: workers,
            pending: VecDeque::new(),
            in_flight: HashMap::new(),
            tried: HashSet::new(),
            next_attempt: HashMap::new(),
            origin: Instant::now(),
            breakers: HashMap::new(),
            hold_files: HashSet::new(),
            latency: Latency::new(ctx.request_timeout),
            rescan: false,
            last_scan: None,
            last_scan_at: Duration::ZERO,
            last_scan_found: false,
            last_recover: Instant::now(),
            summary: Summary::default(),
        }
    }

    fn stopping(&self) -> bool {
        self.ctx.stop.load(Ordering::SeqCst)
    }

    fn now(&self) -> Duration {
        self.origin.elapsed()
    }

    fn breaker(&mut self, route: Route) -> &mut Breaker {
        let threshold = self.ctx.hold_after;
        self.breakers
            .entry(route)
            .or_insert_with(|| Breaker::new(threshold))
    }

    fn blocked(&self, route: Route) -> bool {
        self.breakers
            .get(&route)
            .is_some_and(|b| b.blocked(self.now()))
    }

    /// Requests that take up a worker slot.
    fn active(&self) -> usize {
        self.in_flight.values().filter(|f| !f.hung).count()
    }

    /// `spawn` starts one more worker thread; false when it cannot.
    fn run(
        &mut self,
        jobs: &Sender<(Job, bool)>,
        done: &Receiver<Done>,
        spawn: &mut dyn FnMut() -> bool,
    ) {
        loop {
            while let Ok(d) = done.try_recv() {
                self.apply(d);
            }
            if self.stopping() {
                return;
            }
            self.presume_hung();
            if self.pending.is_empty() {
                let scan_due = self.options.once
                    || self.last_scan_found
                    || self.rescan
                    || self.hold_ended()
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
            // A job goes out only when a worker slot is free, so a failure
            // reported by one is applied (and may hold the route) before
            // the next message of that route is sent.
            if self.active() >= self.workers {
                if !self.wait(done) {
                    return;
                }
                continue;
            }
            let Some(job) = self.pending.pop_front() else {
                continue;
            };
            if self.in_flight.contains_key(&job) {
                continue;
            }
            // Every thread busy (some with hung requests): one more, up to
            // the cap; else wait for one to come back.
            if self.in_flight.len() >= self.threads {
                if self.threads < self.workers + MAX_HUNG && spawn() {
                    self.threads += 1;
                } else {
                    self.pending.push_front(job);
                    if !self.wait(done) {
                        return;
                    }
                    continue;
                }
            }
            let now = self.now();
            let probe = match self.breaker(job.route).admit(now) {
                Admit::Wait => continue,
                Admit::Send => false,
                Admit::Probe => true,
            };
            // Never blocks: the channel holds as many jobs as there can be
            // threads, and a thread is free for this one.
            if jobs.send((job.clone(), probe)).is_err() {
                return;
            }
            let flight = Flight {
                since: Instant::now(),
                probe,
                hung: false,
            };
            self.in_flight.insert(job.clone(), flight);
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

    /// True when a held route's wait ended since the last scan (its probe
    /// is due, if a message is).
    fn hold_ended(&self) -> bool {
        let now = self.now();
        self.breakers.values().any(|b| {
            b.held_until()
                .is_some_and(|until| until > self.last_scan_at && until <= now)
        })
    }

    /// Counts requests that take far longer than GitLab's answers do as
    /// failures, and frees their worker slots.
    fn presume_hung(&mut self) {
        let limit = self.latency.hung_after();
        let late: Vec<(Job, bool)> = self
            .in_flight
            .iter_mut()
            .filter(|(_, f)| !f.hung && f.since.elapsed() >= limit)
            .map(|(job, f)| {
                f.hung = true;
                (job.clone(), f.probe)
            })
            .collect();
        for (job, probe) in late {
            let failure = Failure::Gitlab(format!(
                "no answer after {:.1}s (presumed hung)",
                limit.as_secs_f64()
            ));
            self.failure(job.route, probe, &failure);
        }
    }

    /// Fills `pending` with the messages that may be tried now, oldest
    /// first, across routes.
    fn scan(&mut self) {
        let ctx = self.ctx;
        self.rescan = false;
        self.last_scan_at = self.now();
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
            if self.blocked(r) {
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
                if self.in_flight.contains_key(&job) || self.tried.contains(&job) {
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
        let flight = self.in_flight.remove(&done.job);
        let probe = flight.is_some_and(|f| f.probe);
        // A hung request was counted as a failure when presumed so.
        let counted = flight.is_some_and(|f| f.hung);
        if let Some(took) = done.answered_in {
            self.latency.observe(took);
        }
        let route = done.job.route;
        if let Some(outcome) = done.outcome.metric() {
            self.ctx.metrics.record_outcome(route, outcome);
        }
        let failure = match done.outcome {
            Outcome::Delivered => {
                self.summary.delivered += 1;
                self.success(route);
                return;
            }
            Outcome::Rejected => {
                self.summary.rejected += 1;
                self.success(route);
                return;
            }
            Outcome::GaveUp { failure } => {
                self.summary.gave_up += 1;
                failure
            }
            Outcome::Deferred {
                next_attempt,
                failure,
            } => {
                self.summary.deferred += 1;
                self.next_attempt.insert(done.job, next_attempt);
                failure
            }
            Outcome::Misconfigured {
                next_attempt,
                reason,
            } => {
                self.summary.misconfigured += 1;
                self.next_attempt.insert(done.job, next_attempt);
                Some(Failure::Route(reason))
            }
            Outcome::NotDue { next_attempt } => {
                self.next_attempt.insert(done.job, next_attempt);
                None
            }
            Outcome::Skipped => None,
            Outcome::Error => {
                self.summary.errors += 1;
                // Not again at every scan: the error would fill the log.
                let later = unix_now() + self.ctx.policy.delay(1, random_unit()).as_secs().max(60);
                self.next_attempt.insert(done.job, later);
                None
            }
        };
        match failure {
            Some(failure) if !counted => self.failure(route, probe, &failure),
            // A probe that told nothing (and is not the reason of a newer
            // hold): the next due message probes.
            None if probe && !counted => self.breaker(route).probe_void(),
            _ => {}
        }
    }

    fn success(&mut self, route: Route) {
        if let Some(event) = self.breaker(route).success() {
            self.report(route, &event, false);
        }
    }

    fn failure(&mut self, route: Route, probe: bool, failure: &Failure) {
        let (now, unit) = (self.now(), random_unit());
        let policy = self.ctx.policy;
        let event = self
            .breaker(route)
            .failure(now, probe, failure, &policy, unit);
        if let Some(event) = event {
            self.report(route, &event, matches!(failure, Failure::Route(_)));
        }
    }

    /// Logs a hold once when it starts and once when it ends, and keeps the
    /// hold file `queue` reads up to date. `misconfigured`: said as an
    /// error, since only the admin can end it.
    fn report(&mut self, route: Route, event: &Event, misconfigured: bool) {
        let ctx = self.ctx;
        let now = self.now();
        let wall =
            |until: Duration| unix_now() + until.saturating_sub(now).as_secs_f64().ceil() as u64;
        match event {
            Event::Held {
                until,
                reason,
                failures,
            } => {
                let end = wall(*until);
                let what = if self.options.once {
                    "skipping its other messages in this run".to_string()
                } else {
                    "then one probe per delay until GitLab answers".to_string()
                };
                let when = format!(
                    "held until {} (in {}s)",
                    breaker::clock_time(end),
                    end.saturating_sub(unix_now())
                );
                if misconfigured {
                    ctx.journal.error(&format!(
                        "{route}: GitLab cannot take mail for this route: {}; messages stay \
                         queued; {when}, {what}",
                        quote(reason)
                    ));
                } else {
                    ctx.journal.warn(&format!(
                        "{route}: GitLab unavailable: {when} after {failures} failure(s) in a \
                         row, {what}; last error: {}",
                        quote(reason)
                    ));
                }
                self.write_hold(route, end, reason);
                ctx.metrics.set_route_held(route, true, misconfigured);
            }
            Event::Extended { until, reason } => {
                self.write_hold(route, wall(*until), reason);
            }
            Event::Released { since, probes } => {
                ctx.journal.info(&format!(
                    "{route}: delivering again: released after {}s held, {probes} failed \
                     probe(s)",
                    now.saturating_sub(*since).as_secs()
                ));
                self.remove_hold(route);
                self.rescan = true;
            }
        }
    }

    fn write_hold(&mut self, route: Route, until: u64, reason: &str) {
        let Some(spool) = self.ctx.route(route).map(|r| &r.spool) else {
            return;
        };
        let record = HoldRecord {
            until,
            reason: printable(reason, 300),
            pid: std::process::id(),
        };
        let Some(state) = spool.state_dir() else {
            return;
        };
        match breaker::write_hold(state, &record) {
            Ok(()) => {
                self.hold_files.insert(route);
            }
            Err(e) => self.ctx.journal.warn(&format!(
                "{route}: cannot record the hold for `mailpipe queue`: {e}"
            )),
        }
    }

    fn remove_hold(&mut self, route: Route) {
        if !self.hold_files.remove(&route) {
            return;
        }
        if let Some(r) = self.ctx.route(route)
            && let Some(state) = r.spool.state_dir()
            && let Err(e) = breaker::remove_hold(state)
        {
            self.ctx
                .journal
                .warn(&format!("{route}: cannot remove the hold record: {e}"));
        }
    }

    /// The drain ends: its holds end with it.
    fn end_holds(&mut self) {
        let routes: Vec<Route> = self.hold_files.iter().copied().collect();
        for route in routes {
            self.remove_hold(route);
        }
    }

    /// `--once`: what is still queued because of a failure.
    fn count_left(&mut self) {
        self.summary.left_counted = true;
        for r in &self.ctx.routes {
            let route = r.spool.route();
            let Ok(entries) = r.spool.list(Folder::New) else {
                continue;
            };
            let with_state = r.spool.names_with_state().unwrap_or_default();
            let held = self.breakers.get(&route).is_some_and(Breaker::is_held);
            for entry in entries {
                let deferred = with_state.contains(&entry.name)
                    && r.spool
                        .read_state(&entry.name)
                        .ok()
                        .flatten()
                        .is_some_and(|s| s.attempts > 0);
                if deferred {
                    self.summary.left_deferred += 1;
                } else if held {
                    self.summary.left_held += 1;
                }
            }
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
