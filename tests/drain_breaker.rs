//! The drain's circuit breaker against the loopback GitLab stand-in: one
//! failure defers its message only, `hold_after_failures` in a row hold
//! the route, a held route is probed once per delay and released by the
//! first success, `Retry-After` is honoured and capped, a hang never
//! stalls the other messages, `queue` shows the hold, and `--once` exits 1
//! while anything is left deferred. Also the benchmark behind
//! `bench/breaker.sh` (ignored: it prints a table, asserts nothing
//! about time).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod drain_support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use drain_support::*;

const SECS: fn(u64) -> Duration = Duration::from_secs;
const MS: fn(u64) -> Duration = Duration::from_millis;

fn accepted_once(gitlab: &GitLab, sent: &[(String, Vec<u8>)]) {
    let accepted = gitlab.accepted();
    for (name, body) in sent {
        assert_eq!(accepted.get(body), Some(&1), "{name} accepted once");
    }
}

fn posts_after(gitlab: &GitLab, t: Instant) -> usize {
    gitlab.posts().iter().filter(|p| p.at >= t).count()
}

#[test]
fn sporadic_failures_defer_their_messages_only() {
    // Two failures, one success, over and over: never three in a row.
    let gitlab = GitLab::start(
        &both_secrets(),
        Mode::Then(
            [Mode::Status(503), Mode::Status(502), Mode::Accept]
                .into_iter()
                .cycle()
                .take(30)
                .collect(),
        ),
    );
    let f = Fixture::new(
        "sporadic",
        &gitlab.url(),
        "concurrency = 1\nhold_after_failures = 3",
    );
    let sent = f.add_many(INCOMING, 0, 30);
    let out = f.run(&["drain", "--once"]);
    let log = stderr(&out);
    // Every message was tried: the route was never held.
    assert_eq!(gitlab.post_count(), 30, "{log}");
    assert!(!log.contains("held until"), "{log}");
    assert_eq!(f.count(INCOMING, "new"), 20);
    // 20 deferred: the pass says so and exits 1.
    assert_eq!(out.status.code(), Some(1), "{log}");
    assert!(
        log.contains("attempts: delivered=10, rejected=0, gave_up=0, deferred=20")
            && log.contains("messages left: deferred=20, held=0"),
        "{log}"
    );
    let out = f.run(&["drain", "--once", "--flush"]);
    assert!(out.status.success(), "{}", stderr(&out));
    accepted_once(&gitlab, &sent);
}

#[test]
fn failures_in_a_row_hold_the_route_and_say_until_when() {
    let gitlab = GitLab::start(&both_secrets(), Mode::Status(503));
    let f = Fixture::new(
        "in-a-row",
        &gitlab.url(),
        "concurrency = 1\nhold_after_failures = 3",
    );
    f.add_many(INCOMING, 0, 10);
    let other = f.add_many(SERVICE_DESK, 100, 1);
    let out = f.run(&["drain", "--once"]);
    let log = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{log}");
    // Three failures of incoming_email; service_desk_email is its own
    // route and is tried too.
    let incoming = gitlab
        .posts()
        .iter()
        .filter(|p| p.route == INCOMING)
        .count();
    assert_eq!(incoming, 3, "{log}");
    assert_eq!(gitlab.post_count(), 3 + other.len(), "{log}");
    let held: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("incoming_email: GitLab unavailable: held until"))
        .collect();
    assert_eq!(held.len(), 1, "logged once: {log}");
    assert!(
        held[0].contains("after 3 failure(s) in a row") && held[0].contains("503"),
        "{log}"
    );
    assert!(log.contains("messages left: deferred=4, held=7"), "{log}");
    assert_eq!(f.count(INCOMING, "new"), 10);
}

#[test]
fn a_held_route_is_probed_once_per_delay_and_released_by_a_success() {
    let gitlab = GitLab::start(&both_secrets(), Mode::Status(503));
    let f = Fixture::new(
        "half-open",
        &gitlab.url(),
        "concurrency = 4\nhold_after_failures = 2\nretry_initial_secs = 1\n\
         retry_max_secs = 2\npoll_interval_secs = 1",
    );
    let sent = f.add_many(INCOMING, 0, 40);
    let mut drain = f.spawn_drain(&[]);
    eventually(SECS(10), "the hold", || drain.log().contains("held until"));
    let held_at = Instant::now();
    std::thread::sleep(SECS(6));
    // The delays are 0.5-1 s, then 1-2 s: at most a probe each, one at a
    // time, in 6 s.
    let probes = posts_after(&gitlab, held_at);
    assert!(
        (1..=7).contains(&probes),
        "{probes} probes:\n{}",
        drain.log()
    );
    let log = drain.log();
    assert!(log.contains("(probe): attempt="), "{log}");
    assert_eq!(log.matches("held until").count(), 1, "{log}");

    gitlab.set_mode(Mode::Accept);
    eventually(SECS(20), "all delivered", || {
        f.count(INCOMING, "new") == 0 && f.count(INCOMING, "work") == 0
    });
    drain.signal(libc::SIGTERM);
    assert!(drain.wait(SECS(10)).success(), "{}", drain.log());
    let log = drain.log();
    let released: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("incoming_email: delivering again: released after"))
        .collect();
    assert_eq!(released.len(), 1, "{log}");
    accepted_once(&gitlab, &sent);
}

#[test]
fn retry_after_is_honoured_and_capped_by_retry_max_secs() {
    // Honoured: 3 s although the schedule would come back after 1 s, and
    // one answer is enough to hold the route.
    let gitlab = GitLab::start(
        &both_secrets(),
        Mode::Then(vec![Mode::RetryAfter(429, "3".into()), Mode::Accept]),
    );
    let f = Fixture::new(
        "retry-after",
        &gitlab.url(),
        "concurrency = 1\nretry_initial_secs = 1\nretry_max_secs = 10\npoll_interval_secs = 1",
    );
    let sent = f.add_many(INCOMING, 0, 5);
    let mut drain = f.spawn_drain(&[]);
    eventually(SECS(20), "all delivered", || gitlab.accepted().len() == 5);
    drain.signal(libc::SIGTERM);
    assert!(drain.wait(SECS(10)).success(), "{}", drain.log());
    let posts = gitlab.posts();
    let gap = posts[1].at - posts[0].at;
    assert!(gap >= MS(2900), "came back after {gap:?}:\n{}", drain.log());
    assert!(drain.log().contains("held until"), "{}", drain.log());
    accepted_once(&gitlab, &sent);

    // Capped: an hour asked, retry_max_secs = 2 given.
    let gitlab = GitLab::start(
        &both_secrets(),
        Mode::Then(vec![
            Mode::RetryAfter(503, "Fri, 31 Dec 2999 23:59:59 GMT".into()),
            Mode::Accept,
        ]),
    );
    let f = Fixture::new(
        "retry-after-cap",
        &gitlab.url(),
        "concurrency = 1\nretry_initial_secs = 1\nretry_max_secs = 2\npoll_interval_secs = 1",
    );
    let (name, _) = f.add(INCOMING, 1, 1);
    let mut drain = f.spawn_drain(&[]);
    eventually(SECS(20), "delivered", || gitlab.accepted().len() == 1);
    drain.signal(libc::SIGTERM);
    assert!(drain.wait(SECS(10)).success(), "{}", drain.log());
    let posts = gitlab.posts();
    let gap = posts[1].at - posts[0].at;
    assert!(
        gap >= MS(1900) && gap < SECS(5),
        "came back after {gap:?}:\n{}",
        drain.log()
    );
    assert!(f.names_in(INCOMING, "new").is_empty(), "{name}");
}

#[test]
fn a_hang_never_blocks_the_other_messages() {
    let gitlab = GitLab::start(
        &both_secrets(),
        Mode::Then(vec![Mode::HangFor(SECS(30)), Mode::Accept]),
    );
    let f = Fixture::new(
        "hang-other",
        &gitlab.url(),
        "concurrency = 1\nrequest_timeout_secs = 8",
    );
    let sent = f.add_many(INCOMING, 0, 20);
    let start = Instant::now();
    let out = f.run(&["drain", "--once"]);
    let log = stderr(&out);
    // The hung one ended by the request timeout and stays deferred.
    assert_eq!(out.status.code(), Some(1), "{log}");
    assert!(start.elapsed() >= SECS(7), "{log}");
    assert_eq!(f.names_in(INCOMING, "new"), vec![sent[0].0.clone()]);
    // With one worker, the other 19 went through long before the timeout.
    let posts = gitlab.posts();
    let first = posts[0].at;
    let last_ok = posts.iter().filter(|p| p.status == 200).map(|p| p.at).max();
    assert_eq!(
        posts.iter().filter(|p| p.status == 200).count(),
        19,
        "{log}"
    );
    assert!(
        last_ok.unwrap() - first < SECS(5),
        "the others waited for the hung one:\n{log}"
    );
    assert!(
        log.contains("timeout") || log.contains("timed out"),
        "{log}"
    );
}

#[test]
fn queue_shows_a_held_route_until_the_hold_ends() {
    let gitlab = GitLab::start(&both_secrets(), Mode::Status(503));
    let f = Fixture::new(
        "queue-held",
        &gitlab.url(),
        "concurrency = 1\nhold_after_failures = 2\nretry_initial_secs = 120\n\
         retry_max_secs = 600",
    );
    f.add_many(INCOMING, 0, 5);
    let mut drain = f.spawn_drain(&[]);
    eventually(SECS(10), "the hold", || drain.log().contains("held until"));
    let q = stdout(&f.run(&["queue"]));
    let line = q
        .lines()
        .find(|l| l.starts_with("incoming_email: held until "))
        .unwrap_or_else(|| panic!("{q}"));
    // "held until HH:MM:SS: <reason>"
    let rest = &line["incoming_email: held until ".len()..];
    assert_eq!(&rest[2..3], ":", "{line}");
    assert_eq!(&rest[5..6], ":", "{line}");
    assert!(
        rest[8..].starts_with(": ") && rest.contains("503"),
        "{line}"
    );
    // Each deferred message waits for the later of its own next attempt
    // and the hold (marked "(route held)" when the hold is later).
    assert!(!q.contains("next=now"), "{q}");
    assert_eq!(q.matches("  next=in ").count(), 2, "{q}");
    // The hold file is no message and no sidecar of one.
    assert!(q.contains("deferred (2):"), "{q}");

    // The drain ends: so does its hold.
    drain.signal(libc::SIGTERM);
    assert!(drain.wait(SECS(10)).success(), "{}", drain.log());
    let q = stdout(&f.run(&["queue"]));
    assert!(!q.contains("held until"), "{q}");
}

#[test]
fn a_hold_left_by_a_killed_drain_is_not_shown() {
    let gitlab = GitLab::start(&both_secrets(), Mode::Status(503));
    let f = Fixture::new(
        "queue-killed",
        &gitlab.url(),
        "concurrency = 1\nhold_after_failures = 1\nretry_initial_secs = 120",
    );
    f.add_many(INCOMING, 0, 2);
    let mut drain = f.spawn_drain(&[]);
    eventually(SECS(10), "the hold", || drain.log().contains("held until"));
    assert!(stdout(&f.run(&["queue"])).contains("held until"));
    drain.signal(libc::SIGKILL);
    let _ = drain.wait(SECS(10));
    let q = stdout(&f.run(&["queue"]));
    assert!(!q.contains("held until"), "{q}");
}

#[test]
fn once_exits_1_while_a_message_is_left_deferred() {
    let gitlab = GitLab::start(&both_secrets(), Mode::Status(502));
    let f = Fixture::new("once-left", &gitlab.url(), "");
    let (name, _) = f.add(INCOMING, 1, 1);
    let out = f.run(&["drain", "--once"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    // The next pass has nothing due: it posts nothing, and still says 1.
    gitlab.set_mode(Mode::Accept);
    let out = f.run(&["drain", "--once"]);
    let log = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{log}");
    assert!(
        log.contains("attempts: delivered=0, rejected=0, gave_up=0, deferred=0")
            && log.contains("messages left: deferred=1, held=0"),
        "{log}"
    );
    assert_eq!(gitlab.post_count(), 1);
    let q = stdout(&f.run(&["queue"]));
    assert!(q.contains(&name) && q.contains("deferred (1):"), "{q}");
    let out = f.run(&["drain", "--once", "--flush"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("messages left: deferred=0, held=0"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_401_still_holds_the_route_at_once_and_loudly() {
    let gitlab = GitLab::start(&both_secrets(), Mode::Accept);
    let f = Fixture::new("401-hold", &gitlab.url(), "concurrency = 1");
    f.write_secret(INCOMING, &[7u8; 32]);
    f.add_many(INCOMING, 0, 5);
    let out = f.run(&["drain", "--once"]);
    let log = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{log}");
    // One request, not hold_after_failures (8) of them.
    assert_eq!(gitlab.post_count(), 1, "{log}");
    let line = log
        .lines()
        .find(|l| l.contains("GitLab cannot take mail for this route"))
        .unwrap_or_else(|| panic!("{log}"));
    assert!(
        line.contains("error") && line.contains("401") && line.contains("held until"),
        "{line}"
    );
    assert!(log.contains("messages left: deferred=1, held=4"), "{log}");
}

#[test]
fn a_400_is_still_final_and_no_failure_of_gitlab() {
    let gitlab = GitLab::start(
        &both_secrets(),
        Mode::Then(vec![
            Mode::Status(400),
            Mode::Status(400),
            Mode::Status(400),
            Mode::Accept,
        ]),
    );
    let f = Fixture::new(
        "400-final",
        &gitlab.url(),
        "concurrency = 1\nhold_after_failures = 1",
    );
    let sent = f.add_many(INCOMING, 0, 5);
    let out = f.run(&["drain", "--once"]);
    let log = stderr(&out);
    assert!(out.status.success(), "{log}");
    assert!(!log.contains("held until"), "{log}");
    assert_eq!(f.count(INCOMING, "failed"), 3);
    assert_eq!(gitlab.post_count(), 5);
    accepted_once(&gitlab, &sent[3..]);
}

// ---------------------------------------------------------------------
// The benchmark (bench/breaker.sh).

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One timed scenario.
struct Run {
    label: String,
    t95: Option<Duration>,
    t100: Option<Duration>,
    requests: usize,
    duplicates: usize,
}

fn duplicates(gitlab: &GitLab) -> usize {
    gitlab.accepted().values().filter(|&&n| n > 1).count()
}

/// Time from the drain's start until `share` of `count` bodies were
/// accepted, from the stand-in's own record.
fn time_to(gitlab: &GitLab, start: Instant, count: usize, share: f64) -> Option<Duration> {
    let need = (count as f64 * share).ceil() as usize;
    let mut seen: HashMap<Vec<u8>, ()> = HashMap::new();
    for p in gitlab.posts() {
        if p.status == 200 && seen.insert(p.body.clone(), ()).is_none() && seen.len() == need {
            return Some(p.at.saturating_duration_since(start));
        }
    }
    None
}

fn drain_settings(concurrency: u64, initial: u64, max: u64, timeout: u64) -> String {
    format!(
        "concurrency = {concurrency}\nretry_initial_secs = {initial}\nretry_max_secs = {max}\n\
         request_timeout_secs = {timeout}\npoll_interval_secs = 1"
    )
}

fn flaky_run(label: &str, failing: f64, count: usize, settings: &str, cap: Duration) -> Run {
    let timeout = env_u64("MAILPIPE_BENCH_TIMEOUT", 5);
    let latency = MS(env_u64("MAILPIPE_BENCH_LATENCY_MS", 50));
    let mode = Mode::Flaky {
        failing,
        hang: SECS(timeout * 2),
        latency,
    };
    let gitlab = GitLab::start(&both_secrets(), mode);
    let f = Fixture::new("bench-breaker", &gitlab.url(), settings);
    f.add_many(INCOMING, 0, count);
    let start = Instant::now();
    let mut drain = f.spawn_drain(&[]);
    while gitlab.accepted().len() < count && start.elapsed() < cap {
        std::thread::sleep(MS(50));
    }
    drain.signal(libc::SIGTERM);
    let _ = drain.wait(SECS(timeout + 30));
    Run {
        label: label.to_string(),
        t95: time_to(&gitlab, start, count, 0.95),
        t100: time_to(&gitlab, start, count, 1.0),
        requests: gitlab.post_count(),
        duplicates: duplicates(&gitlab),
    }
}

/// `bench/breaker.sh`: 1,000 messages through a daemon drain to a
/// stand-in that is healthy, fails 5 % or 20 % at random, or is down for
/// 20 s; prints one table with ratios against the healthy run.
/// `MAILPIPE_BENCH_INITIAL`, `MAILPIPE_BENCH_MAX` (retry delays),
/// `MAILPIPE_BENCH_MESSAGES`, `MAILPIPE_BENCH_CONCURRENCY`,
/// `MAILPIPE_BENCH_TIMEOUT` (request timeout), `MAILPIPE_BENCH_LATENCY_MS`
/// (how long the stand-in takes to accept, default 50) and `MAILPIPE_BENCH_CAP`
/// (seconds a run may take) override.
#[test]
#[ignore = "benchmark; run bench/breaker.sh"]
fn bench_drain_breaker() {
    let count = env_u64("MAILPIPE_BENCH_MESSAGES", 1000) as usize;
    let concurrency = env_u64("MAILPIPE_BENCH_CONCURRENCY", 4);
    let initial = env_u64("MAILPIPE_BENCH_INITIAL", 30);
    let max = env_u64("MAILPIPE_BENCH_MAX", 3600);
    let timeout = env_u64("MAILPIPE_BENCH_TIMEOUT", 5);
    let cap = SECS(env_u64("MAILPIPE_BENCH_CAP", 900));
    let outage = SECS(env_u64("MAILPIPE_BENCH_OUTAGE", 20));
    let settings = drain_settings(concurrency, initial, max, timeout);

    let mut runs = Vec::new();
    for (label, failing) in [
        ("healthy", 0.0),
        ("5% failing", 0.05),
        ("20% failing", 0.20),
    ] {
        runs.push(flaky_run(label, failing, count, &settings, cap));
    }

    // Outage: GitLab answers 503 to everything for `outage`, from before
    // the drain starts; then it is healthy.
    let gitlab = GitLab::start(&both_secrets(), Mode::Status(503));
    let f = Fixture::new("bench-outage", &gitlab.url(), &settings);
    f.add_many(INCOMING, 0, count);
    let start = Instant::now();
    let mut drain = f.spawn_drain(&[]);
    std::thread::sleep(outage);
    let latency = MS(env_u64("MAILPIPE_BENCH_LATENCY_MS", 50));
    gitlab.set_mode(Mode::Slow(latency));
    let up = Instant::now();
    let during = gitlab.post_count();
    let log = drain.log();
    let held_at = log.lines().position(|l| l.contains("held until"));
    let probes = log.matches("(probe): attempt=").count();
    while gitlab.accepted().len() < count && start.elapsed() < cap + outage {
        std::thread::sleep(MS(50));
    }
    drain.signal(libc::SIGTERM);
    let _ = drain.wait(SECS(timeout + 30));
    let after = time_to(&gitlab, up, count, 1.0);
    let first_after = gitlab
        .posts()
        .iter()
        .find(|p| p.status == 200)
        .map(|p| p.at.saturating_duration_since(up));
    let outage_dups = duplicates(&gitlab);
    // The probes the schedule allows in the outage: one per delay, the
    // shortest delays (half the schedule, jitter 0) back to back.
    let mut allowed = 0;
    let mut t = 0.0;
    let mut step = 1u32;
    loop {
        let full = (initial as f64 * 2f64.powi(step as i32 - 1)).min(max as f64);
        t += full / 2.0;
        if t > outage.as_secs_f64() {
            break;
        }
        allowed += 1;
        step += 1;
    }

    let secs = |d: Option<Duration>| {
        d.map_or_else(
            || "> cap".to_string(),
            |d| format!("{:.2}", d.as_secs_f64()),
        )
    };
    let base = runs[0].t95.map(|d| d.as_secs_f64());
    let base100 = runs[0].t100.map(|d| d.as_secs_f64());
    let ratio = |d: Option<Duration>, b: Option<f64>| match (d, b) {
        (Some(d), Some(b)) if b > 0.0 => format!("{:.2}x", d.as_secs_f64() / b),
        _ => "-".to_string(),
    };
    println!(
        "breaker: {count} messages, concurrency {concurrency}, retry {initial}s..{max}s, \
         request timeout {timeout}s, GitLab answers in {}ms, hold_after_failures default",
        env_u64("MAILPIPE_BENCH_LATENCY_MS", 50)
    );
    println!();
    println!(
        "| run | time to 95 % (s) | vs healthy | time to 100 % (s) | vs healthy | requests | duplicates |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: |");
    for r in &runs {
        println!(
            "| {} | {} | {} | {} | {} | {} | {} |",
            r.label,
            secs(r.t95),
            ratio(r.t95, base),
            secs(r.t100),
            ratio(r.t100, base100),
            r.requests,
            r.duplicates
        );
    }
    println!();
    println!("| outage of {}s (503) | value |", outage.as_secs());
    println!("| --- | ---: |");
    println!("| requests during the outage | {during} |");
    println!("| of them probes of the held route | {probes} (the schedule allows {allowed}) |");
    println!(
        "| route held | {} |",
        if held_at.is_some() { "yes" } else { "no" }
    );
    println!(
        "| first message in, after GitLab is back (s) | {} (retry_max_secs {max}) |",
        secs(first_after)
    );
    println!(
        "| all {count} in, after GitLab is back (s) | {} (healthy run: {}) |",
        secs(after),
        secs(runs[0].t100)
    );
    println!("| duplicates | {outage_dups} |");
}
