//! Helpers for tests/reliability.rs: scratch spools, running the real
//! `mailpipe deliver` with a given stdin (pipe, file, drip, silence), under
//! strace, with a file-size limit or as an unprivileged user, and reading
//! back what the spool holds.
//!
//! Needs root (mounts, chown, dropping privileges) and strace; both are
//! checked up front with a message naming `scripts/install-test-deps`.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// A key GitLab's CreateNote handler accepts.
pub const KEY: &str = "59d8df8370b7e95c5a49fbf86aeb2c93";
pub const ROUTE: &str = "incoming_email";
/// No test delivery may take longer than this; past it the test fails
/// instead of hanging.
const HANG: Duration = Duration::from_secs(90);

pub fn recipient() -> String {
    format!("incoming+{KEY}@incoming.example.com")
}

/// The binary under test (a debug build under `cargo test`, so the
/// MAILPIPE_FAULT switch is compiled in).
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_mailpipe"))
}

/// Panics unless the suite can run here: root, and strace installed.
pub fn require_root_and_strace() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "tests/reliability.rs must run as root (mounts, chown, uid switch)"
    );
    let ok = Command::new("strace")
        .arg("-V")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "strace is missing: run scripts/install-test-deps");
}

/// A message whose To carries the key (so the stored copy is the message
/// exactly, nothing prepended), a tag header, and `body_len` body bytes.
pub fn message(tag: &str, body_len: usize) -> Vec<u8> {
    let mut m = format!(
        "To: {}\nSubject: reliability {tag}\nX-Tag: {tag}\n\n",
        recipient()
    )
    .into_bytes();
    let mut x: u32 = 0x1234_5678 ^ tag.len() as u32;
    while m.len() < body_len + 80 {
        // Printable, line-structured, deterministic filler.
        x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        let c = b'a' + (x >> 16) as u8 % 26;
        m.push(if m.len() % 77 == 76 { b'\n' } else { c });
    }
    m.push(b'\n');
    m
}

static SERIAL: AtomicUsize = AtomicUsize::new(0);

/// A folder under /tmp that every user may traverse, removed (after
/// unmounting anything mounted below it) when dropped.
pub struct Scratch {
    pub dir: PathBuf,
    mounts: Vec<PathBuf>,
}

impl Scratch {
    pub fn new(label: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!(
            "mailpipe-rel-{}-{}-{label}",
            std::process::id(),
            SERIAL.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("create scratch dir");
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).expect("chmod scratch");
        Scratch {
            dir,
            mounts: Vec::new(),
        }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }

    /// Mounts a tmpfs with `options` (like `size=64k`) on `at`.
    pub fn mount_tmpfs(&mut self, at: &Path, options: &str) {
        fs::create_dir_all(at).expect("mount point");
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "tmpfs"])
            .arg(at)
            .status()
            .expect("run mount");
        assert!(st.success(), "mount -t tmpfs -o {options} failed");
        self.mounts.push(at.to_path_buf());
    }

    /// Remounts `at` (a tmpfs mounted by this scratch) read-only.
    pub fn remount_ro(&self, at: &Path) {
        let st = Command::new("mount")
            .args(["-o", "remount,ro"])
            .arg(at)
            .status()
            .expect("run mount");
        assert!(st.success(), "remount ro failed");
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        for m in self.mounts.iter().rev() {
            let ok = Command::new("umount")
                .arg(m)
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                let _ = Command::new("umount").arg("-l").arg(m).status();
            }
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// A spool root with its configuration file.
pub struct Spool {
    pub scratch: Scratch,
    pub root: PathBuf,
    pub config: PathBuf,
}

impl Spool {
    /// An empty spool root (no Maildir yet) and a config with the given
    /// deadline.
    pub fn new(label: &str, deadline_secs: u64) -> Spool {
        let scratch = Scratch::new(label);
        let root = scratch.path("spool");
        fs::create_dir_all(&root).expect("spool root");
        let config = scratch.path("mailpipe.toml");
        fs::write(
            &config,
            format!(
                "[incoming_email]\naddress = \"incoming+%{{key}}@incoming.example.com\"\n\
                 [gitlab]\nhost = \"gitlab.example.com\"\n[spool]\ndir = \"{}\"\n\
                 [limits]\ndeadline_secs = {deadline_secs}\n",
                root.display()
            ),
        )
        .expect("write config");
        fs::set_permissions(&config, fs::Permissions::from_mode(0o644)).expect("chmod config");
        Spool {
            scratch,
            root,
            config,
        }
    }

    /// Creates `<root>/incoming_email/{tmp,new,cur}` as mailpipe would.
    pub fn with_maildir(self) -> Spool {
        for d in ["tmp", "new", "cur"] {
            fs::create_dir_all(self.maildir().join(d)).expect("maildir");
        }
        self
    }

    pub fn maildir(&self) -> PathBuf {
        self.root.join(ROUTE)
    }

    /// Name -> content of every entry in `new/` (empty when it is missing).
    /// A symbolic link there fails the test: nothing may ever be one.
    pub fn new_files(&self) -> BTreeMap<String, Vec<u8>> {
        let dir = self.maildir().join("new");
        let mut out = BTreeMap::new();
        let Ok(entries) = fs::read_dir(&dir) else {
            return out;
        };
        for e in entries {
            let e = e.expect("entry");
            let meta = fs::symlink_metadata(e.path()).expect("lstat");
            assert!(meta.is_file(), "{} is not a plain file", e.path().display());
            out.insert(
                e.file_name().to_string_lossy().into_owned(),
                fs::read(e.path()).expect("read spooled"),
            );
        }
        out
    }

    /// Names in `tmp/` (empty when it is missing).
    pub fn tmp_files(&self) -> Vec<String> {
        list(&self.maildir().join("tmp"))
    }

    /// Makes the whole spool belong to `uid:gid`.
    pub fn chown_all(&self, uid: u32, gid: u32) {
        let st = Command::new("chown")
            .arg("-R")
            .arg(format!("{uid}:{gid}"))
            .arg(&self.root)
            .status()
            .expect("chown");
        assert!(st.success());
    }
}

pub fn list(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .map(|r| {
            r.map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// How stdin is given.
#[derive(Clone)]
pub enum Input {
    /// A pipe that receives these bytes, then EOF (splice path).
    Pipe(Vec<u8>),
    /// A regular file holding these bytes (copy_file_range path).
    File(Vec<u8>),
    /// A pipe that receives `head`, then `chunk` every `every`, and never
    /// ends (until the process exits or `HANG`).
    Drip {
        head: Vec<u8>,
        chunk: Vec<u8>,
        every: Duration,
    },
}

impl Input {
    pub fn bytes(&self) -> &[u8] {
        match self {
            Input::Pipe(b) | Input::File(b) => b,
            Input::Drip { head, .. } => head,
        }
    }
    pub fn name(&self) -> &'static str {
        match self {
            Input::Pipe(_) => "pipe",
            Input::File(_) => "file",
            Input::Drip { .. } => "drip",
        }
    }
    /// The same bytes through the other kind of stdin.
    pub fn both(bytes: Vec<u8>) -> [Input; 2] {
        [Input::Pipe(bytes.clone()), Input::File(bytes)]
    }
}

/// How a run ended.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub code: Option<i32>,
    pub signal: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    /// From spawn to exit (of strace, when wrapped).
    pub elapsed: Duration,
    /// From spawn to the first byte on stdout (the report line).
    pub first_output: Option<Duration>,
}

impl Outcome {
    pub fn first_line(&self) -> &str {
        self.stdout.lines().next().unwrap_or("")
    }
}

/// One `mailpipe deliver` invocation, configurable before `run`.
pub struct Delivery {
    pub program: PathBuf,
    pub config: PathBuf,
    pub input: Input,
    pub envs: Vec<(String, String)>,
    /// Wrapper command and its arguments (strace ...), before the binary.
    pub wrapper: Vec<String>,
    pub user: Option<(u32, u32)>,
    pub fsize: Option<u64>,
    pub queue_id: Option<String>,
    /// Scratch folder for the stdin file.
    pub scratch: PathBuf,
}

impl Delivery {
    pub fn new(spool: &Spool, input: Input) -> Delivery {
        Delivery {
            program: bin(),
            config: spool.config.clone(),
            input,
            envs: Vec::new(),
            wrapper: Vec::new(),
            user: None,
            fsize: None,
            queue_id: None,
            scratch: spool.scratch.dir.clone(),
        }
    }

    pub fn env(mut self, k: &str, v: &str) -> Delivery {
        self.envs.push((k.into(), v.into()));
        self
    }

    pub fn fault(self, spec: &str) -> Delivery {
        self.env("MAILPIPE_FAULT", spec)
    }

    pub fn strace(mut self, args: &[&str]) -> Delivery {
        self.wrapper = ["strace", "-f", "-o", "/dev/null"]
            .iter()
            .chain(args)
            .map(|s| s.to_string())
            .collect();
        self
    }

    pub fn command(&self) -> Command {
        let mut cmd = match self.wrapper.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(&self.program);
                c
            }
            None => Command::new(&self.program),
        };
        cmd.arg("deliver")
            .arg(format!("--config={}", self.config.display()))
            .arg("--sender=sender@example.org")
            .arg(format!("--recipient={}", recipient()));
        if let Some(q) = &self.queue_id {
            cmd.arg(format!("--queue-id={q}"));
        }
        cmd.env_remove("MAILPIPE_FAULT");
        for (k, v) in &self.envs {
            cmd.env(k, v);
        }
        if let Some((uid, gid)) = self.user {
            cmd.uid(uid).gid(gid);
        }
        if let Some(limit) = self.fsize {
            // SAFETY: setrlimit is async-signal-safe; nothing else runs
            // between fork and exec here.
            unsafe {
                cmd.pre_exec(move || {
                    let rl = libc::rlimit {
                        rlim_cur: limit,
                        rlim_max: limit,
                    };
                    if libc::setrlimit(libc::RLIMIT_FSIZE, &rl) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        cmd
    }

    /// Starts the process; stdin is fed by a thread that stops when
    /// `done` is set.
    pub fn spawn(&self) -> Running {
        let mut cmd = self.command();
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        match &self.input {
            Input::File(bytes) => {
                let path = self
                    .scratch
                    .join(format!("stdin-{}", SERIAL.fetch_add(1, Ordering::Relaxed)));
                fs::write(&path, bytes).expect("write stdin file");
                cmd.stdin(fs::File::open(&path).expect("open stdin file"));
            }
            _ => {
                cmd.stdin(Stdio::piped());
            }
        }
        let started = Instant::now();
        // A binary copied by another test thread can be briefly "busy"
        // (ETXTBSY: a concurrent fork inherited the copy's write fd).
        let mut tries = 0;
        let mut child = loop {
            match cmd.spawn() {
                Ok(c) => break c,
                Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && tries < 100 => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => panic!("spawn {}: {e}", self.program.display()),
            }
        };
        let done = Arc::new(AtomicBool::new(false));
        let feeder = child.stdin.take().map(|mut stdin| {
            let input = self.input.clone();
            let done = done.clone();
            std::thread::spawn(move || match input {
                Input::Pipe(bytes) => {
                    let _ = stdin.write_all(&bytes);
                }
                Input::Drip { head, chunk, every } => {
                    if stdin.write_all(&head).is_err() {
                        return;
                    }
                    let until = Instant::now() + HANG;
                    while !done.load(Ordering::Relaxed) && Instant::now() < until {
                        std::thread::sleep(every);
                        if !chunk.is_empty() && stdin.write_all(&chunk).is_err() {
                            return;
                        }
                    }
                }
                Input::File(_) => {}
            })
        });
        let out = reader(child.stdout.take(), started);
        let err = reader(child.stderr.take(), started);
        Running {
            child,
            started,
            done,
            feeder,
            out,
            err,
        }
    }

    pub fn run(&self) -> Outcome {
        self.spawn().wait()
    }
}

type Captured = std::thread::JoinHandle<(String, Option<Duration>)>;

/// Reads a stream to its end; also when its first byte came.
fn reader<R: Read + Send + 'static>(r: Option<R>, started: Instant) -> Option<Captured> {
    r.map(|mut r| {
        std::thread::spawn(move || {
            let mut s = Vec::new();
            let mut first = None;
            let mut buf = [0u8; 4096];
            while let Ok(n) = r.read(&mut buf) {
                if n == 0 {
                    break;
                }
                first.get_or_insert_with(|| started.elapsed());
                s.extend_from_slice(&buf[..n]);
            }
            (String::from_utf8_lossy(&s).into_owned(), first)
        })
    })
}

/// A started delivery.
pub struct Running {
    pub child: Child,
    started: Instant,
    done: Arc<AtomicBool>,
    feeder: Option<std::thread::JoinHandle<()>>,
    out: Option<Captured>,
    err: Option<Captured>,
}

impl Running {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
    }

    pub fn wait(mut self) -> Outcome {
        let status = loop {
            if let Some(st) = self.child.try_wait().expect("wait") {
                break st;
            }
            if self.started.elapsed() > HANG {
                let _ = self.child.kill();
                panic!("mailpipe still running after {HANG:?}");
            }
            std::thread::sleep(Duration::from_millis(2));
        };
        let elapsed = self.started.elapsed();
        self.done.store(true, Ordering::Relaxed);
        if let Some(f) = self.feeder.take() {
            let _ = f.join();
        }
        let (stdout, first_output) = self
            .out
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        let (stderr, _) = self
            .err
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        Outcome {
            code: status.code(),
            signal: status.signal(),
            stdout,
            stderr,
            elapsed,
            first_output,
        }
    }
}

/// One traced system call of the main thread.
#[derive(Debug, Clone)]
pub struct Call {
    pub name: String,
    pub args: String,
    pub ret: String,
    /// 1-based position among the main thread's calls of this name: the
    /// `when=` strace's injection needs (it counts per thread and call).
    pub nth: usize,
}

/// Runs the delivery once under `strace -e trace=<names>` and returns the
/// main thread's calls, so an injection can aim at one exact call.
pub fn trace(delivery: &Delivery, names: &str, extra: &[&str]) -> (Outcome, Vec<Call>) {
    let log = delivery
        .scratch
        .join(format!("trace-{}", SERIAL.fetch_add(1, Ordering::Relaxed)));
    let mut d = Delivery {
        program: delivery.program.clone(),
        config: delivery.config.clone(),
        input: delivery.input.clone(),
        envs: delivery.envs.clone(),
        wrapper: Vec::new(),
        user: delivery.user,
        fsize: delivery.fsize,
        queue_id: delivery.queue_id.clone(),
        scratch: delivery.scratch.clone(),
    };
    d.wrapper = vec![
        "strace".into(),
        "-f".into(),
        "-o".into(),
        log.display().to_string(),
        "-e".into(),
        format!("trace={names}"),
    ];
    d.wrapper.extend(extra.iter().map(|s| s.to_string()));
    let outcome = d.run();
    let text = fs::read_to_string(&log).expect("read strace log");
    let mut main_pid: Option<&str> = None;
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    let mut calls = Vec::new();
    for line in text.lines() {
        // `PID  name(...)`: strace pads the pid column.
        let Some((pid, rest)) = line.trim_start().split_once(' ') else {
            continue;
        };
        let rest = rest.trim_start();
        let main = *main_pid.get_or_insert(pid);
        if pid != main || rest.starts_with("<...") || rest.starts_with("+++") {
            continue;
        }
        let Some((name, after)) = rest.split_once('(') else {
            continue;
        };
        if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            continue;
        }
        // `name(args) = ret`, strace padding the `=` into a column.
        let (args, ret) = match after.rfind(" = ") {
            Some(i) => {
                let args = after[..i].trim_end();
                let args = args.strip_suffix(')').unwrap_or(args);
                let ret = after[i + 3..].split_whitespace().next().unwrap_or("");
                (args.to_string(), ret.to_string())
            }
            None => (after.to_string(), String::new()),
        };
        let nth = counts.entry(name.to_string()).or_default();
        *nth += 1;
        calls.push(Call {
            name: name.to_string(),
            args,
            ret,
            nth: *nth,
        });
    }
    (outcome, calls)
}

/// The unprivileged user the deployment runs mailpipe as.
#[derive(Debug, Clone)]
pub struct User {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

/// `mailpipe` (created here, like scripts/install-test-deps does, when it
/// is missing), else `nobody`.
pub fn service_user() -> User {
    let lookup = |name: &str| -> Option<User> {
        let id = |flag: &str| -> Option<u32> {
            let out = Command::new("id").arg(flag).arg(name).output().ok()?;
            out.status.success().then_some(())?;
            String::from_utf8_lossy(&out.stdout).trim().parse().ok()
        };
        Some(User {
            name: name.to_string(),
            uid: id("-u")?,
            gid: id("-g")?,
        })
    };
    if let Some(user) = lookup("mailpipe") {
        return user;
    }
    let _ = Command::new("groupadd")
        .args(["--system", "mailpipe"])
        .status();
    let _ = Command::new("useradd")
        .args([
            "--system",
            "--gid",
            "mailpipe",
            "--home-dir",
            "/var/spool/mailpipe",
            "--no-create-home",
            "--shell",
            "/usr/sbin/nologin",
            "mailpipe",
        ])
        .status();
    lookup("mailpipe")
        .or_else(|| lookup("nobody"))
        .expect("neither user mailpipe nor nobody exists")
}

/// A copy of the binary that any user can run, in `scratch`.
pub fn public_binary(scratch: &Scratch) -> PathBuf {
    let to = scratch.path("mailpipe");
    fs::copy(bin(), &to).expect("copy binary");
    fs::set_permissions(&to, fs::Permissions::from_mode(0o755)).expect("chmod binary");
    to
}

pub fn owner(path: &Path) -> u32 {
    fs::symlink_metadata(path).expect("lstat").uid()
}

/// Reads the path argument (2nd) of the system call `pid` is stopped in,
/// when that call is `syscall_nr`; `None` while it is elsewhere.
pub fn stopped_path_arg(pid: u32, syscall_nr: i64, arg: usize) -> Option<String> {
    let sys = fs::read_to_string(format!("/proc/{pid}/syscall")).ok()?;
    let mut fields = sys.split_whitespace();
    let nr: i64 = fields.next()?.parse().ok()?;
    if nr != syscall_nr {
        return None;
    }
    let ptr = fields.nth(arg)?;
    let addr = u64::from_str_radix(ptr.trim_start_matches("0x"), 16).ok()?;
    let mut mem = fs::File::open(format!("/proc/{pid}/mem")).ok()?;
    use std::io::Seek;
    mem.seek(std::io::SeekFrom::Start(addr)).ok()?;
    let mut buf = [0u8; 512];
    let n = mem.read(&mut buf).ok()?;
    let end = buf[..n].iter().position(|&b| b == 0)?;
    Some(String::from_utf8_lossy(&buf[..end]).into_owned())
}

/// The pid of the first child of `parent` (strace's tracee).
pub fn child_of(parent: u32) -> Option<u32> {
    let text = fs::read_to_string(format!("/proc/{parent}/task/{parent}/children")).ok()?;
    text.split_whitespace().next()?.parse().ok()
}

/// Raises this process's open-file limit to at least `n` (Debian's
/// default soft limit of 1,024 is too low to hold 1,000 stdin pipes).
pub fn raise_nofile(n: u64) {
    // SAFETY: getrlimit/setrlimit on a valid struct.
    unsafe {
        let mut rl: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) != 0 || rl.rlim_cur >= n {
            return;
        }
        rl.rlim_cur = n;
        rl.rlim_max = rl.rlim_max.max(n);
        let _ = libc::setrlimit(libc::RLIMIT_NOFILE, &rl);
    }
}

/// True when `pid` is gone or a zombie, or SIGKILL is queued for it (in
/// its own or the process-wide pending set), as /proc shows.
pub fn sigkill_pending_or_dead(pid: u32) -> bool {
    let Ok(status) = fs::read_to_string(format!("/proc/{pid}/status")) else {
        return true;
    };
    let sigkill_bit = 1u64 << (libc::SIGKILL - 1);
    status.lines().any(|line| {
        let (key, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.trim();
        match key {
            "State" => value.starts_with('Z') || value.starts_with('X'),
            "SigPnd" | "ShdPnd" => {
                u64::from_str_radix(value, 16).is_ok_and(|m| m & sigkill_bit != 0)
            }
            _ => false,
        }
    })
}
