//! `mailpipe drain`, `queue` and `requeue` end to end: the real binary, a
//! real spool, and a stand-in for GitLab's mail_room API on 127.0.0.1 that
//! verifies every token the way GitLab does (see `drain_support`).
//!
//! Run with `cargo test --test drain`. Nothing but loopback is contacted.
//! `MAILPIPE_DRAIN_VERBOSE=1` prints every command's output;
//! `MAILPIPE_DRAIN_KEEP=1` keeps the folders under /tmp/mailpipe-drain-tests.
//!
//! The benchmark is an ignored test here too, so it shares the stand-in:
//! `bench/drain.sh` runs it in release mode.

// Test code: a failed unwrap is a failed test (clippy.toml allows it in
// #[test] functions; this covers the helpers too).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod drain_support;

use std::collections::HashSet;
use std::fs;
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use drain_support::*;

const SECS: fn(u64) -> Duration = Duration::from_secs;

/// Every message in `sent` was accepted exactly once, and nothing else was.
fn assert_each_accepted_once(gitlab: &GitLab, sent: &[(String, Vec<u8>)]) {
    let accepted = gitlab.accepted();
    for (name, body) in sent {
        assert_eq!(
            accepted.get(body).copied().unwrap_or(0),
            1,
            "{name} accepted {:?} times",
            accepted.get(body)
        );
    }
    assert_eq!(accepted.len(), sent.len(), "unexpected bodies accepted");
}

fn assert_spool_empty(f: &Fixture, route: &str) {
    for folder in ["new", "work", "failed", "state"] {
        assert_eq!(
            f.names_in(route, folder),
            Vec::<String>::new(),
            "{route}/{folder}"
        );
    }
}

#[test]
fn delivers_every_route_with_a_token_gitlab_accepts() {
    let gitlab = GitLab::start(&both_secrets(), Mode::Accept);
    let f = Fixture::new("deliver", &gitlab.url(), "");
    let mut sent = f.add_many(INCOMING, 0, 3);
    sent.extend(f.add_many(SERVICE_DESK, 100, 2));

    let out = f.run(&["drain", "--once"]);
    assert!(out.status.success(), "{}", stderr(&out));

    let posts = gitlab.posts();
    assert_eq!(posts.len(), 5, "{posts:#?}");
    let mut nonces = HashSet::new();
    for p in &posts {
        let claims = p.claims.as_ref().expect("token verified");
        assert_eq!(p.status, 200);
        assert_eq!(p.content_type.as_deref(), Some("text/plain"));
        assert_eq!(p.jose.as_deref(), Some(r#"{"alg":"HS256"}"#));
        assert_eq!(claims["iss"], "gitlab-mailroom");
        let nonce = claims["nonce"].as_str().unwrap();
        assert_eq!(nonce.len(), 24);
        assert!(nonce.bytes().all(|b| b.is_ascii_hexdigit()));
        assert!(nonces.insert(nonce.to_string()), "nonce reused");
        // The body is the spooled file, byte for byte, on its own route.
        let (_, body) = sent.iter().find(|(_, b)| *b == p.body).expect("known body");
        let route = if body.windows(11).any(|w| w == b"for service") {
            SERVICE_DESK
        } else {
            INCOMING
        };
        assert_eq!(p.route, route);
    }
    assert_each_accepted_once(&gitlab, &sent);
    assert_spool_empty(&f, INCOMING);
    assert_spool_empty(&f, SERVICE_DESK);

    // One line per attempt, without content.
    let log = stderr(&out);
    assert_eq!(log.matches("outcome=delivered").count(), 5, "{log}");
    assert!(log.contains("attempt=1, status=200"), "{log}");
    assert!(
        !log.contains("Subject") && !log.contains("message 0"),
        "{log}"
    );
}

#[test]
fn keep_delivered_moves_to_cur_with_the_seen_flag() {
    let gitlab = GitLab::start(&both_secrets(), Mode::Accept);
    let f = Fixture::new("keep", &gitlab.url(), "keep_delivered = true");
    let (name, body) = f.add(INCOMING, 1, 1);
    let out = f.run(&["drain", "--once"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(f.names_in(INCOMING, "cur"), vec![format!("{name}:2,S")]);
    let kept = fs::read(f.folder(INCOMING, "cur").join(format!("{name}:2,S"))).unwrap();
    assert_eq!(kept, body);
    assert_eq!(f.count(INCOMING, "new"), 0);
}

#[test]
fn deliver_then_drain_hands_gitlab_the_spooled_bytes() {
    let gitlab = GitLab::start(&both_secrets(), Mode::Accept);
    let f = Fixture::new("e2e", &gitlab.url(), "");
    // The packaged layout, as tmpfiles.d makes it before any delivery.
    f.make_route(INCOMING);
    let msg = message(INCOMING, 7);
    let mut child = f
        .command(&[
            "deliver",
            "--sender=sender@example.org",
            "--recipient=incoming+abc7@in.example.com",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        child.stdin.take().unwrap().write_all(&msg).unwrap();
    }
    let delivered = child.wait_with_output().unwrap();
    assert!(delivered.status.success(), "{delivered:?}");
    let spooled = f.names_in(INCOMING, "new");
    assert_eq!(spooled.len(), 1);
    let stored = fs::read(f.folder(INCOMING, "new").join(&spooled[0])).unwrap();

    let out = f.run(&["drain", "--once"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let posts = gitlab.posts();
    assert_eq!(posts.len(), 1);
    assert_eq!(
        posts[0].body, stored,
        "GitLab gets exactly what was spooled"
    );
    assert_spool_empty(&f, INCOMING);
}

#[test]
fn rejected_400_goes_to_failed_once_and_requeue_brings_it_back() {
    let gitlab = GitLab::start(&both_secrets(), Mode::Status(400));
    let f = Fixture::new("400", &gitlab.url(), "");
    let (name, body) = f.add(INCOMING, 1, 1);

    let out = f.run(&["drain", "--once"]);
    // A final answer is not a failure of the run.
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(f.names_in(INCOMING, "failed"), vec![name.clone()]);
    assert_eq!(f.count(INCOMING, "new"), 0);
    let state = f.state(INCOMING, &name).expect("reason kept");
    assert_eq!(state["last_status"], 400);
    assert!(
        state["last_error"].as_str().unwrap().contains("too large"),
        "{state}"
    );

    // Never posted again, not even when flushing.
    let out = f.run(&["drain", "--once", "--flush"]);
    assert!(out.status.success());
    assert_eq!(gitlab.post_count(), 1);

    let q = f.run(&["queue"]);
    assert!(q.status.success(), "{}", stderr(&q));
    let listing = stdout(&q);
    assert!(listing.contains("failed (1):"), "{listing}");
    assert!(
        listing.contains(&format!("incoming_email/{name}")),
        "{listing}"
    );
    assert!(listing.contains("400: GitLab refused"), "{listing}");

    // Requeue by the name `queue` printed; then it goes through.
    let r = f.run(&["requeue", &format!("incoming_email/{name}")]);
    assert!(r.status.success(), "{}", stderr(&r));
    assert!(stdout(&r).contains("1 message(s) requeued"));
    assert_eq!(f.names_in(INCOMING, "new"), vec![name.clone()]);
    assert!(f.state(INCOMING, &name).is_none(), "clean slate");
    gitlab.set_mode(Mode::Accept);
    let out = f.run(&["drain", "--once"]);
    assert!(out.status.success());
    assert_eq!(gitlab.accepted().get(&body), Some(&1));
    assert_spool_empty(&f, INCOMING);

    // Requeueing something that is not there is an error.
    let r = f.run(&["requeue", "incoming_email/nonesuch"]);
    assert!(!r.status.success());
    assert!(stderr(&r).contains("not in failed/"), "{}", stderr(&r));
}

#[test]
fn unauthorized_401_keeps_the_message_retries_and_says_so_loudly() {
    let gitlab = GitLab::start(&both_secrets(), Mode::Accept);
    let f = Fixture::new("401", &gitlab.url(), "");
    // A well-formed secret that is not GitLab's.
    f.write_secret(INCOMING, &[9u8; 32]);
    let (name, body) = f.add(INCOMING, 1, 1);

    let out = f.run(&["drain", "--once"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let log = stderr(&out);
    assert!(log.contains("error: ") && log.contains("401"), "{log}");
    assert!(log.contains("outcome=misconfigured"), "{log}");
    assert!(log.contains("messages stay queued"), "{log}");
    assert_eq!(gitlab.posts()[0].status, 401);
    assert!(gitlab.posts()[0].claims.is_err());
    assert_eq!(f.names_in(INCOMING, "new"), vec![name.clone()]);
    let state = f.state(INCOMING, &name).unwrap();
    assert_eq!(state["attempts"], 1);
    assert_eq!(state["last_status"], 401);
    assert!(
        state["first_failure"].is_null(),
        "401 never counts to giving up"
    );

    // The admin fixes the secret; the next attempt goes through.
    f.write_secret(INCOMING, &INCOMING_KEY);
    let out = f.run(&["drain", "--once", "--flush"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(gitlab.accepted().get(&body), Some(&1));
    assert!(stderr(&out).contains("attempt=2, status=200"));
    assert_spool_empty(&f, INCOMING);
}

#[test]
fn a_disabled_mailbox_is_a_401_too() {
    // GitLab with only incoming_email enabled answers 401 for Service Desk.
    let gitlab = GitLab::start(&[(INCOMING, INCOMING_KEY)], Mode::Accept);
    let f = Fixture::new("disabled", &gitlab.url(), "");
    let (name, _) = f.add(SERVICE_DESK, 1, 1);
    let sent = f.add_many(INCOMING, 10, 2);
    let out = f.run(&["drain", "--once"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(f.names_in(SERVICE_DESK, "new"), vec![name]);
    // The other route is not held back by it.
    assert_each_accepted_once(&gitlab, &sent);
}

#[test]
fn server_error_500_keeps_the_message_and_retries_later() {
    let gitlab = GitLab::start(&both_secrets(), Mode::Status(500));
    let f = Fixture::new(
        "500",
        &gitlab.url(),
        "concurrency = 1\nhold_after_failures = 2",
    );
    let sent = f.add_many(INCOMING, 0, 3);

    let out = f.run(&["drain", "--once"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    // Two failures in a row hold the route: no request per message while
    // GitLab is failing.
    assert_eq!(gitlab.post_count(), 2, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("outcome=deferred"),
        "{}",
        stderr(&out)
    );
    assert_eq!(f.count(INCOMING, "new"), 3);
    assert_eq!(f.count(INCOMING, "work"), 0);
    let state = f.state(INCOMING, &sent[0].0).unwrap();
    assert_eq!(state["attempts"], 1);
    assert_eq!(state["last_status"], 500);
    let next = state["next_attempt"].as_u64().unwrap();
    assert!(next > unix_now(), "backoff: {state}");
    assert!(next <= unix_now() + 5, "retry_initial_secs is 5: {state}");

    // Not due yet: a plain pass posts the other, not the deferred ones,
    // and exits 1 because two are still deferred.
    gitlab.set_mode(Mode::Accept);
    let out = f.run(&["drain", "--once"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("messages left: deferred=2, held=0"),
        "{}",
        stderr(&out)
    );
    assert_eq!(gitlab.post_count(), 3);
    assert_eq!(
        f.names_in(INCOMING, "new"),
        vec![sent[0].0.clone(), sent[1].0.clone()]
    );
    let q = stdout(&f.run(&["queue"]));
    assert!(q.contains("deferred (2):") && q.contains("500"), "{q}");

    // Later (or flushed), they go through, once.
    let out = f.run(&["drain", "--once", "--flush"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_each_accepted_once(&gitlab, &sent);
    assert_spool_empty(&f, INCOMING);
}

#[test]
fn a_200_that_is_not_gitlabs_answer_keeps_the_message() {
    let gitlab = GitLab::start(&both_secrets(), Mode::NotGitLab);
    let f = Fixture::new("not-gitlab", &gitlab.url(), "");
    let (name, _) = f.add(INCOMING, 1, 1);
    let out = f.run(&["drain", "--once"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("success"), "{}", stderr(&out));
    assert_eq!(f.names_in(INCOMING, "new"), vec![name]);
}

#[test]
fn a_hanging_gitlab_times_out_and_keeps_the_message() {
    let gitlab = GitLab::start(&both_secrets(), Mode::Hang);
    let f = Fixture::new("hang", &gitlab.url(), "request_timeout_secs = 1");
    let (name, _) = f.add(INCOMING, 1, 1);
    let start = Instant::now();
    let out = f.run(&["drain", "--once"]);
    assert!(start.elapsed() < SECS(10));
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(f.names_in(INCOMING, "new"), vec![name.clone()]);
    let state = f.state(INCOMING, &name).unwrap();
    assert!(
        state["last_error"].as_str().unwrap().contains("timeout"),
        "{state}"
    );
    assert!(state["last_status"].is_null());
}

#[test]
fn gives_up_into_failed_after_the_window_never_deleting() {
    let gitlab = GitLab::start(&both_secrets(), Mode::Status(503));
    let f = Fixture::new("give-up", &gitlab.url(), "give_up_after_hours = 0");
    let (name, body) = f.add(INCOMING, 1, 1);
    let out = f.run(&["drain", "--once"]);
    assert!(stderr(&out).contains("outcome=failed"), "{}", stderr(&out));
    assert_eq!(f.names_in(INCOMING, "failed"), vec![name.clone()]);
    assert_eq!(
        fs::read(f.folder(INCOMING, "failed").join(&name)).unwrap(),
        body
    );
    let state = f.state(INCOMING, &name).unwrap();
    let reason = state["last_error"].as_str().unwrap();
    assert!(reason.starts_with("gave up after 1 attempt"), "{reason}");
    assert!(reason.contains("503"), "{reason}");
    let q = stdout(&f.run(&["queue"]));
    assert!(q.contains("gave up after"), "{q}");
}

#[test]
fn a_server_that_is_down_then_up_gets_every_message_exactly_once() {
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let f = Fixture::new(
        "down-up",
        &url,
        "retry_initial_secs = 1\nretry_max_secs = 2\npoll_interval_secs = 1",
    );
    let sent = f.add_many(INCOMING, 0, 30);

    // A single pass while GitLab is down: nothing lost, nothing stuck.
    let out = f.run(&["drain", "--once"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("GitLab unavailable"),
        "{}",
        stderr(&out)
    );
    assert_eq!(f.count(INCOMING, "new"), 30);
    assert_eq!(f.count(INCOMING, "work"), 0);

    // The daemon, started while it is still down, delivers once it is up.
    let mut drain = f.spawn_drain(&[]);
    std::thread::sleep(Duration::from_millis(1500));
    let gitlab = GitLab::start_on(port, &both_secrets(), Mode::Accept);
    eventually(SECS(30), "the spool to empty", || {
        f.count(INCOMING, "new") == 0 && f.count(INCOMING, "work") == 0
    });
    drain.signal(libc::SIGTERM);
    assert!(drain.wait(SECS(10)).success(), "{}", drain.log());
    assert_each_accepted_once(&gitlab, &sent);
    assert_spool_empty(&f, INCOMING);
}

#[test]
fn two_drains_on_one_spool_never_post_a_message_twice() {
    let gitlab = GitLab::start(&both_secrets(), Mode::Slow(Duration::from_millis(2)));
    let f = Fixture::new("two-drains", &gitlab.url(), "concurrency = 4");
    let mut sent = f.add_many(INCOMING, 0, 150);
    sent.extend(f.add_many(SERVICE_DESK, 1000, 50));

    let mut a = f.spawn_drain(&["--once"]);
    let mut b = f.spawn_drain(&["--once"]);
    assert!(a.wait(SECS(60)).success(), "{}", a.log());
    assert!(b.wait(SECS(60)).success(), "{}", b.log());
    // Both did some of the work, and no body arrived twice.
    let received = gitlab.received();
    assert!(
        received.values().all(|&n| n == 1),
        "a message was posted twice"
    );
    assert_each_accepted_once(&gitlab, &sent);
    assert_spool_empty(&f, INCOMING);
    assert_spool_empty(&f, SERVICE_DESK);
    let (la, lb) = (a.log(), b.log());
    assert!(
        la.contains("outcome=delivered") && lb.contains("outcome=delivered"),
        "both drains should have posted:\n{la}\n{lb}"
    );
}

#[test]
fn sigterm_mid_run_loses_nothing() {
    let gitlab = GitLab::start(&both_secrets(), Mode::Slow(Duration::from_millis(40)));
    let f = Fixture::new("sigterm", &gitlab.url(), "concurrency = 4");
    let sent = f.add_many(INCOMING, 0, 100);
    let mut drain = f.spawn_drain(&[]);
    eventually(SECS(20), "some posts", || gitlab.post_count() >= 10);
    drain.signal(libc::SIGTERM);
    let status = drain.wait(SECS(10));
    assert!(
        status.success(),
        "exit 0 on SIGTERM: {status:?}\n{}",
        drain.log()
    );
    assert!(drain.log().contains("stopping"), "{}", drain.log());

    // The posts in flight finished and settled: nothing left in work/,
    // and every message is either accepted once or still queued.
    assert_eq!(f.count(INCOMING, "work"), 0);
    let accepted = gitlab.accepted();
    let queued: HashSet<String> = f.names_in(INCOMING, "new").into_iter().collect();
    assert!(!queued.is_empty(), "stopped before the end");
    for (name, body) in &sent {
        let times = accepted.get(body).copied().unwrap_or(0);
        assert!(
            (times == 1) != queued.contains(name),
            "{name}: accepted {times} time(s), queued {}",
            queued.contains(name)
        );
    }
    let out = f.run(&["drain", "--once"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_each_accepted_once(&gitlab, &sent);
    assert_spool_empty(&f, INCOMING);
}

#[test]
fn sigkill_mid_run_loses_nothing_and_reposts_at_most_what_was_in_flight() {
    let gitlab = GitLab::start(&both_secrets(), Mode::Slow(Duration::from_millis(40)));
    let f = Fixture::new("sigkill", &gitlab.url(), "concurrency = 4");
    let sent = f.add_many(INCOMING, 0, 100);
    let mut drain = f.spawn_drain(&[]);
    eventually(SECS(20), "some posts", || gitlab.post_count() >= 10);
    drain.signal(libc::SIGKILL);
    drain.wait(SECS(10));
    std::thread::sleep(Duration::from_millis(100)); // let the stand-in answer

    let out = f.run(&["drain", "--once"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_spool_empty(&f, INCOMING);
    let received = gitlab.received();
    let mut twice = 0;
    for (name, body) in &sent {
        match received.get(body).copied().unwrap_or(0) {
            0 => panic!("{name} lost"),
            1 => {}
            2 => twice += 1,
            n => panic!("{name} posted {n} times"),
        }
    }
    assert!(twice <= 4, "{twice} re-posted; at most the 4 in flight");
}

#[test]
fn orphans_in_work_are_put_back_but_a_live_claim_is_left_alone() {
    let gitlab = GitLab::start(&both_secrets(), Mode::Accept);
    let f = Fixture::new("orphans", &gitlab.url(), "");
    let sent = f.add_many(INCOMING, 0, 2);
    // Prepare the folders, then fake a dead drain and a live one.
    assert!(f.run(&["queue"]).status.success());
    let work = f.folder(INCOMING, "work");
    fs::create_dir_all(&work).unwrap();
    for (name, _) in &sent {
        fs::rename(f.folder(INCOMING, "new").join(name), work.join(name)).unwrap();
    }
    let held = fs::File::open(work.join(&sent[1].0)).unwrap();
    // SAFETY: flock on our own descriptor.
    assert_eq!(
        unsafe { libc::flock(held.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) },
        0
    );
    let q = stdout(&f.run(&["queue"]));
    let row = q.lines().find(|l| l.starts_with(INCOMING)).unwrap();
    let cols: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(&cols[1..6], ["0", "0", "1", "1", "0"], "{q}");

    let out = f.run(&["drain", "--once"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("put back 1 message"),
        "{}",
        stderr(&out)
    );
    assert_eq!(gitlab.accepted().get(&sent[0].1), Some(&1));
    assert!(
        !gitlab.accepted().contains_key(&sent[1].1),
        "live claim posted"
    );
    assert_eq!(f.names_in(INCOMING, "work"), vec![sent[1].0.clone()]);
    drop(held);
}

/// Files a killed delivery left in the Maildir's tmp/ are removed after 36
/// hours (maildir(5), https://cr.yp.to/proto/maildir.html); younger ones are left alone.
#[test]
fn abandoned_tmp_files_are_removed_after_36_hours() {
    let gitlab = GitLab::start(&both_secrets(), Mode::Accept);
    let f = Fixture::new("tmp-reaper", &gitlab.url(), "");
    assert!(f.run(&["queue"]).status.success());
    f.make_route(INCOMING);
    let tmp = f.folder(INCOMING, "tmp");
    let (old, young) = (tmp.join("1.M1P1.old"), tmp.join("2.M2P2.young"));
    fs::write(&old, b"partial").unwrap();
    fs::write(&young, b"being written").unwrap();
    let when = std::time::SystemTime::now() - std::time::Duration::from_secs(37 * 3600);
    fs::File::options()
        .write(true)
        .open(&old)
        .unwrap()
        .set_modified(when)
        .unwrap();
    let out = f.run(&["drain", "--once"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!old.exists(), "a 37-hour-old tmp file is removed");
    assert!(young.exists(), "a fresh tmp file is a delivery in progress");
}

#[test]
fn oldest_first_across_routes() {
    let gitlab = GitLab::start(&both_secrets(), Mode::Accept);
    let f = Fixture::new("order", &gitlab.url(), "concurrency = 1");
    // Written newest first, so directory order cannot be the reason.
    let c = f.add(INCOMING, 3, 30);
    let b = f.add(SERVICE_DESK, 2, 20);
    let a = f.add(INCOMING, 1, 10);
    let out = f.run(&["drain", "--once"]);
    assert!(out.status.success());
    let order: Vec<Vec<u8>> = gitlab.posts().into_iter().map(|p| p.body).collect();
    assert_eq!(order, vec![a.1, b.1, c.1]);
}

#[test]
fn broken_setups_exit_1_before_posting_anything() {
    let gitlab = GitLab::start(&both_secrets(), Mode::Accept);
    let f = Fixture::new("broken", &gitlab.url(), "");
    f.add(INCOMING, 1, 1);

    f.write_config_text(&f.config_text(false));
    let out = f.run(&["drain", "--once"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("gitlab.url is not set"),
        "{}",
        stderr(&out)
    );
    f.write_config();

    fs::write(f.secret_path(SERVICE_DESK), "c2hvcnQ=\n").unwrap();
    let out = f.run(&["drain", "--once"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("service_desk_email.secret_file") && err.contains("GitLab requires 32"),
        "{err}"
    );
    assert!(!err.contains("c2hvcnQ"), "never print the secret: {err}");

    fs::remove_file(f.secret_path(SERVICE_DESK)).unwrap();
    let out = f.run(&["drain", "--once"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("cannot read secret file"));
    f.write_secret(SERVICE_DESK, &SERVICE_DESK_KEY);

    f.write_config_text("[incoming_email]\nbogus = 1\n");
    let out = f.run(&["drain", "--once"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("unknown field"), "{}", stderr(&out));
    f.write_config();

    fs::remove_dir_all(&f.spool).unwrap();
    let out = f.run(&["drain", "--once"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("spool directory"), "{}", stderr(&out));

    assert_eq!(gitlab.post_count(), 0);
}

/// `bench/drain.sh`: 1,000 small messages through one drain pass to the
/// loopback stand-in (which verifies every token), in messages per second.
/// `MAILPIPE_BENCH_MESSAGES` and `MAILPIPE_BENCH_CONCURRENCY` override.
#[test]
#[ignore = "benchmark; run bench/drain.sh"]
fn bench_drain_small_messages() {
    let count: usize = std::env::var("MAILPIPE_BENCH_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let concurrency: usize = std::env::var("MAILPIPE_BENCH_CONCURRENCY")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4);
    let gitlab = GitLab::start(&both_secrets(), Mode::Accept);
    let f = Fixture::new(
        "bench",
        &gitlab.url(),
        &format!("concurrency = {concurrency}"),
    );
    let sent = f.add_many(INCOMING, 0, count);
    let start = Instant::now();
    let out = f.run(&["drain", "--once"]);
    let took = start.elapsed();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_each_accepted_once(&gitlab, &sent);
    let size = sent.iter().map(|(_, b)| b.len()).sum::<usize>() / count;
    println!(
        "drain: {count} messages of {size} bytes, concurrency {concurrency}: {:.2}s, \
         {:.0} messages/s",
        took.as_secs_f64(),
        count as f64 / took.as_secs_f64()
    );
}

#[test]
fn folders_the_drain_makes_follow_the_layout() {
    // The packaging (tmpfiles.d) makes the spool root 2750
    // mailpipe-drain:mailpipe; the drain makes the rest with the modes of
    // src/layout.rs, setgid kept, owned by the account it became.
    let gitlab = GitLab::start(&both_secrets(), Mode::Accept);
    let f = Fixture::new("layout", &gitlab.url(), "");
    let out = f.run(&["drain", "--once"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let (drain_uid, _) = drain_support::ids("mailpipe-drain", "mailpipe");
    for route in [INCOMING, SERVICE_DESK] {
        for folder in mailpipe::layout::Folder::ALL {
            let meta = fs::metadata(f.folder(route, folder.as_str())).unwrap();
            assert_eq!(
                meta.permissions().mode() & 0o7777,
                folder.mode(),
                "{route}/{folder:?}"
            );
            assert_eq!(
                std::os::unix::fs::MetadataExt::uid(&meta),
                drain_uid,
                "{route}/{folder:?}"
            );
        }
    }
}

#[test]
fn messages_of_an_unconfigured_route_are_listed_and_left_alone() {
    let gitlab = GitLab::start(&both_secrets(), Mode::Accept);
    let f = Fixture::new("unconfigured", &gitlab.url(), "");
    let (name, _) = f.add(SERVICE_DESK, 1, 1);
    let text = f.config_text(true);
    let (start, end) = (
        text.find("[service_desk_email]").unwrap(),
        text.find("[gitlab]").unwrap(),
    );
    f.write_config_text(&format!("{}{}", &text[..start], &text[end..]));

    let out = f.run(&["drain", "--once"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("not configured"), "{}", stderr(&out));
    assert_eq!(gitlab.post_count(), 0);
    assert_eq!(f.names_in(SERVICE_DESK, "new"), vec![name]);
    let q = stdout(&f.run(&["queue"]));
    assert!(q.contains("service_desk_email is not configured"), "{q}");
    let row = q.lines().find(|l| l.starts_with(SERVICE_DESK)).unwrap();
    assert_eq!(row.split_whitespace().nth(1), Some("1"), "{q}");
}
