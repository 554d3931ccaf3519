//! The dispatcher: decides what to post next, on the calling thread. It
//! scans `new/` of every route, drops what is in flight or not due, sorts
//! the rest oldest first, feeds the workers, and runs each route's breaker
//! (`breaker.rs`): per-message backoff, a route held only after
//! `drain.hold_after_failures` GitLab-level failures in a row, half-open
//! probes, and the hold record `mailpipe queue` shows.
//!
//! Must not: touch a message (workers do, through claims), or let one
//! route's trouble hold another.
//! Fails: never; spool errors are logged and retried later.

// The drain's shared types, constants and imports (src/drain/mod.rs).
use super::attempt::{Done, Job, Outcome, quote, report_recovery};
use super::*;

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
pub(super) struct Dispatcher<'c, 'a> {
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
    pub(super) summary: Summary,
}

impl<'c, 'a> Dispatcher<'c, 'a> {
    pub(super) fn new(
        ctx: &'c Context<'a>,
        options: Options,
        poll: Duration,
        workers: usize,
    ) -> Self {
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
    pub(super) fn run(
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
            // state/ is listed only when a message is new to this drain:
            // a steady queue is known from the last scan.
            let mut with_state = None;
            let mut first_seen = 0;
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
                    None => {
                        first_seen += 1;
                        let with_state = with_state.get_or_insert_with(|| {
                            route.spool.names_with_state().unwrap_or_default()
                        });
                        if with_state.contains(&job.name) {
                            route
                                .spool
                                .read_state(&job.name)
                                .ok()
                                .flatten()
                                .map_or(0, |s| s.next_attempt)
                        } else {
                            0
                        }
                    }
                };
                known.insert(job.clone(), next);
                if self.options.flush || next <= now {
                    found.push((entry.arrived, job));
                }
            }
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
    pub(super) fn apply(&mut self, done: Done) {
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
                ctx.metrics.set_route_held(route, false, false);
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
    pub(super) fn end_holds(&mut self) {
        let routes: Vec<Route> = self.hold_files.iter().copied().collect();
        for route in routes {
            self.remove_hold(route);
        }
    }

    /// `--once`: what is still queued because of a failure, counted by
    /// `snapshot::count` (the one place that decides a message's state):
    /// deferred messages, and those waiting behind a held route.
    pub(super) fn count_left(&mut self) {
        self.summary.left_counted = true;
        for r in &self.ctx.routes {
            let route = r.spool.route();
            let mut c = super::snapshot::RouteCounts::new(route, true);
            // `new/` is counted first: an error in a later folder leaves
            // its counts as they are, an unreadable `new/` leaves zero.
            let _ = super::snapshot::count(&r.spool, &mut c, |_| {});
            self.summary.left_deferred += c.deferred;
            if self.breakers.get(&route).is_some_and(Breaker::is_held) {
                self.summary.left_held += c.waiting;
            }
        }
    }
}
