//! `mailpipe policy` on a real socket, without Postfix: systemd socket
//! activation (systemd-socket-activate), many requests per connection,
//! hostile streams with bounded memory, the idle timeout, and refusing to
//! listen off loopback. Postfix in front of it: tests/policy_e2e.rs.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_mailpipe");

const CONFIG: &str = r#"
[incoming_email]
address = "incoming+%{key}@in.example.com"
[service_desk_email]
address = "contact+%{key}@in.example.com"
[gitlab]
host = "gitlab.example.com"
[spool]
dir = "/nonexistent/mailpipe-policy-test"
[policy]
idle_timeout_secs = 2
"#;

struct Server {
    child: Child,
    dir: PathBuf,
    socket: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("mailpipe-policy-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("mailpipe.toml"), CONFIG).unwrap();
    dir
}

fn wait_socket(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while UnixStream::connect(path).is_err() {
        assert!(
            Instant::now() < deadline,
            "{} never answered",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `mailpipe policy --listen=unix:DIR/policy.sock`.
fn start(tag: &str) -> Server {
    let dir = temp_dir(tag);
    let socket = dir.join("policy.sock");
    let child = Command::new(BIN)
        .arg("policy")
        .arg(format!("--config={}", dir.join("mailpipe.toml").display()))
        .arg(format!("--listen=unix:{}", socket.display()))
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_socket(&socket);
    Server { child, dir, socket }
}

const RCPT: &str = "request=smtpd_access_policy\nprotocol_state=RCPT\nsender=a@client.example\n";

/// Reads until `n` replies (`action=…\n\n`) have come; returns them.
fn replies(s: &mut UnixStream, n: usize) -> Vec<String> {
    let mut all = Vec::new();
    let mut buf = [0u8; 65536];
    while all.windows(2).filter(|w| w == b"\n\n").count() < n {
        let got = s.read(&mut buf).expect("read reply");
        assert!(got > 0, "closed after {:?}", String::from_utf8_lossy(&all));
        all.extend_from_slice(&buf[..got]);
    }
    String::from_utf8(all)
        .unwrap()
        .split_terminator("\n\n")
        .map(|r| r.strip_prefix("action=").expect("action=").to_string())
        .collect()
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn systemd_socket_activation() {
    let dir = temp_dir("activate");
    let socket = dir.join("activated.sock");
    let mut child = Command::new("systemd-socket-activate")
        .arg("-l")
        .arg(&socket)
        .arg(BIN)
        .arg("policy")
        .arg(format!("--config={}", dir.join("mailpipe.toml").display()))
        .stderr(Stdio::null())
        .spawn()
        .expect("systemd-socket-activate (package systemd)");
    wait_socket(&socket);
    let mut s = UnixStream::connect(&socket).unwrap();
    s.write_all(format!("{RCPT}recipient=incoming+x.y@in.example.com\n\n").as_bytes())
        .unwrap();
    let r = replies(&mut s, 1);
    assert!(r[0].starts_with("550 5.1.1 mailpipe: "), "{r:?}");
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn many_pipelined_requests_get_one_answer_each_in_order() {
    let server = start("pipeline");
    let mut s = UnixStream::connect(&server.socket).unwrap();
    let valid = format!(
        "{RCPT}recipient=incoming+{}@in.example.com\n\n",
        "b".repeat(32)
    );
    let bad = format!("{RCPT}recipient=incoming+bad..key@in.example.com\n\n");
    let mut stream = String::new();
    for i in 0..1000 {
        stream.push_str(if i % 2 == 0 { &valid } else { &bad });
    }
    s.write_all(stream.as_bytes()).unwrap();
    let r = replies(&mut s, 1000);
    assert_eq!(r.len(), 1000);
    for (i, a) in r.iter().enumerate() {
        if i % 2 == 1 {
            assert!(a.starts_with("550 5.1.1 "), "{i}: {a}");
        } else if i < 40 {
            // sender_key_burst (20) valid ones, then the loop brake.
            assert_eq!(a, "DUNNO", "{i}");
        } else {
            assert!(a.starts_with("450 4.7.1 "), "{i}: {a}");
        }
    }
}

#[test]
fn hostile_streams_are_answered_with_bounded_memory() {
    let server = start("hostile");
    let pid = server.child.id();
    let before = rss_kib(pid);
    let mut s = UnixStream::connect(&server.socket).unwrap();
    // 64 MiB in one line, then more lines than allowed, then a request.
    s.write_all(b"recipient=").unwrap();
    let chunk = vec![b'a'; 1 << 20];
    for _ in 0..64 {
        s.write_all(&chunk).unwrap();
    }
    s.write_all(b"\n\n").unwrap();
    s.write_all(&b"x=y\n".repeat(100_000)).unwrap();
    s.write_all(b"\n").unwrap();
    s.write_all(format!("{RCPT}recipient=incoming+bad..key@in.example.com\n\n").as_bytes())
        .unwrap();
    let r = replies(&mut s, 3);
    assert_eq!(r[0], "DUNNO");
    assert_eq!(r[1], "DUNNO");
    assert!(r[2].starts_with("550 5.1.1 "), "{r:?}");
    let after = rss_kib(pid);
    assert!(
        after < before + 8 * 1024,
        "RSS grew from {before} KiB to {after} KiB"
    );
}

#[test]
fn idle_connections_are_closed() {
    let server = start("idle");
    let mut s = UnixStream::connect(&server.socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 16];
    // idle_timeout_secs = 2 in the test config.
    assert_eq!(s.read(&mut buf).unwrap(), 0);
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(1900) && took < Duration::from_secs(10),
        "{took:?}"
    );
}

#[test]
fn a_request_dribbled_byte_by_byte_is_cut_off() {
    let server = start("dribble");
    let mut s = UnixStream::connect(&server.socket).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let started = Instant::now();
    s.write_all(b"recipient=a").unwrap();
    let mut buf = [0u8; 16];
    // One byte every 300 ms keeps the connection busy, never idle; the
    // whole request must still come within idle_timeout_secs (2).
    let closed = loop {
        if s.write_all(b"a").is_err() {
            break started.elapsed();
        }
        match s.read(&mut buf) {
            Ok(0) => break started.elapsed(),
            Ok(_) => panic!("an answer to half a request"),
            Err(_) => {}
        }
        std::thread::sleep(Duration::from_millis(200));
        assert!(started.elapsed() < Duration::from_secs(15), "never cut off");
    };
    assert!(closed >= Duration::from_millis(1900), "{closed:?}");
}

#[test]
fn refuses_to_listen_off_loopback_or_without_a_socket() {
    let dir = temp_dir("refuse");
    let config = format!("--config={}", dir.join("mailpipe.toml").display());
    // A --listen that is not allowed is a usage error (sysexits 64); no
    // socket at all (neither --listen nor systemd's) a failure (1).
    for (args, code) in [
        (vec!["policy", &config, "--listen=inet:0.0.0.0:10033"], 64),
        (vec!["policy", &config, "--listen=unix:relative.sock"], 64),
        (vec!["policy", &config], 1),
    ] {
        let out = Command::new(BIN)
            .args(&args)
            .env_remove("LISTEN_FDS")
            .env_remove("LISTEN_PID")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(code), "{args:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).starts_with("mailpipe policy: "),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
