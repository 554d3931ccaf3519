//! The trust boundary (issue 11; src/layout.rs): the account that runs
//! `deliver` parses mail from the Internet, so every test here assumes it
//! is taken over. It plants links, hard links, FIFOs, device nodes, sparse
//! files and swapped folders wherever it can reach (and, for defence in
//! depth, where only an unrepaired older layout would let it), then root
//! and the drain run `requeue ALL`, `queue`, `drain --once [--flush]`, the
//! daemon and `check --send-test`. Each test asserts: nothing outside the
//! spool is read, changed or removed; nothing hangs (every run bounded);
//! nothing crashes; no mail in the spool is lost.
//!
//! One test per row of the attack table in tests/RELIABILITY.md
//! ("Security"). The attacker's own steps run as the `mailpipe` user
//! (`runuser -u mailpipe`); steps the packaged layout forbids it are first
//! shown to fail as that user, then done as root to test the next line of
//! defence.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod drain_support;
mod postfix_support;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use drain_support::*;

static VICTIMS: AtomicUsize = AtomicUsize::new(0);

/// A root-only folder outside the spool with files that must survive.
struct Victim {
    dir: PathBuf,
}

impl Victim {
    fn new(name: &str) -> Victim {
        let dir = PathBuf::from(format!(
            "/tmp/mailpipe-victim-{name}-{}-{}",
            std::process::id(),
            VICTIMS.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).unwrap();
        fs::write(dir.join("precious"), b"root's file\n").unwrap();
        Victim { dir }
    }

    /// Adds a file named `name`, optionally 40 hours old.
    fn add(&self, name: &str, old: bool) {
        let path = self.dir.join(name);
        fs::write(&path, b"root's file\n").unwrap();
        if old {
            let when = std::time::SystemTime::now() - Duration::from_secs(40 * 3600);
            fs::File::options()
                .write(true)
                .open(&path)
                .unwrap()
                .set_modified(when)
                .unwrap();
        }
    }

    fn listing(&self) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(&self.dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    /// Every file is there with its content, and nothing was added.
    fn assert_intact(&self, before: &[String]) {
        assert_eq!(self.listing(), before, "files outside the spool changed");
        for name in before {
            assert_eq!(
                fs::read(self.dir.join(name)).unwrap(),
                b"root's file\n",
                "{name} was changed"
            );
        }
    }
}

impl Drop for Victim {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Runs `script` with sh as the deliver account; true when it succeeded.
fn as_deliver(script: &str) -> bool {
    Command::new("runuser")
        .args(["-u", "mailpipe", "--", "sh", "-c", script])
        .stderr(Stdio::null())
        .status()
        .unwrap()
        .success()
}

/// Runs `cmd` to its end, at most `limit`; a run past it is a hang.
fn bounded(mut cmd: Command, limit: Duration) -> Output {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "hung past {limit:?}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn no_crash(out: &Output) {
    let code = out.status.code();
    assert!(
        matches!(code, Some(0) | Some(1)),
        "crashed or odd exit {code:?}: {}",
        stderr(out)
    );
}

const LIMIT: Duration = Duration::from_secs(30);

/// All message names in a route's new/, work/ and failed/.
fn all_mail(f: &Fixture, route: &str) -> Vec<String> {
    let mut all = Vec::new();
    for folder in ["new", "work", "failed"] {
        all.extend(f.names_in(route, folder));
    }
    all.sort();
    all
}

fn ln_s(target: &Path, link: &Path) {
    std::os::unix::fs::symlink(target, link).unwrap();
}

fn chown_to_deliver(path: &Path) {
    let (uid, gid) = ids("mailpipe", "mailpipe");
    std::os::unix::fs::chown(path, Some(uid), Some(gid)).unwrap();
}

fn q(p: &Path) -> String {
    format!("'{}'", p.display())
}

#[test]
fn row1_requeue_all_as_root_never_follows_planted_state_or_new_links() {
    let gitlab = GitLab::start(&both_secrets(), Mode::Accept);
    let f = Fixture::new("sec-requeue", &gitlab.url(), "");
    f.make_route(INCOMING);
    let route = f.spool.join(INCOMING);
    let victim = Victim::new("requeue");
    let before = victim.listing();

    // The packaged layout: the deliver account cannot touch the route
    // folder, so it can plant neither link.
    assert!(!as_deliver(&format!("mv {0}/state {0}/state.x", q(&route))));
    assert!(!as_deliver(&format!(
        "ln -s {} {}/state2",
        q(&victim.dir),
        q(&route)
    )));

    // An unrepaired older layout, where it owned the route folder: the
    // links are planted, a failed message named like a root-only file waits.
    fs::write(route.join("failed").join("precious"), b"attacker mail\n").unwrap();
    chown_to_deliver(&route);
    fs::remove_dir_all(route.join("state")).unwrap();
    ln_s(&victim.dir, &route.join("state"));
    for args in [
        vec!["requeue", "ALL"],
        vec!["queue"],
        vec!["drain", "--once"],
    ] {
        let out = bounded(f.command(&args), LIMIT);
        no_crash(&out);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{args:?} must refuse: {}",
            stderr(&out)
        );
        // queue only reads (through descriptors, never following the
        // link) and fails on the link; requeue and drain refuse the route.
        if args[0] != "queue" {
            assert!(stderr(&out).contains("refusing"), "{}", stderr(&out));
        }
        victim.assert_intact(&before);
    }
    // new/ pointing into a root-only folder: nothing is renamed into it.
    fs::remove_file(route.join("state")).unwrap();
    fs::create_dir(route.join("state")).unwrap();
    give_to_drain(&route.join("state"), 0o2750);
    fs::rename(route.join("new"), route.join("new.real")).unwrap();
    ln_s(&victim.dir, &route.join("new"));
    let out = bounded(f.command(&["requeue", "ALL"]), LIMIT);
    no_crash(&out);
    victim.assert_intact(&before);
    assert_eq!(f.names_in(INCOMING, "failed"), vec!["precious".to_string()]);
    // Even with the route folder given back, the links are refused.
    give_to_drain(&route, 0o2750);
    let out = bounded(f.command(&["requeue", "ALL"]), LIMIT);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    victim.assert_intact(&before);
    assert_eq!(f.names_in(INCOMING, "failed"), vec!["precious".to_string()]);
}

#[test]
fn row2_folders_swapped_during_drain_once_flush_touch_nothing_outside() {
    let gitlab = GitLab::start(&both_secrets(), Mode::Status(500));
    let f = Fixture::new("sec-race", &gitlab.url(), "concurrency = 2");
    let sent = f.add_many(INCOMING, 0, 40);
    let victim = Victim::new("race");
    for (name, _) in &sent {
        victim.add(name, false);
    }
    let before = victim.listing();
    let route = f.spool.join(INCOMING);
    // The deliver account cannot swap them in the packaged layout.
    assert!(!as_deliver(&format!("mv {0}/state {0}/s", q(&route))));
    // Root does it for it, as fast as it can, while the drain runs.
    let stop = Arc::new(AtomicBool::new(false));
    let swapper = {
        let (stop, route, target) = (Arc::clone(&stop), route.clone(), victim.dir.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                for folder in ["state", "work", "failed"] {
                    let (real, parked) = (route.join(folder), route.join(format!("{folder}.real")));
                    if fs::rename(&real, &parked).is_ok() {
                        let _ = std::os::unix::fs::symlink(&target, &real);
                        std::thread::sleep(Duration::from_millis(1));
                        let _ = fs::remove_file(&real);
                        let _ = fs::rename(&parked, &real);
                    }
                }
            }
        })
    };
    for _ in 0..5 {
        let out = bounded(f.command(&["drain", "--once", "--flush"]), LIMIT);
        no_crash(&out);
        victim.assert_intact(&before);
    }
    stop.store(true, Ordering::SeqCst);
    swapper.join().unwrap();
    victim.assert_intact(&before);
    // Undo what root's own swapping may have left half-done (a drain that
    // started mid-swap made a fresh folder): nothing the drain did.
    for folder in ["state", "work", "failed"] {
        let (real, parked) = (route.join(folder), route.join(format!("{folder}.real")));
        if fs::symlink_metadata(&real).is_ok_and(|m| m.file_type().is_symlink()) {
            fs::remove_file(&real).unwrap();
        }
        if parked.exists() {
            if !real.exists() {
                fs::rename(&parked, &real).unwrap();
            } else {
                for e in fs::read_dir(&parked).unwrap() {
                    let e = e.unwrap();
                    fs::rename(e.path(), real.join(e.file_name())).unwrap();
                }
                fs::remove_dir(&parked).unwrap();
            }
        }
    }
    for name in f.names_in(INCOMING, "work") {
        fs::rename(
            route.join("work").join(&name),
            route.join("new").join(&name),
        )
        .unwrap();
    }
    // Nothing lost: every message is still in the spool (500s keep it).
    gitlab.set_mode(Mode::Accept);
    let out = bounded(f.command(&["drain", "--once", "--flush"]), LIMIT);
    assert!(out.status.success(), "{}", stderr(&out));
    let mut want: Vec<Vec<u8>> = sent.iter().map(|(_, b)| b.clone()).collect();
    want.sort();
    let mut got: Vec<Vec<u8>> = gitlab.accepted().into_keys().collect();
    got.sort();
    assert_eq!(got, want, "every message reached GitLab");
}

#[test]
fn row3_fifos_in_state_and_new_never_hang_queue_or_the_drain() {
    let gitlab = GitLab::start(&both_secrets(), Mode::Accept);
    let f = Fixture::new("sec-fifo", &gitlab.url(), "");
    let (name, body) = f.add(INCOMING, 1, 1);
    let (deferred, _) = f.add(INCOMING, 2, 2);
    let route = f.spool.join(INCOMING);
    // In new/ the deliver account may plant what it likes.
    assert!(as_deliver(&format!(
        "mkfifo {}/new/1700000000.M0P0R0.fifo",
        q(&route)
    )));
    assert!(as_deliver(&format!(
        "mkfifo {}/tmp/1700000000.M0P0R0.fifo",
        q(&route)
    )));
    // state/ is the drain's: it cannot; a FIFO there (root's doing) is
    // still never opened in a blocking way.
    assert!(!as_deliver(&format!(
        "mkfifo {}/state/{deferred}",
        q(&route)
    )));
    let fifo = route.join("state").join(&deferred);
    assert!(
        Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    for args in [vec!["queue"], vec!["drain", "--once"], vec!["queue"]] {
        let out = bounded(f.command(&args), LIMIT);
        no_crash(&out);
    }
    assert!(gitlab.accepted().contains_key(&body), "{name} delivered");
    assert_eq!(gitlab.accepted().len(), 2, "both real messages delivered");
}

#[test]
fn row4_a_fifo_in_new_does_not_hang_check_send_test() {
    let inst = postfix_support::Instance::start(postfix_support::Variant::Subaddress);
    let new = inst.spool.join("incoming_email/new");
    assert!(as_deliver(&format!(
        "mkfifo {}/1700000000.M0P0R0.fifo",
        q(&new)
    )));
    assert!(as_deliver(&format!(
        "ln -s /etc/shadow {}/1700000001.M0P0R0.link",
        q(&new)
    )));
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mailpipe"));
    cmd.arg("check")
        .arg(format!("--config={}", inst.config_file.display()))
        .arg(format!("--postfix-config={}", inst.conf.display()))
        .arg("--send-test");
    let started = Instant::now();
    let out = bounded(cmd, Duration::from_secs(75));
    let text = stdout(&out);
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "{:?}: {text}",
        started.elapsed()
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("ok") && l.contains("probe spooled")),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("warning") && l.contains("not regular files")),
        "check names the planted entries: {text}"
    );
    // The planted entries are left to the admin; the probe is gone.
    assert!(new.join("1700000000.M0P0R0.fifo").exists());
}

#[test]
fn row5_a_sparse_100_gb_file_goes_to_failed_without_being_read() {
    let gitlab = GitLab::start(&both_secrets(), Mode::Accept);
    let f = Fixture::new("sec-sparse", &gitlab.url(), "");
    let (_, body) = f.add(INCOMING, 1, 5);
    let route = f.spool.join(INCOMING);
    let huge = "1700000000.M000001P1R1.huge";
    assert!(as_deliver(&format!(
        "truncate -s 100G {}/new/{huge}",
        q(&route)
    )));
    let mut cmd = Command::new("/usr/bin/time");
    cmd.args(["-f", "peak-rss-kib=%M", env!("CARGO_BIN_EXE_mailpipe")])
        .args(["drain", "--once"])
        .arg(format!("--config={}", f.config.display()))
        .stdin(Stdio::null());
    let out = bounded(cmd, LIMIT);
    no_crash(&out);
    let log = stderr(&out);
    assert_eq!(
        f.names_in(INCOMING, "failed"),
        vec![huge.to_string()],
        "{log}"
    );
    let state = f.state(INCOMING, huge).expect("a reason is kept");
    assert!(
        state["last_error"]
            .as_str()
            .unwrap()
            .contains("larger than anything deliver stores"),
        "{state}"
    );
    assert!(
        gitlab.accepted().contains_key(&body),
        "the real message went out"
    );
    assert_eq!(gitlab.post_count(), 1, "the huge file was never posted");
    let rss: u64 = log
        .lines()
        .find_map(|l| l.strip_prefix("peak-rss-kib="))
        .and_then(|v| v.trim().parse().ok())
        .expect("GNU time's line");
    assert!(rss < 64 * 1024, "peak RSS {rss} KiB");
}

#[test]
fn row6_state_and_tmp_swapped_while_the_daemon_runs_delete_nothing_outside() {
    let gitlab = GitLab::start(&both_secrets(), Mode::Status(500));
    let f = Fixture::new(
        "sec-daemon",
        &gitlab.url(),
        "concurrency = 8\npoll_interval_secs = 1\nretry_initial_secs = 1\nretry_max_secs = 1",
    );
    let sent = f.add_many(INCOMING, 0, 5);
    let victim = Victim::new("daemon");
    for (name, _) in &sent {
        victim.add(name, true);
        victim.add(&format!(".{name}.1.2.tmp"), true);
    }
    let before = victim.listing();
    let mut daemon = f.spawn_drain(&[]);
    eventually(Duration::from_secs(30), "first failures", || {
        f.names_with_state(INCOMING) >= 5
    });
    // Swap state/ and tmp/ for links to the victim (root, since the deliver
    // account cannot: shown first).
    let route = f.spool.join(INCOMING);
    assert!(!as_deliver(&format!("mv {0}/tmp {0}/tmp.x", q(&route))));
    for folder in ["state", "tmp"] {
        fs::rename(route.join(folder), route.join(format!("{folder}.real"))).unwrap();
        ln_s(&victim.dir, &route.join(folder));
    }
    // Now GitLab takes them: each success removes a sidecar by name.
    gitlab.set_mode(Mode::Accept);
    eventually(Duration::from_secs(30), "all delivered", || {
        gitlab.accepted().len() == 5
    });
    daemon.signal(libc::SIGTERM);
    let status = daemon.wait(Duration::from_secs(30));
    assert!(status.success(), "{}", daemon.log());
    victim.assert_intact(&before);
    // The next start refuses the links instead of following them.
    let out = bounded(f.command(&["drain", "--once"]), LIMIT);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    victim.assert_intact(&before);
}

#[test]
fn row7_a_state_link_to_the_secret_never_shows_in_the_log() {
    let gitlab = GitLab::start(&both_secrets(), Mode::Accept);
    let f = Fixture::new("sec-secret", &gitlab.url(), "");
    let (linked, _) = f.add(INCOMING, 1, 1);
    let (copied, _) = f.add(INCOMING, 2, 2);
    let state = f.folder(INCOMING, "state");
    ln_s(&f.secret_path(INCOMING), &state.join(&linked));
    fs::copy(f.secret_path(INCOMING), state.join(&copied)).unwrap();
    let secret = fs::read_to_string(f.secret_path(INCOMING)).unwrap();
    let secret = secret.trim();
    for args in [vec!["queue"], vec!["drain", "--once"]] {
        let out = bounded(f.command(&args), LIMIT);
        no_crash(&out);
        let text = format!("{}{}", stdout(&out), stderr(&out));
        assert!(!text.contains(&secret[..8]), "{args:?} leaked: {text}");
        assert!(
            !text.contains("invalid type"),
            "serde's text quotes the file: {text}"
        );
    }
    assert_eq!(gitlab.accepted().len(), 2, "both delivered");
}

#[test]
fn row9_file_names_with_terminal_escapes_are_printed_escaped() {
    let gitlab = GitLab::start(&both_secrets(), Mode::Accept);
    let f = Fixture::new("sec-names", &gitlab.url(), "");
    f.make_route(INCOMING);
    let evil = "1700000000.M1P1R1.x\u{1b}[2J\r\nfake line\u{7}";
    fs::write(f.folder(INCOMING, "failed").join(evil), b"mail\n").unwrap();
    let new_evil = "1700000001.M1P1R1.\u{1b}]0;owned\u{7}";
    assert!(as_deliver(&format!(
        "touch {}/'{new_evil}'",
        q(&f.folder(INCOMING, "new"))
    )));
    for args in [vec!["requeue", "ALL"], vec!["requeue", evil], vec!["queue"]] {
        let out = bounded(f.command(&args), LIMIT);
        no_crash(&out);
        let text = format!("{}{}", stdout(&out), stderr(&out));
        for c in ['\u{1b}', '\r', '\u{7}'] {
            assert!(!text.contains(c), "{args:?} printed {c:?} raw: {text:?}");
        }
        assert!(!text.lines().any(|l| l.starts_with("fake line")), "{text}");
    }
}

#[test]
fn hard_links_and_devices_planted_in_new_are_never_posted() {
    let gitlab = GitLab::start(&both_secrets(), Mode::Accept);
    let f = Fixture::new("sec-links", &gitlab.url(), "");
    let (_, body) = f.add(INCOMING, 1, 1);
    let new = f.folder(INCOMING, "new");
    // The kernel's protected_hardlinks stops a link to a file it cannot
    // write; a symbolic link and a device node are simply not regular.
    assert!(!as_deliver(&format!(
        "ln {} {}/1.M1P1R1.hard",
        q(&f.secret_path(INCOMING)),
        q(&new)
    )));
    assert!(as_deliver(&format!(
        "ln -s {} {}/1700000000.M0P0R0.sym",
        q(&f.secret_path(INCOMING)),
        q(&new)
    )));
    let dev = new.join("1700000000.M0P0R0.null");
    assert!(
        Command::new("mknod")
            .arg(&dev)
            .args(["c", "1", "3"])
            .status()
            .unwrap()
            .success()
    );
    let out = bounded(f.command(&["drain", "--once"]), LIMIT);
    no_crash(&out);
    assert_eq!(
        gitlab.post_count(),
        1,
        "only the real message: {}",
        stderr(&out)
    );
    assert!(gitlab.accepted().contains_key(&body));
    assert!(dev.exists(), "the device node is left alone");
    let mail = all_mail(&f, INCOMING);
    assert!(
        mail.iter()
            .all(|n| n.ends_with(".sym") || n.ends_with(".null")),
        "{mail:?}"
    );
}

#[test]
fn root_refuses_a_spool_owned_by_root_and_names_the_account() {
    let gitlab = GitLab::start(&both_secrets(), Mode::Accept);
    let f = Fixture::new("sec-rootowned", &gitlab.url(), "");
    std::os::unix::fs::chown(&f.spool, Some(0), Some(0)).unwrap();
    for args in [
        vec!["queue"],
        vec!["requeue", "ALL"],
        vec!["drain", "--once"],
    ] {
        let out = bounded(f.command(&args), LIMIT);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert!(
            stderr(&out).contains("runuser -u mailpipe-drain -- mailpipe"),
            "{}",
            stderr(&out)
        );
    }
}

#[test]
fn root_becomes_the_spools_owner() {
    let gitlab = GitLab::start(&both_secrets(), Mode::Status(500));
    let f = Fixture::new("sec-owner", &gitlab.url(), "");
    let (name, _) = f.add(INCOMING, 1, 1);
    let out = bounded(f.command(&["drain", "--once"]), LIMIT);
    no_crash(&out);
    // The sidecar the drain wrote belongs to the drain's account, not root.
    let meta = fs::metadata(f.folder(INCOMING, "state").join(&name)).unwrap();
    let (drain_uid, _) = ids("mailpipe-drain", "mailpipe");
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&meta), drain_uid);
}

#[test]
fn messages_the_deliver_account_spoils_in_the_drains_folders_stop_nothing() {
    // The deliver account still owns the message files it created: it can
    // chmod or truncate them in work/ and failed/. That spoils those
    // messages (its own mail), never the tools: queue, health and
    // requeue go on with the others.
    let gitlab = GitLab::start(&both_secrets(), Mode::Accept);
    let f = Fixture::new("sec-spoiled", &gitlab.url(), "");
    f.make_route(INCOMING);
    let failed = f.folder(INCOMING, "failed");
    for n in 1..=3 {
        let name = format!("170000000{n}.M1P1R{n}.x");
        fs::write(failed.join(&name), b"mail\n").unwrap();
        chown_to_deliver(&failed.join(&name));
    }
    assert!(as_deliver(&format!(
        "chmod 000 {}/1700000001.M1P1R1.x",
        q(&failed)
    )));
    assert!(as_deliver(&format!(
        ": > {}/1700000002.M1P1R2.x",
        q(&failed)
    )));
    let work = f.folder(INCOMING, "work");
    fs::write(work.join("1700000009.M1P1R9.x"), b"mail\n").unwrap();
    chown_to_deliver(&work.join("1700000009.M1P1R9.x"));
    assert!(as_deliver(&format!(
        "chmod 000 {}/1700000009.M1P1R9.x",
        q(&work)
    )));

    let out = bounded(f.command(&["queue"]), LIMIT);
    assert!(out.status.success(), "queue: {}", stderr(&out));
    let out = bounded(f.command(&["health"]), LIMIT);
    assert!(
        !stdout(&out).starts_with("MAILPIPE UNKNOWN"),
        "health: {}",
        stdout(&out)
    );
    let out = bounded(f.command(&["requeue", "ALL"]), LIMIT);
    no_crash(&out);
    // The unreadable one is named and stays; the other two are requeued.
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(
        stdout(&out).contains("2 message(s) requeued"),
        "{}",
        stdout(&out)
    );
    assert_eq!(
        f.names_in(INCOMING, "failed"),
        vec!["1700000001.M1P1R1.x".to_string()]
    );
}

#[test]
fn a_name_planted_in_new_never_blocks_requeue_or_replaces_mail() {
    let gitlab = GitLab::start(&both_secrets(), Mode::Accept);
    let f = Fixture::new("sec-clash", &gitlab.url(), "");
    f.make_route(INCOMING);
    let name = "1700000001.M1P1R1.failed";
    fs::write(f.folder(INCOMING, "failed").join(name), b"the real mail\n").unwrap();
    fs::write(
        f.folder(INCOMING, "state").join(name),
        r#"{"attempts":1,"last_status":400,"last_error":"400","failed_at":1700000100}"#,
    )
    .unwrap();
    // The deliver account reads failed/'s names and plants one in new/.
    assert!(as_deliver(&format!(
        "echo planted > {}/{name}",
        q(&f.folder(INCOMING, "new"))
    )));
    let out = bounded(f.command(&["requeue", "ALL"]), LIMIT);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    let new = f.names_in(INCOMING, "new");
    assert_eq!(new.len(), 2, "both kept, under two names: {new:?}");
    let bodies: Vec<Vec<u8>> = new
        .iter()
        .map(|n| fs::read(f.folder(INCOMING, "new").join(n)).unwrap())
        .collect();
    assert!(bodies.contains(&b"the real mail\n".to_vec()));
    assert!(bodies.contains(&b"planted\n".to_vec()));
    assert!(f.names_in(INCOMING, "failed").is_empty());
}

#[test]
fn a_trickling_metrics_client_never_holds_the_drain() {
    use std::io::Write as _;
    let gitlab = GitLab::start(&both_secrets(), Mode::Accept);
    let port = free_port();
    let f = Fixture::new(
        "sec-trickle",
        &gitlab.url(),
        &format!("metrics_listen = \"127.0.0.1:{port}\"\npoll_interval_secs = 1"),
    );
    let mut drain = f.spawn_drain(&[]);
    let mut client = None;
    let start = Instant::now();
    while client.is_none() && start.elapsed() < Duration::from_secs(20) {
        client = std::net::TcpStream::connect(("127.0.0.1", port)).ok();
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut client = client.expect("the metrics listener");
    // One byte a second, for longer than any sane scrape.
    let trickle = std::thread::spawn(move || {
        for _ in 0..40 {
            if client.write_all(b"G").is_err() {
                return;
            }
            std::thread::sleep(Duration::from_secs(1));
        }
    });
    std::thread::sleep(Duration::from_secs(2));
    drain.signal(libc::SIGTERM);
    let stopped = Instant::now();
    let status = drain.wait(Duration::from_secs(30));
    assert!(status.success(), "{}", drain.log());
    assert!(
        stopped.elapsed() < Duration::from_secs(15),
        "the drain waited {:?} for a trickling client",
        stopped.elapsed()
    );
    let _ = trickle.join();
}
