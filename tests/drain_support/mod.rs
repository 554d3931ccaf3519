//! Test fixtures for `mailpipe drain`: a stand-in for GitLab's mail_room
//! API on 127.0.0.1 that checks every token the way GitLab does, and a
//! throw-away spool with a configuration pointing at it.
//!
//! [`GitLab`] speaks just enough HTTP/1.1 (Content-Length bodies,
//! keep-alive, `Expect: 100-continue`) on a loopback port, one thread per
//! connection, and records every POST. Its checks follow
//! `Gitlab::MailRoom::Authenticator` (`lib/gitlab/mail_room/authenticator.rb`
//! and `lib/gitlab/jwt_authenticatable.rb` in GitLab): the mailbox must be
//! enabled (have a secret), the token must be HS256 and nothing else, `iss`
//! must be `gitlab-mailroom`, `iat` must be present, not older than five
//! minutes and not in the future, and the signature must verify with that
//! mailbox's 32-byte secret. Anything else is a 401, as GitLab answers.
//! Only after that does the test's [`Mode`] choose the answer.
//!
//! [`Fixture`] makes a folder under `/tmp/mailpipe-drain-tests/`, with two
//! secret files, a spool and a `mailpipe.toml`, and runs the real binary.

#![allow(dead_code)]

use std::collections::HashMap;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};

pub const INCOMING: &str = "incoming_email";
pub const SERVICE_DESK: &str = "service_desk_email";
pub const API: &str = "/api/v4/internal/mail_room/";

/// How the stand-in answers a POST whose token is good.
#[derive(Debug, Clone)]
pub enum Mode {
    /// 200 `{"success":true}`.
    Accept,
    /// This status, with a GitLab-like JSON body.
    Status(u16),
    /// 200 with a body that is not GitLab's (a login page).
    NotGitLab,
    /// Sleep, then accept.
    Slow(Duration),
    /// Read the request, never answer (until the server stops).
    Hang,
    /// Read the request, answer nothing for this long, then close.
    HangFor(Duration),
    /// Read the request, then close the connection without an answer.
    Drop,
    /// This status (429, 503) with `Retry-After: <value>`.
    RetryAfter(u16, String),
    /// A GitLab that fails `failing` (0.0 to 1.0) of the requests at
    /// random, the rest accepted. A failure is a 500, 502 or 503 (55 %),
    /// a 429 without Retry-After (15 %), a dropped connection (15 %), or a
    /// hang of `hang` (15 %; longer than the drain's request timeout).
    /// An accepted request takes `latency` (GitLab's own work).
    Flaky {
        failing: f64,
        hang: Duration,
        latency: Duration,
    },
    /// Request number `i` (from 0, good tokens only) is answered as
    /// `modes[i]`; the last one answers the rest.
    Then(Vec<Mode>),
}

/// What the stand-in does after reading a request.
enum Answer {
    Reply { body: String, headers: String },
    Hang(Option<Duration>),
    Drop,
}

/// A small xorshift generator: the stand-in's failures need no more.
fn random_unit() -> f64 {
    use std::sync::atomic::AtomicU64;
    static STATE: AtomicU64 = AtomicU64::new(0);
    let mut x = STATE.load(Ordering::Relaxed);
    if x == 0 {
        x = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
            | 1;
    }
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    STATE.store(x, Ordering::Relaxed);
    (x >> 11) as f64 / (1u64 << 53) as f64
}

/// One POST as the stand-in saw it.
#[derive(Debug, Clone)]
pub struct Post {
    pub route: String,
    pub body: Vec<u8>,
    pub content_type: Option<String>,
    /// The JOSE header, decoded.
    pub jose: Option<String>,
    /// The claims when the token verified; the reason when not.
    pub claims: Result<serde_json::Value, String>,
    /// What was answered (0: no answer, a hang or a dropped connection).
    pub status: u16,
    /// When it arrived.
    pub at: Instant,
}

struct Shared {
    /// Enabled mailboxes and their secrets.
    secrets: HashMap<String, Vec<u8>>,
    mode: Mutex<Mode>,
    posts: Mutex<Vec<Post>>,
    /// Requests with a good token so far (for `Mode::Then`).
    served: AtomicUsize,
    stop: AtomicBool,
    connections: Mutex<Vec<TcpStream>>,
}

/// The GitLab stand-in; stops when dropped.
pub struct GitLab {
    pub port: u16,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

impl GitLab {
    /// Starts on a free loopback port.
    pub fn start(secrets: &[(&str, [u8; 32])], mode: Mode) -> GitLab {
        GitLab::start_on(0, secrets, mode)
    }

    /// Starts on `port` (0: any free one).
    pub fn start_on(port: u16, secrets: &[(&str, [u8; 32])], mode: Mode) -> GitLab {
        let listener = TcpListener::bind(("127.0.0.1", port)).expect("bind 127.0.0.1");
        let port = listener.local_addr().expect("local addr").port();
        let shared = Arc::new(Shared {
            secrets: secrets
                .iter()
                .map(|(r, k)| (r.to_string(), k.to_vec()))
                .collect(),
            mode: Mutex::new(mode),
            posts: Mutex::new(Vec::new()),
            served: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
            connections: Mutex::new(Vec::new()),
        });
        let s = Arc::clone(&shared);
        let accept = std::thread::spawn(move || {
            for stream in listener.incoming() {
                if s.stop.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(stream) = stream else { continue };
                if let Ok(clone) = stream.try_clone() {
                    s.connections.lock().unwrap().push(clone);
                }
                let s = Arc::clone(&s);
                std::thread::spawn(move || serve(&s, stream));
            }
        });
        GitLab {
            port,
            shared,
            accept: Some(accept),
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn set_mode(&self, mode: Mode) {
        *self.shared.mode.lock().unwrap() = mode;
    }

    pub fn posts(&self) -> Vec<Post> {
        self.shared.posts.lock().unwrap().clone()
    }

    pub fn post_count(&self) -> usize {
        self.shared.posts.lock().unwrap().len()
    }

    /// How often each body was accepted (answered 200).
    pub fn accepted(&self) -> HashMap<Vec<u8>, usize> {
        let mut map = HashMap::new();
        for p in self.posts() {
            if p.status == 200 {
                *map.entry(p.body).or_insert(0) += 1;
            }
        }
        map
    }

    /// How often each body was received, whatever the answer.
    pub fn received(&self) -> HashMap<Vec<u8>, usize> {
        let mut map = HashMap::new();
        for p in self.posts() {
            *map.entry(p.body).or_insert(0) += 1;
        }
        map
    }
}

impl Drop for GitLab {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        for c in self.shared.connections.lock().unwrap().drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

/// A port that nothing listens on (for "GitLab is down").
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

fn serve(shared: &Shared, stream: TcpStream) {
    let Ok(write_half) = stream.try_clone() else {
        return;
    };
    let mut out = write_half;
    let mut reader = BufReader::new(stream);
    loop {
        let mut request_line = String::new();
        match reader.read_line(&mut request_line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let mut headers = HashMap::new();
        loop {
            let mut line = String::new();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
            }
        }
        if headers
            .get("expect")
            .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"))
        {
            let _ = out.write_all(b"HTTP/1.1 100 Continue\r\n\r\n");
        }
        let len: usize = headers
            .get("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0u8; len];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let mut parts = request_line.split_whitespace();
        let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        let (status, answer) = handle(shared, method, path, &headers, body);
        let (answer, extra) = match answer {
            Answer::Reply { body, headers } => (body, headers),
            Answer::Hang(limit) => {
                // Keep the connection open, answer nothing.
                let start = Instant::now();
                while !shared.stop.load(Ordering::SeqCst)
                    && limit.is_none_or(|l| start.elapsed() < l)
                {
                    std::thread::sleep(Duration::from_millis(20));
                }
                let _ = out.shutdown(Shutdown::Both);
                return;
            }
            Answer::Drop => {
                let _ = out.shutdown(Shutdown::Both);
                return;
            }
        };
        let reason = match status {
            200 => "OK",
            400 => "Bad Request",
            401 => "Unauthorized",
            404 => "Not Found",
            _ => "Status",
        };
        let response = format!(
            "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n\
             {extra}Content-Length: {}\r\n\r\n{answer}",
            answer.len()
        );
        if out.write_all(response.as_bytes()).is_err() {
            return;
        }
    }
}

/// GitLab's checks, then the mode.
fn handle(
    shared: &Shared,
    method: &str,
    path: &str,
    headers: &HashMap<String, String>,
    body: Vec<u8>,
) -> (u16, Answer) {
    let at = Instant::now();
    let route = path.strip_prefix(API).unwrap_or("").to_string();
    let token = headers.get("gitlab-mailroom-api-request").cloned();
    let jose = token
        .as_deref()
        .and_then(|t| t.split('.').next())
        .and_then(|h| URL_SAFE_NO_PAD.decode(h).ok())
        .map(|h| String::from_utf8_lossy(&h).into_owned());
    let claims = if method != "POST" {
        Err(format!("method {method}"))
    } else {
        match (shared.secrets.get(&route), token) {
            (None, _) => Err(format!("mailbox {route:?} not enabled")),
            (_, None) => Err("no token".to_string()),
            (Some(secret), Some(token)) => verify(&token, secret),
        }
    };
    let mut mode = shared.mode.lock().unwrap().clone();
    if let (Ok(_), Mode::Then(modes)) = (&claims, &mode) {
        let i = shared.served.fetch_add(1, Ordering::SeqCst);
        mode = modes[i.min(modes.len() - 1)].clone();
    }
    if let Mode::Flaky {
        failing,
        hang,
        latency,
    } = mode
    {
        mode = if random_unit() >= failing {
            Mode::Slow(latency)
        } else {
            match random_unit() {
                x if x < 0.25 => Mode::Status(503),
                x if x < 0.45 => Mode::Status(502),
                x if x < 0.55 => Mode::Status(500),
                x if x < 0.70 => Mode::Status(429),
                x if x < 0.85 => Mode::Drop,
                _ => Mode::HangFor(hang),
            }
        };
    }
    let reply = |body: String| Answer::Reply {
        body,
        headers: String::new(),
    };
    let (status, answer) = match (&claims, mode) {
        (Err(_), _) => (401, reply(r#"{"message":"401 Unauthorized"}"#.to_string())),
        (Ok(_), Mode::Accept) => (200, reply(r#"{"success":true}"#.to_string())),
        (Ok(_), Mode::Slow(d)) => {
            std::thread::sleep(d);
            (200, reply(r#"{"success":true}"#.to_string()))
        }
        (Ok(_), Mode::NotGitLab) => (200, reply("<html>Sign in</html>".to_string())),
        (Ok(_), Mode::Status(400)) => (
            400,
            reply(
                r#"{"success":false,"message":"We couldn't process your email because it is too large. Please create your issue or comment through the web interface."}"#
                    .to_string(),
            ),
        ),
        (Ok(_), Mode::Status(code)) => (code, reply(format!(r#"{{"message":"{code}"}}"#))),
        (Ok(_), Mode::RetryAfter(code, after)) => (
            code,
            Answer::Reply {
                body: format!(r#"{{"message":"{code}"}}"#),
                headers: format!("Retry-After: {after}\r\n"),
            },
        ),
        (Ok(_), Mode::Hang) => (0, Answer::Hang(None)),
        (Ok(_), Mode::HangFor(d)) => (0, Answer::Hang(Some(d))),
        (Ok(_), Mode::Drop) => (0, Answer::Drop),
        (Ok(_), Mode::Flaky { .. } | Mode::Then(_)) => unreachable!("resolved above"),
    };
    shared.posts.lock().unwrap().push(Post {
        route,
        body,
        content_type: headers.get("content-type").cloned(),
        jose,
        claims,
        status,
        at,
    });
    (status, answer)
}

/// Verifies a token as GitLab's `JwtAuthenticatable` does.
fn verify(token: &str, secret: &[u8]) -> Result<serde_json::Value, String> {
    let mut v = Validation::new(Algorithm::HS256); // HS256 only
    v.set_issuer(&["gitlab-mailroom"]);
    v.set_required_spec_claims(&["iss"]);
    v.validate_exp = false;
    let data =
        jsonwebtoken::decode::<serde_json::Value>(token, &DecodingKey::from_secret(secret), &v)
            .map_err(|e| e.to_string())?;
    let iat = data.claims["iat"]
        .as_u64()
        .ok_or("iat missing or not a number")?;
    let now = unix_now();
    if iat + 300 < now {
        return Err(format!("iat {iat} older than 5 minutes"));
    }
    if iat > now {
        return Err(format!("iat {iat} in the future"));
    }
    Ok(data.claims)
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Secrets the fixture writes (and the stand-in checks).
pub const INCOMING_KEY: [u8; 32] = *b"incoming-secret-0123456789abcdef";
pub const SERVICE_DESK_KEY: [u8; 32] = *b"servicedesk-secret-0123456789abc";

pub fn both_secrets() -> [(&'static str, [u8; 32]); 2] {
    [(INCOMING, INCOMING_KEY), (SERVICE_DESK, SERVICE_DESK_KEY)]
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A spool, secret files and a configuration in a fresh folder.
pub struct Fixture {
    pub dir: PathBuf,
    pub spool: PathBuf,
    pub config: PathBuf,
    url: String,
    drain: String,
    keep: bool,
}

impl Fixture {
    /// `drain`: extra lines for the `[drain]` table.
    pub fn new(test: &str, url: &str, drain: &str) -> Fixture {
        let dir = PathBuf::from("/tmp/mailpipe-drain-tests").join(format!(
            "{test}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("spool")).unwrap();
        // The packaged layout (src/layout.rs): the drain's account owns the
        // spool; the drain, run as root here, becomes that account.
        give_to_drain(&dir.join("spool"), mailpipe::layout::DRAIN_DIR_MODE);
        let f = Fixture {
            spool: dir.join("spool"),
            config: dir.join("mailpipe.toml"),
            dir,
            url: url.to_string(),
            drain: drain.to_string(),
            keep: std::env::var_os("MAILPIPE_DRAIN_KEEP").is_some(),
        };
        f.write_secret(INCOMING, &INCOMING_KEY);
        f.write_secret(SERVICE_DESK, &SERVICE_DESK_KEY);
        f.write_config();
        f
    }

    pub fn secret_path(&self, route: &str) -> PathBuf {
        self.dir.join(format!("{route}.secret"))
    }

    /// Writes a secret file the way GDK's docs make one (`echo`: newline).
    pub fn write_secret(&self, route: &str, key: &[u8]) {
        fs::write(
            self.secret_path(route),
            format!("{}\n", STANDARD.encode(key)),
        )
        .unwrap();
    }

    pub fn write_config(&self) {
        self.write_config_text(&self.config_text(true));
    }

    pub fn write_config_text(&self, text: &str) {
        fs::write(&self.config, text).unwrap();
    }

    pub fn config_text(&self, with_url: bool) -> String {
        let url = if with_url {
            format!("url = \"{}\"\n", self.url)
        } else {
            String::new()
        };
        format!(
            "[incoming_email]\n\
             address = \"incoming+%{{key}}@in.example.com\"\n\
             secret_file = \"{}\"\n\n\
             [service_desk_email]\n\
             address = \"contact+%{{key}}@in.example.com\"\n\
             secret_file = \"{}\"\n\n\
             [gitlab]\n\
             host = \"gitlab.example.com\"\n\
             {url}\n\
             [spool]\n\
             dir = \"{}\"\n\n\
             [drain]\n\
             {}\n",
            self.secret_path(INCOMING).display(),
            self.secret_path(SERVICE_DESK).display(),
            self.spool.display(),
            self.drain
        )
    }

    pub fn folder(&self, route: &str, folder: &str) -> PathBuf {
        self.spool.join(route).join(folder)
    }

    /// Spools message number `n` into `new/` under a Maildir name whose
    /// time is `age_rank` seconds after a fixed point (lower = older).
    /// Returns its name and bytes.
    pub fn add(&self, route: &str, n: usize, age_rank: u64) -> (String, Vec<u8>) {
        self.make_route(route);
        let new = self.folder(route, "new");
        let name = format!(
            "{}.M{:06}P{}R{:016x}.testhost",
            1_700_000_000 + age_rank,
            n % 1_000_000,
            std::process::id(),
            n
        );
        let body = message(route, n);
        fs::write(new.join(&name), &body).unwrap();
        (name, body)
    }

    /// Creates the route's folders as the packages do (src/layout.rs),
    /// owned by the drain's account; existing ones are left as they are.
    pub fn make_route(&self, route: &str) {
        let dir = self.spool.join(route);
        if !dir.exists() {
            fs::create_dir(&dir).unwrap();
            give_to_drain(&dir, mailpipe::layout::DRAIN_DIR_MODE);
        }
        for folder in mailpipe::layout::Folder::ALL {
            let sub = dir.join(folder.as_str());
            if !sub.exists() {
                fs::create_dir(&sub).unwrap();
                give_to_drain(&sub, folder.mode());
            }
        }
    }

    /// Spools `count` messages numbered from `first`, oldest first.
    pub fn add_many(&self, route: &str, first: usize, count: usize) -> Vec<(String, Vec<u8>)> {
        (first..first + count)
            .map(|n| self.add(route, n, n as u64))
            .collect()
    }

    pub fn names_in(&self, route: &str, folder: &str) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(self.folder(route, folder))
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| !n.starts_with('.'))
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    pub fn count(&self, route: &str, folder: &str) -> usize {
        self.names_in(route, folder).len()
    }

    /// How many sidecars `state/` holds.
    pub fn names_with_state(&self, route: &str) -> usize {
        self.count(route, "state")
    }

    /// The sidecar of a message, parsed.
    pub fn state(&self, route: &str, name: &str) -> Option<serde_json::Value> {
        let text = fs::read(self.folder(route, "state").join(name)).ok()?;
        serde_json::from_slice(&text).ok()
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_mailpipe"));
        c.args(args)
            .arg(format!("--config={}", self.config.display()))
            .env_remove("JOURNAL_STREAM")
            .stdin(Stdio::null());
        c
    }

    /// Runs `mailpipe <args> --config=…` to the end.
    pub fn run(&self, args: &[&str]) -> Output {
        let out = self.command(args).output().expect("run mailpipe");
        if std::env::var_os("MAILPIPE_DRAIN_VERBOSE").is_some() {
            eprintln!(
                "$ mailpipe {}\n{}{}",
                args.join(" "),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        out
    }

    /// Starts `mailpipe drain <extra>` in the background; its stderr goes
    /// to a file (a pipe could fill up and block it).
    pub fn spawn_drain(&self, extra: &[&str]) -> Daemon {
        let mut args = vec!["drain"];
        args.extend_from_slice(extra);
        let log = self.dir.join(format!(
            "drain-{}.log",
            COUNTER.fetch_add(1, Ordering::SeqCst)
        ));
        let child = self
            .command(&args)
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).unwrap())
            .spawn()
            .expect("spawn drain");
        Daemon { child, log }
    }
}

/// uid of `name` and gid of `group`, from id(1).
pub fn ids(name: &str, group: &str) -> (u32, u32) {
    let id = |args: &[&str]| -> u32 {
        let out = Command::new("id").args(args).output().expect("id");
        assert!(
            out.status.success(),
            "id {args:?}: run scripts/install-test-deps"
        );
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
    };
    let gid = Command::new("getent")
        .args(["group", group])
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split(':')
                .nth(2)
                .and_then(|g| g.parse().ok())
        })
        .expect("group exists (scripts/install-test-deps)");
    (id(&["-u", name]), gid)
}

/// Gives `path` to mailpipe-drain:mailpipe with `mode`, as tmpfiles.d does.
pub fn give_to_drain(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    let (uid, gid) = ids("mailpipe-drain", "mailpipe");
    std::os::unix::fs::chown(path, Some(uid), Some(gid)).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// A drain running in the background.
pub struct Daemon {
    pub child: Child,
    pub log: PathBuf,
}

impl Daemon {
    /// Sends `signal` (libc::SIGTERM, SIGKILL, …).
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child's pid.
        let rc = unsafe { libc::kill(self.child.id() as i32, signal) };
        assert_eq!(rc, 0, "kill");
    }

    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits at most `limit` for the exit; kills it and fails after that.
    pub fn wait(&mut self, limit: Duration) -> std::process::ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            if start.elapsed() > limit {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!("drain still running after {limit:?}; log:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if !self.keep && !std::thread::panicking() {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// A small message with 8-bit bytes, CRLF and a unique line.
pub fn message(route: &str, n: usize) -> Vec<u8> {
    let mut m = format!(
        "From: Sender <sender@example.org>\r\n\
         To: incoming+abc{n}@in.example.com\r\n\
         Subject: test {n} for {route}\r\n\
         Message-ID: <{n}.{route}@example.org>\r\n\
         \r\n\
         message {n}\r\n"
    )
    .into_bytes();
    m.extend_from_slice(b"8-bit: \xe9\xff\x00 end\r\n.\r\nFrom the start\n");
    m
}

/// Polls `cond` every 20 ms for at most `limit`.
pub fn eventually(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn path_str(p: &Path) -> String {
    p.display().to_string()
}
