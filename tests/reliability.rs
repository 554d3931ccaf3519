//! "It cannot lose or bounce mail by accident" (GitLab issue 4), proved on
//! the real binary: system-call faults injected with strace, a really full
//! file system, RLIMIT_FSIZE, crashes at every step of the commit sequence,
//! 1,000 concurrent deliveries, an unprivileged user facing read-only,
//! foreign-owned and booby-trapped spools, and stdin that never ends.
//!
//! The invariants, everywhere:
//! - a failure exits 75 with a `4.x.x` line (never 101, never a bounce code);
//! - `new/` only ever holds complete files, and exit 0 means the file is
//!   there;
//! - after a failure `new/` is untouched and `tmp/` is clean (a crash by
//!   signal, `abort` or `process::exit` may leave one tmp file for the
//!   36-hour reaper, never anything in `new/`);
//! - a crash after the link leaves at most one complete duplicate on retry.
//!
//! Needs root and strace (`scripts/install-test-deps`); mounts tmpfs under
//! /tmp and unmounts it again. The crash-point tests need a debug build
//! (plain `cargo test`), where the MAILPIPE_FAULT switch is compiled in.
//! tests/RELIABILITY.md records what was run and what held.

// Test code: a failed unwrap is a failed test (clippy.toml allows it in
// #[test] functions; this covers the helpers too).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod reliability_support;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::time::Duration;

use reliability_support::*;

/// The message stored by a clean delivery is exactly the input.
fn assert_stored_once(spool: &Spool, msg: &[u8], what: &str) {
    let files = spool.new_files();
    assert_eq!(files.len(), 1, "{what}: new/ holds {:?}", files.keys());
    let stored = files.values().next().expect("one file");
    assert!(stored == msg, "{what}: stored copy differs from the input");
    assert!(spool.tmp_files().is_empty(), "{what}: tmp/ not clean");
}

/// Exit 75 with a 4.x.x line, `new/` untouched, `tmp/` clean.
fn assert_deferred_clean(spool: &Spool, o: &Outcome, what: &str) {
    assert_eq!(o.code, Some(75), "{what}: {o:?}");
    assert!(o.first_line().starts_with("4."), "{what}: report {o:?}");
    let new = spool.new_files();
    assert!(new.is_empty(), "{what}: new/ holds {:?}", new.keys());
    let tmp = spool.tmp_files();
    assert!(tmp.is_empty(), "{what}: tmp/ holds {tmp:?}");
}

const ERRNOS: [&str; 5] = ["EIO", "ENOSPC", "EDQUOT", "EXDEV", "EACCES"];

fn disk_full(errno: &str) -> bool {
    matches!(errno, "ENOSPC" | "EDQUOT")
}

/// Runs a delivery with `errno` injected into call number `nth` of
/// `syscall`, and checks from strace's log that the injection happened.
fn inject(spool: &Spool, input: &Input, syscall: &str, errno: &str, nth: usize) -> Outcome {
    let log = spool.scratch.path("inject.log");
    let mut d = Delivery::new(spool, input.clone());
    d.wrapper = vec![
        "strace".into(),
        "-f".into(),
        "-o".into(),
        log.display().to_string(),
        "-e".into(),
        format!("trace={syscall}"),
        "-e".into(),
        format!("inject={syscall}:error={errno}:when={nth}"),
    ];
    let o = d.run();
    let text = fs::read_to_string(&log).expect("strace log");
    assert!(
        text.contains(&format!("{errno} (")) && text.contains("(INJECTED)"),
        "{syscall}#{nth}={errno}: not injected:\n{text}"
    );
    o
}

/// The calls of one clean, traced delivery, and the positions (`when=`) of
/// the calls that touch the tmp file and the commit.
struct Plan {
    tmp_open: usize,
    write: usize,
    fsync_file: usize,
    fsync_new: usize,
    close: usize,
    linkat: usize,
    unlinkat: usize,
}

fn plan(input: &Input) -> Plan {
    let spool = Spool::new("plan", 30).with_maildir();
    let d = Delivery::new(&spool, input.clone());
    let (o, calls) = trace(
        &d,
        "openat,write,close,fsync,linkat,unlinkat,mkdirat,splice,copy_file_range",
        &[],
    );
    assert_eq!(o.code, Some(0), "clean traced run: {o:?}");
    assert_stored_once(&spool, input.bytes(), "clean traced run");
    let at = calls
        .iter()
        .position(|c| c.name == "openat" && c.args.contains("O_EXCL"))
        .expect("the tmp file's openat");
    let fd = calls[at].ret.clone();
    let after = |from: usize, name: &str, first_arg: Option<&str>| -> (usize, usize) {
        let i = calls[from..]
            .iter()
            .position(|c| {
                c.name == name && first_arg.is_none_or(|fd| c.args.split(',').next() == Some(fd))
            })
            .map(|i| i + from)
            .unwrap_or_else(|| panic!("no {name} after the tmp file's creation: {calls:#?}"));
        (i, calls[i].nth)
    };
    let (_, write) = after(at, "write", Some(&fd));
    let (f, fsync_file) = after(at, "fsync", Some(&fd));
    let (_, fsync_new) = after(f + 1, "fsync", None);
    let (_, close) = after(f, "close", Some(&fd));
    let (l, linkat) = after(at, "linkat", None);
    let (_, unlinkat) = after(l, "unlinkat", None);
    Plan {
        tmp_open: calls[at].nth,
        write,
        fsync_file,
        fsync_new,
        close,
        linkat,
        unlinkat,
    }
}

/// write, fsync (file and `new/`), close, linkat, unlinkat and the tmp
/// file's openat, each failing with each errno, stdin a pipe and a file.
#[test]
fn syscall_faults_on_the_commit_path_defer_cleanly() {
    require_root_and_strace();
    let msg = message("commit-path", 64 * 1024);
    let mut runs = 0;
    for input in Input::both(msg) {
        let p = plan(&input);
        let targets = [
            ("openat", p.tmp_open),
            ("write", p.write),
            ("fsync", p.fsync_file),
            ("fsync", p.fsync_new),
            ("close", p.close),
            ("linkat", p.linkat),
            ("unlinkat", p.unlinkat),
        ];
        for (syscall, nth) in targets {
            for errno in ERRNOS {
                let spool = Spool::new("commit", 30).with_maildir();
                let o = inject(&spool, &input, syscall, errno, nth);
                let what = format!("{syscall}#{nth}={errno} ({})", input.name());
                assert_deferred_clean(&spool, &o, &what);
                if disk_full(errno) {
                    assert!(o.first_line().starts_with("4.3.1"), "{what}: {o:?}");
                }
                runs += 1;
            }
        }
    }
    eprintln!("commit path: {runs} injected faults, all deferred cleanly");
}

/// The copy of the body: splice(2) from a pipe, copy_file_range(2) from a
/// file. EXDEV on the first call is "not supported here": mailpipe falls
/// back to read/write and must store the message intact; any error after
/// data moved, and every other errno, defers.
#[test]
fn syscall_faults_in_the_body_copy_defer_or_fall_back() {
    require_root_and_strace();
    // Over 1 MiB past the first 16 KiB read: at least two copy calls either way.
    let msg = message("copy", 1536 * 1024);
    let mut runs = 0;
    for (input, syscall) in [
        (Input::Pipe(msg.clone()), "splice"),
        (Input::File(msg.clone()), "copy_file_range"),
    ] {
        let spool = Spool::new("copy-plan", 30).with_maildir();
        let (o, calls) = trace(&Delivery::new(&spool, input.clone()), syscall, &[]);
        assert_eq!(o.code, Some(0), "{o:?}");
        let moved = calls
            .iter()
            .filter(|c| c.name == syscall && c.ret.parse::<i64>().is_ok_and(|n| n > 0))
            .count();
        assert!(moved >= 2, "{syscall}: only {moved} calls moved data");
        for nth in [1, 2] {
            for errno in ERRNOS {
                let spool = Spool::new("copy", 30).with_maildir();
                let o = inject(&spool, &input, syscall, errno, nth);
                let what = format!("{syscall}#{nth}={errno}");
                if errno == "EXDEV" && nth == 1 {
                    assert_eq!(o.code, Some(0), "{what}: {o:?}");
                    assert_stored_once(&spool, &msg, &what);
                } else {
                    assert_deferred_clean(&spool, &o, &what);
                }
                runs += 1;
            }
        }
    }
    eprintln!("body copy: {runs} injected faults");
}

/// mkdirat of the route folder and of `new/` on a fresh spool, and the
/// openat of the spool root and of the configuration file.
#[test]
fn syscall_faults_on_folders_and_config_defer() {
    require_root_and_strace();
    let msg = message("folders", 4096);
    let mut runs = 0;
    for input in Input::both(msg) {
        for nth in [1, 3] {
            for errno in ERRNOS {
                let spool = Spool::new("mkdir", 30);
                let o = inject(&spool, &input, "mkdirat", errno, nth);
                assert_deferred_clean(&spool, &o, &format!("mkdirat#{nth}={errno}"));
                runs += 1;
            }
        }
        let spool = Spool::new("open-plan", 30);
        let (_, calls) = trace(&Delivery::new(&spool, input.clone()), "openat", &[]);
        for (path, code) in [(&spool.root, "4.3.0"), (&spool.config, "4.3.5")] {
            let path = format!("\"{}\"", path.display());
            let nth = calls
                .iter()
                .find(|c| c.args.contains(&path))
                .map(|c| c.nth)
                .unwrap_or_else(|| panic!("no openat of {path}"));
            for errno in ["EACCES", "EIO"] {
                let spool = Spool::new("open", 30);
                let o = inject(&spool, &input, "openat", errno, nth);
                let what = format!("openat({path})={errno}");
                assert_deferred_clean(&spool, &o, &what);
                assert!(o.first_line().starts_with(code), "{what}: {o:?}");
                runs += 1;
            }
        }
    }
    eprintln!("folders and config: {runs} injected faults");
}

/// A real full file system: a 64 KiB tmpfs under a 200 KiB message, a
/// tmpfs already full, and one without a free inode; then room again.
#[test]
fn full_file_system_defers_and_recovers() {
    require_root_and_strace();
    let big = message("full-big", 200 * 1024);
    let small = message("full-small", 1024);
    for input in Input::both(big) {
        let mut spool = Spool::new("tmpfs-small", 30);
        let root = spool.root.clone();
        spool.scratch.mount_tmpfs(&root, "size=64k,mode=0755");
        let o = Delivery::new(&spool, input.clone()).run();
        let what = format!("64k tmpfs ({})", input.name());
        assert_deferred_clean(&spool, &o, &what);
        assert!(o.first_line().starts_with("4.3.1"), "{what}: {o:?}");
    }
    for input in Input::both(small.clone()) {
        let mut spool = Spool::new("tmpfs-full", 30);
        let root = spool.root.clone();
        spool.scratch.mount_tmpfs(&root, "size=64k,mode=0755");
        for d in ["tmp", "new", "cur"] {
            fs::create_dir_all(spool.maildir().join(d)).expect("maildir");
        }
        let filler = root.join("filler");
        let _ = fs::write(&filler, vec![b'x'; 128 * 1024]);
        let o = Delivery::new(&spool, input.clone()).run();
        let what = format!("full tmpfs ({})", input.name());
        assert_deferred_clean(&spool, &o, &what);
        fs::remove_file(&filler).expect("free the space");
        let o = Delivery::new(&spool, input.clone()).run();
        assert_eq!(o.code, Some(0), "after freeing space: {o:?}");
        assert_stored_once(&spool, &small, "after freeing space");
    }
    // Root, incoming_email, tmp, new, cur: five inodes, none for the file.
    let mut spool = Spool::new("tmpfs-inodes", 30);
    let root = spool.root.clone();
    spool
        .scratch
        .mount_tmpfs(&root, "size=1m,nr_inodes=5,mode=0755");
    for d in ["tmp", "new", "cur"] {
        fs::create_dir_all(spool.maildir().join(d)).expect("maildir");
    }
    let o = Delivery::new(&spool, Input::Pipe(small)).run();
    assert_deferred_clean(&spool, &o, "no free inode");
    assert!(o.first_line().starts_with("4.3.1"), "no free inode: {o:?}");
}

/// RLIMIT_FSIZE below the message size: EFBIG (SIGXFSZ is ignored), 4.3.1.
#[test]
fn file_size_limit_defers() {
    require_root_and_strace();
    let msg = message("fsize", 200 * 1024);
    for input in Input::both(msg) {
        let spool = Spool::new("fsize", 30).with_maildir();
        let mut d = Delivery::new(&spool, input.clone());
        d.fsize = Some(64 * 1024);
        let o = d.run();
        let what = format!("RLIMIT_FSIZE 64 KiB ({})", input.name());
        assert_eq!(o.signal, None, "{what}: killed by a signal: {o:?}");
        assert_deferred_clean(&spool, &o, &what);
        assert!(o.first_line().starts_with("4.3.1"), "{what}: {o:?}");
    }
}

const STEPS: [&str; 8] = [
    "create", "write", "fsync", "close", "link", "unlink", "dirsync", "done",
];
const ACTIONS: [&str; 4] = ["exit", "panic", "abort", "kill"];
const REPETITIONS: usize = 5;

/// Every step of the commit sequence x every way to die, several times,
/// each followed by Postfix's retry.
#[test]
fn crash_at_every_commit_step_keeps_new_complete() {
    require_root_and_strace();
    if !cfg!(debug_assertions) {
        eprintln!("release build: MAILPIPE_FAULT is compiled out; crash points skipped");
        return;
    }
    let msg = message("crash", 100 * 1024);
    let mut crashes = 0;
    for step in STEPS {
        let linked = matches!(step, "unlink" | "dirsync" | "done");
        for action in ACTIONS {
            for rep in 0..REPETITIONS {
                let input = if rep % 2 == 0 {
                    Input::Pipe(msg.clone())
                } else {
                    Input::File(msg.clone())
                };
                let what = format!("{step}:{action} #{rep} ({})", input.name());
                let spool = Spool::new("crash", 30).with_maildir();
                let o = Delivery::new(&spool, input.clone())
                    .fault(&format!("{step}:{action}"))
                    .run();
                match action {
                    "exit" => assert_eq!(o.code, Some(75), "{what}: {o:?}"),
                    "panic" => {
                        assert_eq!(o.code, Some(75), "{what}: {o:?}");
                        assert!(o.first_line().starts_with("4.3.0"), "{what}: {o:?}");
                        // The hook removes the tmp file.
                        assert!(spool.tmp_files().is_empty(), "{what}: tmp/ not clean");
                    }
                    "abort" => assert_eq!(o.signal, Some(libc::SIGABRT), "{what}: {o:?}"),
                    _ => assert_eq!(o.signal, Some(libc::SIGKILL), "{what}: {o:?}"),
                }
                // new/ holds only complete files: none before the link, the
                // whole message after it.
                let new = spool.new_files();
                assert_eq!(new.len(), usize::from(linked), "{what}: {:?}", new.keys());
                assert!(
                    new.values().all(|f| *f == msg),
                    "{what}: partial file in new/"
                );
                // At most the one abandoned tmp file, for the 36-hour reaper.
                assert!(
                    spool.tmp_files().len() <= 1,
                    "{what}: {:?}",
                    spool.tmp_files()
                );
                crashes += 1;

                // Postfix retries; exit 0 means the file is there.
                let retry = Delivery::new(&spool, input).run();
                assert_eq!(retry.code, Some(0), "{what}, retry: {retry:?}");
                let new = spool.new_files();
                let want = if linked { 2 } else { 1 };
                assert_eq!(new.len(), want, "{what}, retry: {:?}", new.keys());
                assert!(new.values().all(|f| *f == msg), "{what}: partial file");
            }
        }
    }
    eprintln!("crash points: {crashes} crashes, each retried");
}

/// SIGKILL from outside at moments spread over a 4 MiB delivery.
#[test]
fn sigkill_at_arbitrary_moments_keeps_new_complete() {
    require_root_and_strace();
    let msg = message("sigkill", 4 * 1024 * 1024);
    let mut before = 0;
    let mut after = 0;
    for i in 0..20u64 {
        let spool = Spool::new("sigkill", 30).with_maildir();
        let mut running = Delivery::new(&spool, Input::Pipe(msg.clone())).spawn();
        std::thread::sleep(Duration::from_micros(i * 1500));
        running.kill9();
        let o = running.wait();
        let what = format!("kill after {} us", i * 1500);
        let new = spool.new_files();
        assert!(
            new.values().all(|f| *f == msg),
            "{what}: partial file in new/"
        );
        match o.code {
            Some(0) => assert_eq!(new.len(), 1, "{what}: exit 0 without the file"),
            Some(c) => panic!("{what}: exit {c}"),
            None => assert!(new.len() <= 1, "{what}"),
        }
        if new.is_empty() {
            before += 1;
        } else {
            after += 1;
        }
        let retry = Delivery::new(&spool, Input::Pipe(msg.clone())).run();
        assert_eq!(retry.code, Some(0), "{what}, retry: {retry:?}");
        let new = spool.new_files();
        assert!((1..=2).contains(&new.len()), "{what}: {:?}", new.keys());
        assert!(new.values().all(|f| *f == msg), "{what}: partial file");
    }
    eprintln!("sigkill: {before} runs killed before the link, {after} after");
}

/// 1,000 deliveries alive at once (all blocked on stdin, then released
/// together), one queue id for all: 1,000 distinct complete files.
#[test]
fn thousand_concurrent_deliveries_make_thousand_files() {
    require_root_and_strace();
    const N: usize = 1000;
    raise_nofile(4 * N as u64);
    let spool = Spool::new("concurrent", 120).with_maildir();
    let msgs: Vec<Vec<u8>> = (0..N)
        .map(|i| message(&format!("concurrent-{i:04}"), 2048 + i))
        .collect();
    let mut children = Vec::with_capacity(N);
    for _ in 0..N {
        let mut d = Delivery::new(&spool, Input::Pipe(Vec::new()));
        d.queue_id = Some("4FsameQueueId".into());
        let mut cmd = d.command();
        cmd.stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        children.push(cmd.spawn().expect("spawn"));
    }
    for (child, msg) in children.iter_mut().zip(&msgs) {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(msg).expect("feed");
    }
    for (i, child) in children.iter_mut().enumerate() {
        let st = child.wait().expect("wait");
        assert_eq!(st.code(), Some(0), "delivery {i}: {st:?}");
    }
    let new = spool.new_files();
    assert_eq!(new.len(), N, "files in new/");
    let mut stored: Vec<&Vec<u8>> = new.values().collect();
    stored.sort();
    let mut want: Vec<&Vec<u8>> = msgs.iter().collect();
    want.sort();
    assert!(stored == want, "new/ is not exactly the 1,000 messages");
    assert!(spool.tmp_files().is_empty());
}

/// As the unprivileged service user: a spool it owns works (files 0640,
/// its own); read-only, foreign-owned and read-only-mounted spools defer.
#[test]
fn unprivileged_user_defers_on_unwritable_spools() {
    require_root_and_strace();
    let user = service_user();
    let msg = message("perm", 4096);
    let run = |spool: &Spool| {
        let mut d = Delivery::new(spool, Input::Pipe(msg.clone()));
        d.program = public_binary(&spool.scratch);
        d.user = Some((user.uid, user.gid));
        d.run()
    };

    let spool = Spool::new("perm-ok", 30);
    spool.chown_all(user.uid, user.gid);
    let o = run(&spool);
    assert_eq!(o.code, Some(0), "own spool: {o:?}");
    assert_stored_once(&spool, &msg, "own spool");
    let dir = spool.maildir().join("new");
    let file = dir.join(spool.new_files().keys().next().expect("file"));
    let meta = fs::metadata(&file).expect("stat");
    assert_eq!((meta.uid(), meta.mode() & 0o777), (user.uid, 0o640));

    // Root owned by root, 0755: the route folder cannot be made.
    let spool = Spool::new("perm-foreign-root", 30);
    let o = run(&spool);
    assert_deferred_clean(&spool, &o, "foreign-owned root");
    assert!(list(&spool.root).is_empty(), "something was created");

    // A Maildir owned by root: tmp/ is not writable.
    let spool = Spool::new("perm-foreign-maildir", 30).with_maildir();
    let o = run(&spool);
    assert_deferred_clean(&spool, &o, "foreign-owned Maildir");

    // The user's own root, made read-only by mode.
    let spool = Spool::new("perm-0500", 30);
    spool.chown_all(user.uid, user.gid);
    fs::set_permissions(&spool.root, fs::Permissions::from_mode(0o500)).expect("chmod");
    let o = run(&spool);
    assert_deferred_clean(&spool, &o, "root mode 0500");

    // A read-only mount (EROFS), Maildir in place and owned by the user.
    let mut spool = Spool::new("perm-ro-mount", 30);
    let root = spool.root.clone();
    spool.scratch.mount_tmpfs(&root, "size=1m,mode=0755");
    let spool = spool.with_maildir();
    spool.chown_all(user.uid, user.gid);
    spool.scratch.remount_ro(&root);
    let o = run(&spool);
    assert_deferred_clean(&spool, &o, "read-only mount");
}

/// `new/`, `tmp/` or the route folder replaced by a symbolic link to a
/// folder the user could write: 75, and the target stays empty. The spool
/// root itself may be a link (resolved once, as documented).
#[test]
fn symlinked_spool_folders_are_never_followed() {
    require_root_and_strace();
    let user = service_user();
    let msg = message("symlink", 4096);
    for which in ["new", "tmp", "route"] {
        let spool = Spool::new("symlink", 30).with_maildir();
        let victim = spool.scratch.path("victim");
        for d in ["tmp", "new", "cur"] {
            fs::create_dir_all(victim.join(d)).expect("victim");
        }
        let link_at = match which {
            "route" => spool.maildir(),
            d => spool.maildir().join(d),
        };
        fs::remove_dir_all(&link_at).expect("remove");
        let target = if which == "route" {
            victim.clone()
        } else {
            victim.join(which)
        };
        symlink(&target, &link_at).expect("plant symlink");
        spool.chown_all(user.uid, user.gid);
        let _ = std::process::Command::new("chown")
            .arg("-R")
            .arg(format!("{}:{}", user.uid, user.gid))
            .arg(&victim)
            .status();
        let mut d = Delivery::new(&spool, Input::Pipe(msg.clone()));
        d.program = public_binary(&spool.scratch);
        d.user = Some((user.uid, user.gid));
        let o = d.run();
        let what = format!("{which} is a symlink");
        assert_eq!(o.code, Some(75), "{what}: {o:?}");
        assert!(o.first_line().starts_with("4."), "{what}: {o:?}");
        for d in ["tmp", "new", "cur"] {
            assert!(
                list(&victim.join(d)).is_empty(),
                "{what}: followed into {d}"
            );
        }
        assert!(fs::symlink_metadata(&link_at).expect("lstat").is_symlink());
    }
    // The root as a link is allowed: resolved once, at open.
    let spool = Spool::new("root-link", 30);
    let real = spool.scratch.path("real-root");
    fs::rename(&spool.root, &real).expect("move root");
    symlink(&real, &spool.root).expect("link root");
    let o = Delivery::new(&spool, Input::Pipe(msg.clone())).run();
    assert_eq!(o.code, Some(0), "root symlink: {o:?}");
    assert_stored_once(&spool, &msg, "root symlink");
}

/// A symbolic link planted at the very name mailpipe is about to create
/// in `tmp/` (or link into `new/`), while strace holds it at that call:
/// mailpipe takes a fresh name and never writes through the link.
#[test]
fn planted_symlink_at_the_next_name_gets_a_fresh_name() {
    require_root_and_strace();
    let user = service_user();
    let msg = message("planted", 4096);
    for (dir, syscall, nr, arg) in [
        ("tmp", "openat", libc::SYS_openat, 1),
        ("new", "linkat", libc::SYS_linkat, 3),
    ] {
        let spool = Spool::new("planted", 30).with_maildir();
        spool.chown_all(user.uid, user.gid);
        let victim = spool.scratch.path("victim");
        fs::write(&victim, b"victim\n").expect("victim");
        let _ = std::process::Command::new("chown")
            .arg(format!("{}:{}", user.uid, user.gid))
            .arg(&victim)
            .status();
        let mut d = Delivery::new(&spool, Input::Pipe(msg.clone()));
        d.program = public_binary(&spool.scratch);
        let as_user = ["-u", user.name.as_str()];
        let (o, calls) = trace(&d, syscall, &as_user);
        assert_eq!(o.code, Some(0), "traced run: {o:?}");
        let nth = calls
            .iter()
            .filter(|c| c.name == syscall)
            .find(|c| syscall != "openat" || c.args.contains("O_EXCL"))
            .expect("the call to hold")
            .nth;
        for f in list(&spool.maildir().join("new")) {
            fs::remove_file(spool.maildir().join("new").join(f)).expect("clean");
        }

        let hold = format!("inject={syscall}:delay_enter=2500000:when={nth}");
        let d = d.strace(&[
            "-u",
            &user.name,
            "-e",
            &format!("trace={syscall}"),
            "-e",
            &hold,
        ]);
        let running = d.spawn();
        let strace_pid = running.pid();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let name = loop {
            assert!(
                std::time::Instant::now() < deadline,
                "never saw the held call"
            );
            let seen = child_of(strace_pid).and_then(|pid| stopped_path_arg(pid, nr, arg));
            if let Some(n) = seen.filter(|n| !n.contains('/') && n.contains(".M")) {
                break n;
            }
            std::thread::sleep(Duration::from_millis(2));
        };
        let planted = spool.maildir().join(dir).join(&name);
        symlink(&victim, &planted).expect("plant");
        let o = running.wait();
        let what = format!("symlink planted at {dir}/{name}");
        assert_eq!(o.code, Some(0), "{what}: {o:?}");
        assert_eq!(
            fs::read(&victim).expect("victim"),
            b"victim\n",
            "{what}: followed"
        );
        assert!(fs::symlink_metadata(&planted).expect("lstat").is_symlink());
        let real: Vec<String> = list(&spool.maildir().join("new"))
            .into_iter()
            .filter(|f| *f != name || dir == "tmp")
            .collect();
        assert_eq!(real.len(), 1, "{what}: new/ holds {real:?}");
        assert_ne!(real[0], name, "{what}: reused the planted name");
        let stored = fs::read(spool.maildir().join("new").join(&real[0])).expect("read");
        assert!(stored == msg, "{what}: stored copy differs");
    }
}

/// stdin that drips or stalls, in the header section or in the body, hits
/// `deadline_secs = 2`: 75 with 4.4.7 well before any Postfix time limit,
/// and the tmp file is removed.
#[test]
fn endless_or_silent_stdin_hits_the_deadline() {
    require_root_and_strace();
    let headers = format!("To: {}\nSubject: drip\n", recipient()).into_bytes();
    let mut with_body = headers.clone();
    with_body.extend_from_slice(b"\nbody starts here\n");
    let cases = [
        ("drip in the headers", headers.clone(), b"x".to_vec(), 100),
        ("drip in the body", with_body.clone(), vec![b'y'; 4096], 50),
        ("silent after the headers", with_body, Vec::new(), 50),
        ("silent from the start", Vec::new(), Vec::new(), 50),
    ];
    std::thread::scope(|s| {
        for (what, head, chunk, ms) in cases {
            s.spawn(move || {
                let spool = Spool::new("deadline", 2).with_maildir();
                let input = Input::Drip {
                    head,
                    chunk,
                    every: Duration::from_millis(ms),
                };
                let o = Delivery::new(&spool, input).run();
                assert_deferred_clean(&spool, &o, what);
                assert!(o.first_line().starts_with("4.4.7"), "{what}: {o:?}");
                assert!(
                    o.elapsed >= Duration::from_millis(1900) && o.elapsed < Duration::from_secs(6),
                    "{what}: took {:?}",
                    o.elapsed
                );
            });
        }
    });
}

/// A file fsync that hangs (a hung NFS server; strace holds the call 8 s,
/// a wait a handled signal cannot interrupt) must still end the delivery
/// long before Postfix's time limit, which would bounce. Two endings are
/// sound: the 4.4.7 line and exit 75 at the 2 s deadline (tmp removed), or
/// death by SIGKILL (Postfix defers a signal death) soon after it, with
/// `new/` untouched. strace keeps a held thread from dying until it lets
/// go, so the moment checked is when the report line came or when SIGKILL
/// was queued for the process (read from /proc), not when strace exited.
#[test]
fn slow_fsync_hits_the_deadline() {
    require_root_and_strace();
    let msg = message("slow-fsync", 8192);
    let input = Input::Pipe(msg);
    let p = plan(&input);
    let spool = Spool::new("slow-fsync", 2).with_maildir();
    let hold = format!("inject=fsync:delay_enter=8000000:when={}", p.fsync_file);
    let running = Delivery::new(&spool, input)
        .strace(&["-e", "trace=fsync", "-e", &hold])
        .spawn();
    let started = std::time::Instant::now();
    let strace_pid = running.pid();
    let mut tracee = None;
    let mut killed_at = None;
    while started.elapsed() < Duration::from_secs(12) {
        // Only mailpipe itself counts: strace's first child can be a
        // short-lived process that has not exec'd mailpipe yet.
        if tracee.is_none() {
            tracee = child_of(strace_pid).filter(|pid| {
                std::fs::read_to_string(format!("/proc/{pid}/comm"))
                    .is_ok_and(|c| c.trim() == "mailpipe")
            });
        }
        if let Some(pid) = tracee
            && sigkill_pending_or_dead(pid)
        {
            killed_at = Some(started.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let o = running.wait();
    let in_time = |t: Duration| t >= Duration::from_millis(1900) && t < Duration::from_secs(6);
    assert!(spool.new_files().is_empty(), "slow fsync: new/ touched");
    match (o.code, o.signal) {
        (Some(75), _) => {
            assert_deferred_clean(&spool, &o, "slow fsync");
            assert!(o.first_line().starts_with("4.4.7"), "slow fsync: {o:?}");
            let at = o.first_output.expect("a report line");
            assert!(in_time(at), "report after {at:?}");
            eprintln!("slow fsync: 4.4.7 after {at:?}");
        }
        (None, Some(libc::SIGKILL)) => {
            let at = killed_at.expect("SIGKILL was never seen queued");
            assert!(in_time(at), "SIGKILL queued after {at:?}");
            eprintln!("slow fsync: SIGKILL fallback queued after {at:?}");
            assert!(spool.tmp_files().len() <= 1, "{:?}", spool.tmp_files());
        }
        _ => panic!("slow fsync: neither deferred nor killed: {o:?}"),
    }
}

/// A read error on stdin defers; an interrupted read is retried.
#[test]
fn stdin_read_errors_defer_and_eintr_is_retried() {
    require_root_and_strace();
    let msg = message("read", 64 * 1024);
    for input in Input::both(msg.clone()) {
        let spool = Spool::new("read-plan", 30).with_maildir();
        let (_, calls) = trace(&Delivery::new(&spool, input.clone()), "read", &[]);
        let stdin_reads: Vec<usize> = calls
            .iter()
            .filter(|c| c.name == "read" && c.args.starts_with("0,"))
            .map(|c| c.nth)
            .collect();
        assert!(!stdin_reads.is_empty(), "no read of stdin: {calls:?}");
        let first = stdin_reads[0];
        let spool = Spool::new("read-eio", 30).with_maildir();
        let o = inject(&spool, &input, "read", "EIO", first);
        assert_deferred_clean(&spool, &o, &format!("read#{first}=EIO ({})", input.name()));
        let spool = Spool::new("read-eintr", 30).with_maildir();
        let o = inject(&spool, &input, "read", "EINTR", first);
        assert_eq!(o.code, Some(0), "EINTR ({}): {o:?}", input.name());
        assert_stored_once(&spool, &msg, "after EINTR");
    }
}

/// The report line cannot be written (stdout closed, or /dev/full): the
/// exit code still carries the answer, for a deferral and for a panic.
#[test]
fn broken_stdout_keeps_the_exit_code() {
    require_root_and_strace();
    let msg = message("stdout", 1024);
    for redirect in [">&-", ">/dev/full"] {
        for fault in [None, Some("fsync:panic")] {
            let spool = Spool::new("stdout", 30);
            if fault.is_some() {
                fs::create_dir_all(spool.maildir().join("new")).expect("maildir");
            } else {
                // No spool root: a deferral with a report line to print.
                fs::remove_dir(&spool.root).expect("remove root");
            }
            let mut d = Delivery::new(&spool, Input::Pipe(msg.clone()));
            d.wrapper = vec![
                "sh".into(),
                "-c".into(),
                format!("exec \"$0\" \"$@\" {redirect}"),
            ];
            if let Some(f) = fault {
                d = d.fault(f);
            }
            let o = d.run();
            let what = format!("stdout {redirect}, fault {fault:?}");
            assert_eq!(o.code, Some(75), "{what}: {o:?}");
            assert!(spool.new_files().is_empty(), "{what}");
            assert!(spool.tmp_files().is_empty(), "{what}");
        }
    }
}
