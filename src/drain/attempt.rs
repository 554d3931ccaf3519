//! One attempt at one message, on a worker thread: claim it, check its
//! size, sign a fresh token, stream it to GitLab, and settle it (removed,
//! `failed/`, or back to `new/` with its retry state), reporting what became
//! of it to the dispatcher.
//!
//! Must not: parse mail, decide for the route (the breaker in the
//! dispatcher does), or lose a message: every path settles the claim or
//! leaves it to `Claim`'s drop, which puts it back.
//! Fails: into an [`Outcome`]; a spool error is `Outcome::Error`, the
//! message kept.

// The drain's shared types, constants and imports (src/drain/mod.rs).
use super::*;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct Job {
    pub(super) route: Route,
    pub(super) name: String,
}

/// What became of one job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Outcome {
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
    pub(super) fn metric(&self) -> Option<&'static str> {
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

pub(super) struct Done {
    pub(super) job: Job,
    pub(super) outcome: Outcome,
    /// How long GitLab took to answer, when it did.
    pub(super) answered_in: Option<Duration>,
}

pub(super) fn worker(ctx: &Context<'_>, jobs: &Receiver<(Job, bool)>, done: &Sender<Done>) {
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

pub(super) fn report_recovery(
    journal: &Journal,
    route: Route,
    (count, problems): (usize, Vec<StoreError>),
) {
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

pub(super) fn quote(text: &str) -> String {
    printable(text, 300).replace('"', "'")
}
