//! Operating mailpipe: the drain's Prometheus metrics (loopback listener
//! and node_exporter textfile, checked by `promtool check metrics` and
//! against the spool the test built), `mailpipe health` in each plugin
//! state from a real situation, and `mailpipe queue --format json`.
//!
//! Run with `cargo test --test operations` (root: the full-spool case
//! mounts a tmpfs; promtool comes from Debian's `prometheus` package,
//! installed by scripts/install-test-deps). Only 127.0.0.1 is contacted.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod drain_support;

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use drain_support::*;

const SECS: fn(u64) -> Duration = Duration::from_secs;

/// Spools message `n` into `route/new/` as if it arrived `age` seconds ago.
fn add_aged(f: &Fixture, route: &str, n: usize, age: u64) -> String {
    f.make_route(route);
    let new = f.folder(route, "new");
    let name = format!(
        "{}.M{:06}P{}R{:016x}.testhost",
        unix_now() - age,
        n,
        std::process::id(),
        n
    );
    fs::write(new.join(&name), message(route, n)).unwrap();
    name
}

/// Puts a message straight into `route/failed/` with the sidecar a drain
/// leaves there.
fn add_failed(f: &Fixture, route: &str, n: usize) {
    f.make_route(route);
    let name = format!("1700000000.M{n:06}P1R{n:016x}.testhost");
    fs::write(f.folder(route, "failed").join(&name), message(route, n)).unwrap();
    fs::write(
        f.folder(route, "state").join(&name),
        r#"{"attempts":1,"last_status":400,"last_error":"GitLab answered 400","failed_at":1700000100}"#,
    )
    .unwrap();
}

/// The value of one sample (`name{labels}`) in an exposition text.
fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (k, v) = l.rsplit_once(' ').expect("sample line");
            (k.to_string(), v.parse::<f64>().expect("number"))
        })
        .collect()
}

fn sample(all: &BTreeMap<String, f64>, key: &str) -> f64 {
    *all.get(key)
        .unwrap_or_else(|| panic!("no sample {key} in {all:#?}"))
}

/// `promtool check metrics` on `text`: exit 0 and no lint complaint.
fn promtool_accepts(text: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus; scripts/install-test-deps)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool check metrics: {:?}\n{}{}\n{text}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// One HTTP GET on 127.0.0.1:`port`; the status line and the body.
fn get(port: u16, path: &str) -> (String, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to the metrics listener");
    s.set_read_timeout(Some(SECS(10))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
    let mut all = String::new();
    s.read_to_string(&mut all).unwrap();
    let (head, body) = all.split_once("\r\n\r\n").expect("an HTTP answer");
    (head.lines().next().unwrap().to_string(), body.to_string())
}

fn files_in(f: &Fixture, route: &str, folder: &str) -> usize {
    f.count(route, folder)
}

#[test]
fn metrics_listener_matches_a_spool_held_by_a_401() {
    // GitLab refuses both routes' credentials: the drain posts one message
    // per route, gets 401, holds the route for retry_initial_secs (60 s
    // here, so no half-open probe comes while the test looks) and leaves
    // the rest waiting.
    let gitlab = GitLab::start(&both_secrets(), Mode::Status(401));
    let port = free_port();
    let f = Fixture::new(
        "metrics-401",
        &gitlab.url(),
        // One worker: each route's first 401 holds it before the next post.
        &format!("metrics_listen = \"127.0.0.1:{port}\"\nconcurrency = 1\nretry_initial_secs = 60"),
    );
    f.add_many(INCOMING, 0, 4);
    f.add_many(SERVICE_DESK, 100, 2);
    add_failed(&f, INCOMING, 900);

    let mut drain = f.spawn_drain(&[]);
    eventually(SECS(30), "a 401 on each route", || {
        files_in(&f, INCOMING, "state") == 2 && files_in(&f, SERVICE_DESK, "state") == 1
    });
    eventually(SECS(10), "both messages back in new/", || {
        files_in(&f, INCOMING, "work") + files_in(&f, SERVICE_DESK, "work") == 0
    });
    let before_scrape = unix_now();
    let (status, body) = get(port, "/metrics");
    let after_scrape = unix_now();
    assert_eq!(status, "HTTP/1.1 200 OK", "{body}");
    promtool_accepts(&body);
    let m = samples(&body);

    // The numbers, against the spool as the test sees it.
    for (route, total) in [(INCOMING, 4), (SERVICE_DESK, 2)] {
        assert_eq!(files_in(&f, route, "new"), total);
        let refused: Vec<String> = f
            .names_in(route, "new")
            .into_iter()
            .filter(|n| f.state(route, n).is_some_and(|s| s["last_status"] == 401))
            .collect();
        assert_eq!(refused.len(), 1, "{route}: one message was tried");
        let s = |state: &str| {
            sample(
                &m,
                &format!("mailpipe_spool_messages{{route=\"{route}\",state=\"{state}\"}}"),
            )
        };
        assert_eq!(s("waiting"), (total - 1) as f64, "{route}");
        assert_eq!(s("deferred"), 1.0, "{route}");
        assert_eq!(s("active") + s("orphaned"), 0.0, "{route}");
        let r = |name: &str| sample(&m, &format!("{name}{{route=\"{route}\"}}"));
        assert_eq!(r("mailpipe_spool_refused_messages"), 1.0);
        assert_eq!(r("mailpipe_drain_route_held"), 1.0);
        assert_eq!(r("mailpipe_drain_route_misconfigured"), 1.0);
        assert_eq!(r("mailpipe_drain_last_success_timestamp_seconds"), 0.0);
        assert_eq!(r("mailpipe_spool_arrivals_total"), total as f64);
        assert_eq!(r("mailpipe_route_configured"), 1.0);
        // Fixture names carry 1700000000 + n as their arrival time.
        let oldest = r("mailpipe_spool_oldest_message_age_seconds");
        let first = if route == INCOMING { 0 } else { 100 };
        // Computed when the scrape was answered, somewhere between these.
        let (low, high) = (
            (before_scrape - 1_700_000_000 - first) as f64,
            (after_scrape - 1_700_000_000 - first) as f64,
        );
        assert!(
            (low - 1.0..=high + 1.0).contains(&oldest),
            "{route}: {oldest} not in {low}..={high}"
        );
        let p = |class: &str| {
            sample(
                &m,
                &format!("mailpipe_drain_posts_total{{route=\"{route}\",class=\"{class}\"}}"),
            )
        };
        assert_eq!(p("4xx"), 1.0, "{route}");
        assert_eq!(p("2xx") + p("5xx") + p("none"), 0.0, "{route}");
        assert_eq!(
            sample(
                &m,
                &format!(
                    "mailpipe_drain_attempts_total{{route=\"{route}\",outcome=\"misconfigured\"}}"
                )
            ),
            1.0
        );
    }
    assert_eq!(
        sample(
            &m,
            "mailpipe_spool_messages{route=\"incoming_email\",state=\"failed\"}"
        ),
        1.0
    );
    assert_eq!(sample(&m, "mailpipe_spool_scan_ok"), 1.0);
    assert_eq!(gitlab.post_count(), 2, "one probe per held route");

    // `mailpipe health` sees the same spool: CRITICAL, naming the 401.
    let out = f.run(&["health"]);
    let line = stdout(&out);
    assert_eq!(out.status.code(), Some(2), "{line}");
    assert!(line.starts_with("MAILPIPE CRITICAL - "), "{line}");
    assert!(
        line.contains("incoming_email: GitLab refuses the route (401 for 1 message(s)"),
        "{line}"
    );
    assert!(line.contains("'incoming_email_refused'=1;;;0"), "{line}");

    // And `queue --format json`.
    let out = f.run(&["queue", "--format", "json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    let routes = v["routes"].as_array().unwrap();
    let ie = routes.iter().find(|r| r["route"] == INCOMING).unwrap();
    assert_eq!(
        (&ie["waiting"], &ie["deferred"], &ie["failed"]),
        (&3.into(), &1.into(), &1.into())
    );
    assert_eq!(ie["configured"], true);
    let deferred = v["deferred"].as_array().unwrap();
    assert_eq!(deferred.len(), 2);
    assert!(deferred.iter().all(|d| d["last_status"] == 401));
    assert!(
        deferred
            .iter()
            .all(|d| d["next_attempt_in_secs"].as_u64().is_some())
    );
    let failed = v["failed"].as_array().unwrap();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0]["last_status"], 400);
    assert_eq!(failed[0]["last_error"], "GitLab answered 400");

    // Anything but GET /metrics is not served.
    assert!(get(port, "/nothing").0.contains("404"));
    drain.signal(libc::SIGTERM);
    assert!(drain.wait(SECS(20)).success(), "{}", drain.log());
}

/// A held route is shown as held while GitLab fails and as no longer held
/// once a probe got through (the breaker's Released event).
#[test]
fn route_held_gauge_clears_when_the_route_is_released() {
    let gitlab = GitLab::start(&both_secrets(), Mode::Status(503));
    let port = free_port();
    let f = Fixture::new(
        "metrics-release",
        &gitlab.url(),
        &format!(
            "metrics_listen = \"127.0.0.1:{port}\"\nconcurrency = 1\nhold_after_failures = 1\nretry_initial_secs = 1"
        ),
    );
    f.add_many(INCOMING, 0, 3);
    let mut drain = f.spawn_drain(&[]);
    eventually(SECS(30), "the metrics listener", || {
        TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    let held = |want: f64| {
        let (status, body) = get(port, "/metrics");
        status == "HTTP/1.1 200 OK"
            && sample(
                &samples(&body),
                &format!("mailpipe_drain_route_held{{route=\"{INCOMING}\"}}"),
            ) == want
    };
    eventually(SECS(30), "the route held after a 503", || held(1.0));
    gitlab.set_mode(Mode::Accept);
    eventually(SECS(30), "every message delivered", || {
        files_in(&f, INCOMING, "new") + files_in(&f, INCOMING, "work") == 0
    });
    eventually(SECS(10), "the route no longer held", || held(0.0));
    drain.signal(libc::SIGTERM);
    assert!(drain.wait(SECS(20)).success(), "{}", drain.log());
}

#[test]
fn metrics_textfile_after_a_once_run_counts_every_delivery() {
    let gitlab = GitLab::start(&both_secrets(), Mode::Accept);
    let f0 = Fixture::new("metrics-textfile", &gitlab.url(), "");
    let textfile = f0.dir.join("node-exporter").join("mailpipe.prom");
    fs::create_dir_all(textfile.parent().unwrap()).unwrap();
    // Run as root, the drain becomes the spool's owner: the folder is its.
    give_to_drain(textfile.parent().unwrap(), 0o755);
    let f = f0;
    f.write_config_text(&f.config_text(true).replace(
        "[drain]\n",
        &format!("[drain]\nmetrics_textfile = \"{}\"\n", textfile.display()),
    ));
    f.add_many(INCOMING, 0, 5);
    f.add_many(SERVICE_DESK, 100, 3);
    let before = unix_now();
    let out = f.run(&["drain", "--once"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(gitlab.post_count(), 8);

    let text = fs::read_to_string(&textfile).expect("the textfile is written");
    promtool_accepts(&text);
    // Written through a dotfile and renamed: nothing else is left beside it.
    let names: Vec<String> = fs::read_dir(textfile.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["mailpipe.prom"]);
    let m = samples(&text);
    for (route, n) in [(INCOMING, 5.0), (SERVICE_DESK, 3.0)] {
        let key = |name: &str, extra: &str| format!("{name}{{route=\"{route}\"{extra}}}");
        assert_eq!(
            sample(&m, &key("mailpipe_drain_posts_total", ",class=\"2xx\"")),
            n
        );
        assert_eq!(
            sample(
                &m,
                &key("mailpipe_drain_attempts_total", ",outcome=\"delivered\"")
            ),
            n
        );
        assert_eq!(sample(&m, &key("mailpipe_spool_arrivals_total", "")), n);
        assert_eq!(sample(&m, &key("mailpipe_drain_route_held", "")), 0.0);
        let last = sample(
            &m,
            &key("mailpipe_drain_last_success_timestamp_seconds", ""),
        );
        assert!(last >= before as f64 && last <= unix_now() as f64, "{last}");
        for state in ["waiting", "deferred", "active", "orphaned", "failed"] {
            assert_eq!(
                sample(
                    &m,
                    &key("mailpipe_spool_messages", &format!(",state=\"{state}\""))
                ),
                0.0
            );
        }
        assert_eq!(
            sample(&m, &key("mailpipe_spool_oldest_message_age_seconds", "")),
            0.0
        );
    }
}

#[test]
fn a_non_loopback_metrics_listener_is_refused() {
    let f = Fixture::new(
        "metrics-public",
        "http://127.0.0.1:9",
        "metrics_listen = \"0.0.0.0:9853\"",
    );
    let out = f.run(&["drain", "--once"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("drain.metrics_listen") && stderr(&out).contains("not a loopback"),
        "{}",
        stderr(&out)
    );
    let out = f.run(&["check"]);
    assert!(
        stdout(&out).contains("drain.metrics_listen"),
        "{}",
        stdout(&out)
    );
}

fn health(f: &Fixture, extra: &[&str]) -> (i32, String) {
    let mut args = vec!["health"];
    args.extend_from_slice(extra);
    let out = f.run(&args);
    let line = stdout(&out);
    assert_eq!(line.lines().count(), 1, "one status line: {line:?}");
    assert!(line.contains(" | "), "perfdata: {line}");
    assert_eq!(stderr(&out), "");
    (out.status.code().unwrap(), line)
}

#[test]
fn health_ok_warning_and_critical_by_age() {
    let f = Fixture::new("health-age", "http://127.0.0.1:9", "");
    // No spool folders yet, nothing waiting: OK.
    let (code, line) = health(&f, &[]);
    assert_eq!(code, 0, "{line}");
    assert!(line.starts_with("MAILPIPE OK - 0 queued"), "{line}");

    add_aged(&f, INCOMING, 1, 5);
    add_aged(&f, SERVICE_DESK, 2, 30);
    let (code, line) = health(&f, &[]);
    assert_eq!(code, 0, "{line}");
    assert!(
        line.starts_with("MAILPIPE OK - 2 queued, oldest "),
        "{line}"
    );
    assert!(line.contains("'incoming_email_queued'=1;;;0"), "{line}");
    assert!(line.contains("'oldest_age'=3"), "{line}");
    assert!(line.contains(";900;3600;0"), "{line}");

    // 20 minutes old: past -w 900, not -c 3600.
    add_aged(&f, INCOMING, 3, 1200);
    let (code, line) = health(&f, &[]);
    assert_eq!(code, 1, "{line}");
    assert!(
        line.starts_with("MAILPIPE WARNING - oldest message waiting 20m"),
        "{line}"
    );
    // Thresholds from the command line.
    let (code, line) = health(&f, &["-w", "60", "-c", "600"]);
    assert_eq!(code, 2, "{line}");
    assert!(line.starts_with("MAILPIPE CRITICAL - oldest"), "{line}");

    // A failed message is a warning of its own.
    let f = Fixture::new("health-failed", "http://127.0.0.1:9", "");
    add_failed(&f, INCOMING, 7);
    let (code, line) = health(&f, &[]);
    assert_eq!(code, 1, "{line}");
    assert!(
        line.contains("incoming_email: 1 failed message(s)"),
        "{line}"
    );
}

#[test]
fn health_critical_when_the_drain_got_401() {
    let gitlab = GitLab::start(&both_secrets(), Mode::Status(401));
    let f = Fixture::new("health-401", &gitlab.url(), "");
    add_aged(&f, INCOMING, 1, 1);
    let (code, line) = health(&f, &[]);
    assert_eq!(code, 0, "{line}");
    let out = f.run(&["drain", "--once"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let (code, line) = health(&f, &[]);
    assert_eq!(code, 2, "{line}");
    assert!(
        line.contains("GitLab refuses the route (401 for 1 message(s)"),
        "{line}"
    );
}

#[test]
fn health_unknown_without_a_configuration() {
    let f = Fixture::new("health-unknown", "http://127.0.0.1:9", "");
    fs::remove_file(&f.config).unwrap();
    let out = f.run(&["health"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(
        stdout(&out).starts_with("MAILPIPE UNKNOWN - "),
        "{}",
        stdout(&out)
    );
}

/// Unmounts a tmpfs when dropped.
struct Mounted<'a>(&'a Path);

impl Drop for Mounted<'_> {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.0).status();
    }
}

#[test]
fn health_critical_on_a_full_spool() {
    let f = Fixture::new("health-full", "http://127.0.0.1:9", "");
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=4m", "tmpfs"])
        .arg(&f.spool)
        .status()
        .unwrap();
    assert!(mounted.success(), "mounting a tmpfs needs root");
    let _guard = Mounted(&f.spool);
    // The packaged layout on the new file system's root.
    give_to_drain(&f.spool, mailpipe::layout::DRAIN_DIR_MODE);
    f.write_config_text(&format!(
        "{}\n[limits]\nmax_message_bytes = 524288\n",
        f.config_text(true)
    ));
    add_aged(&f, INCOMING, 1, 1);
    let (code, line) = health(&f, &[]);
    assert_eq!(code, 0, "{line}");
    assert!(line.contains("'spool_free'="), "{line}");

    // Fill it as a flood of mail would, until the file system says ENOSPC.
    let mut filler = fs::File::create(f.spool.join("filler")).unwrap();
    let chunk = vec![b'x'; 64 * 1024];
    while filler.write_all(&chunk).is_ok() {}
    drop(filler);
    let (code, line) = health(&f, &[]);
    assert_eq!(code, 2, "{line}");
    assert!(
        line.starts_with("MAILPIPE CRITICAL - spool full: "),
        "{line}"
    );
    assert!(line.contains("'spool_free'=0%;10:;5:;0;100"), "{line}");

    // Room again: OK.
    fs::remove_file(f.spool.join("filler")).unwrap();
    let (code, line) = health(&f, &[]);
    assert_eq!(code, 0, "{line}");
}
