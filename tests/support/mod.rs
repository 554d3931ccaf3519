//! Shared helpers for the `deliver` integration tests: a temporary spool
//! with its config, and running the real binary on a message.
//!
//! Must not: mock anything; every test runs target/…/mailpipe as Postfix
//! would, on a real file system.
#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

pub const BIN: &str = env!("CARGO_BIN_EXE_mailpipe");
pub const DOMAIN: &str = "incoming.gitlab.example.com";
pub const HOST: &str = "gitlab.example.com";
pub const REPLY_KEY: &str = "59d8df8370b7e95c5a49fbf86aeb2c93";

pub fn incoming(key: &str) -> String {
    format!("incoming+{key}@{DOMAIN}")
}

pub fn contact(key: &str) -> String {
    format!("contact+{key}@{DOMAIN}")
}

/// A spool root plus config file in a fresh temporary directory.
pub struct TestSpool {
    pub dir: PathBuf,
    pub root: PathBuf,
    pub config: PathBuf,
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

pub fn scratch_dir(tag: &str) -> PathBuf {
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    let dir = std::env::temp_dir().join(format!("mailpipe-test-{}-{tag}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

impl TestSpool {
    pub fn new(tag: &str) -> TestSpool {
        TestSpool::with_extra(tag, "")
    }

    /// `extra` is appended to the config (e.g. a `[limits]` table).
    pub fn with_extra(tag: &str, extra: &str) -> TestSpool {
        let dir = scratch_dir(tag);
        let root = dir.join("spool");
        std::fs::create_dir_all(&root).unwrap();
        let config = dir.join("mailpipe.toml");
        let text = format!(
            "[incoming_email]\naddress = \"incoming+%{{key}}@{DOMAIN}\"\n\
             [service_desk_email]\naddress = \"contact+%{{key}}@{DOMAIN}\"\n\
             [gitlab]\nhost = \"{HOST}\"\n[spool]\ndir = \"{}\"\n{extra}",
            root.display()
        );
        std::fs::write(&config, text).unwrap();
        TestSpool { dir, root, config }
    }

    pub fn new_dir(&self, route: &str) -> PathBuf {
        self.root.join(route).join("new")
    }

    /// Files in `<route>/new/`, sorted by name.
    pub fn files(&self, route: &str) -> Vec<PathBuf> {
        list(&self.new_dir(route))
    }

    pub fn tmp_files(&self, route: &str) -> Vec<PathBuf> {
        list(&self.root.join(route).join("tmp"))
    }

    /// The single stored message of `route`.
    pub fn only(&self, route: &str) -> Vec<u8> {
        let files = self.files(route);
        assert_eq!(
            files.len(),
            1,
            "expected one file in {route}/new: {files:?}"
        );
        std::fs::read(&files[0]).unwrap()
    }

    pub fn deliver(&self, args: &[&str], input: &[u8]) -> Run {
        run(&self.config, "deliver", args, input)
    }

    pub fn explain(&self, args: &[&str], input: &[u8]) -> serde_json::Value {
        let out = run(&self.config, "explain", args, input);
        assert_eq!(out.code, 0, "explain exits 0: {}", out.stdout);
        serde_json::from_str(out.stdout.trim()).unwrap()
    }
}

impl Drop for TestSpool {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn list(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(rd) => rd.map(|e| e.unwrap().path()).collect(),
        Err(_) => Vec::new(),
    };
    v.sort();
    v
}

/// What one run of the binary gave.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

pub fn run(config: &Path, cmd: &str, args: &[&str], input: &[u8]) -> Run {
    let mut child = Command::new(BIN)
        .arg(cmd)
        .arg(format!("--config={}", config.display()))
        .args(args)
        .env_remove("SENDER")
        .env_remove("RECIPIENT")
        .env_remove("ORIGINAL_RECIPIENT")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let data = input.to_vec();
    // Write in a thread: mailpipe may exit before reading everything.
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&data);
    });
    let out = child.wait_with_output().unwrap();
    let _ = writer.join();
    finish(out)
}

pub fn finish(out: Output) -> Run {
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A plain reply to a GitLab notification, addressed to `to`.
pub fn message(to: &str, extra_headers: &str) -> Vec<u8> {
    format!(
        "Return-Path: <jake@example.com>\n\
         From: Jake the Dog <jake@example.com>\n\
         To: {to}\n\
         {extra_headers}\
         Subject: Re: issue\n\
         Message-ID: <CADkmRc+1@mail.example.com>\n\
         Date: Thu, 13 Jun 2024 17:03:48 +0200\n\
         Content-Type: text/plain; charset=ISO-8859-1\n\
         \n\
         I could not disagree more.\n"
    )
    .into_bytes()
}

/// Input with every line ending turned into LF, and into CRLF.
pub fn lf(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        if input[i] == b'\r' && input.get(i + 1) == Some(&b'\n') {
            i += 1;
            continue;
        }
        out.push(input[i]);
        i += 1;
    }
    out
}

pub fn crlf(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len() + input.len() / 40);
    for &b in &lf(input) {
        if b == b'\n' {
            out.push(b'\r');
        }
        out.push(b);
    }
    out
}
