//! `mailpipe policy`: a Postfix policy delegation server
//! (SMTPD_POLICY_README) that refuses at `RCPT TO` what `deliver` would
//! bounce, so the sender's own server gets the 550 and nobody gets
//! backscatter, and that brakes mail loops with rate limits (450 4.7.1).
//!
//! It is one long-running process (systemd socket activation, or
//! `--listen`), a thread per smtpd connection, because the rate limits need
//! state that every connection shares; spawn(8) would start a process per
//! connection (postfix/README.md, "Why a daemon").
//!
//! Must not: answer anything but `DUNNO`, `550 5.1.1`, `552 5.3.4` or
//! `450 4.7.1` (never `OK`: the policy can refuse, never permit); hold more
//! than the protocol's caps per connection; log per request (Postfix logs
//! every refusal itself), or log a key.
//! Fails: open. An unreadable or broken config, a malformed request or a
//! full rate table answers `DUNNO` and is logged once; a timeout or a closed
//! connection makes Postfix use `smtpd_policy_service_default_action =
//! DUNNO`. Either way `deliver` still decides.

pub mod answer;
pub mod protocol;
pub mod ratelimit;
pub mod wiring;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{FromRawFd, RawFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::config::Config;
use answer::Answer;
use protocol::{Parser, Request};
use ratelimit::Limiter;

/// Most connections served at once. Postfix opens one per smtpd process
/// (default_process_limit 100); past this a connection is closed at once,
/// and Postfix falls back to its default action.
pub const MAX_CONNECTIONS: usize = 1024;
/// Once a request has begun, all of it must have come within this (or
/// within `policy.idle_timeout_secs`, when shorter).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// A reply that cannot be written within this closes the connection.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// How often the config file is looked at for changes.
const RELOAD_CHECK: Duration = Duration::from_secs(1);
/// sd_listen_fds(3): the first passed file descriptor.
const SD_LISTEN_FDS_START: RawFd = 3;

/// Where to listen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    /// A unix socket, e.g. under Postfix's `private/`.
    Unix(PathBuf),
    /// A loopback TCP address.
    Inet(SocketAddr),
}

impl Listen {
    /// Parses `unix:PATH` or `inet:127.0.0.1:PORT` (Postfix's own spelling
    /// in check_policy_service). Only loopback addresses: the rate tables
    /// must not be fillable from the network.
    pub fn parse(text: &str) -> Result<Listen, String> {
        if let Some(path) = text.strip_prefix("unix:") {
            let path = PathBuf::from(path);
            if !path.is_absolute() {
                return Err(format!("{text}: the socket path must be absolute"));
            }
            return Ok(Listen::Unix(path));
        }
        let addr = text.strip_prefix("inet:").unwrap_or(text);
        let addr: SocketAddr = addr
            .parse()
            .map_err(|e| format!("{text}: not unix:PATH or inet:IP:PORT ({e})"))?;
        if !addr.ip().is_loopback() {
            return Err(format!("{text}: only loopback addresses (127.0.0.1, ::1)"));
        }
        Ok(Listen::Inet(addr))
    }
}

/// Options of `mailpipe policy`.
#[derive(Debug, Clone)]
pub struct Options {
    pub config: PathBuf,
    /// `None`: the socket systemd passes (LISTEN_FDS).
    pub listen: Option<Listen>,
}

/// The configuration as last read, re-read when the file changes.
struct ConfigSource {
    path: PathBuf,
    state: Mutex<Loaded>,
}

struct Loaded {
    /// (device, inode, size, mtime) of the file last read; `None` if it
    /// could not be stat'ed.
    stamp: Option<(u64, u64, u64, i64, i64)>,
    checked: Instant,
    config: Arc<Result<Config, String>>,
}

fn stamp(path: &Path) -> Option<(u64, u64, u64, i64, i64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.dev(), m.ino(), m.size(), m.mtime(), m.mtime_nsec()))
}

impl ConfigSource {
    fn load(path: &Path) -> ConfigSource {
        let stamp = stamp(path);
        let config = Config::load(path).map_err(|e| e.to_string());
        report_load(&config);
        ConfigSource {
            path: path.to_path_buf(),
            state: Mutex::new(Loaded {
                stamp,
                checked: Instant::now(),
                config: Arc::new(config),
            }),
        }
    }

    /// The current configuration; looks at the file at most once a second
    /// and re-reads it when it changed.
    fn current(&self, now: Instant) -> Arc<Result<Config, String>> {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if now.saturating_duration_since(s.checked) >= RELOAD_CHECK {
            s.checked = now;
            let new = stamp(&self.path);
            if new != s.stamp || new.is_none() {
                let was_ok = s.config.is_ok();
                let config = Config::load(&self.path).map_err(|e| e.to_string());
                // One line per change, not per request: a missing file is
                // re-read every second and reported only when it was fine.
                if new != s.stamp || was_ok != config.is_ok() {
                    report_load(&config);
                }
                s.stamp = new;
                s.config = Arc::new(config);
            }
        }
        Arc::clone(&s.config)
    }
}

fn report_load(config: &Result<Config, String>) {
    match config {
        Ok(c) => {
            let mut domains: Vec<String> = c
                .routes
                .iter()
                .map(|r| r.template.domain().to_ascii_lowercase())
                .collect();
            domains.dedup();
            log(&format!(
                "config {} loaded; answering for {}",
                c.path.display(),
                domains.join(", ")
            ));
        }
        Err(e) => log(&format!(
            "config unusable, answering DUNNO to every request until it is fixed \
             (deliver decides meanwhile): {e}"
        )),
    }
}

/// One line on stderr (the journal under systemd). Never panics.
fn log(line: &str) {
    let mut err = std::io::stderr().lock();
    let _ = writeln!(
        err,
        "mailpipe policy: {}",
        crate::status::printable(line, 600)
    );
}

/// Logs `line` the first time `flag` is raised only.
fn log_once(flag: &AtomicBool, line: &str) {
    if !flag.swap(true, Ordering::Relaxed) {
        log(line);
    }
}

static LOGGED_MALFORMED: AtomicBool = AtomicBool::new(false);
static LOGGED_UNTRACKED: AtomicBool = AtomicBool::new(false);
static LOGGED_BUSY: AtomicBool = AtomicBool::new(false);

/// What the server shares between its connection threads.
struct Shared {
    config: ConfigSource,
    limiter: Limiter,
    connections: AtomicUsize,
}

impl Shared {
    fn answer(&self, request: &Request) -> Answer {
        let now = Instant::now();
        let config = self.config.current(now);
        let Ok(config) = config.as_ref() else {
            return Answer::dunno("config");
        };
        let a = answer::for_request(config, request, Some(&self.limiter), now);
        if a.why == "malformed" {
            log_once(
                &LOGGED_MALFORMED,
                &format!(
                    "malformed request answered DUNNO ({}); further ones are not logged",
                    request.malformed.unwrap_or("")
                ),
            );
        }
        if a.why == "untracked" {
            log_once(
                &LOGGED_UNTRACKED,
                "rate tables full (policy.max_tracked): new sender/key pairs are not limited",
            );
        }
        a
    }
}

enum Listener {
    Unix(UnixListener),
    Inet(TcpListener),
}

/// A connection, unix or TCP.
trait Conn: Read + Write + Send + 'static {
    fn read_timeout(&self, t: Duration) -> std::io::Result<()>;
    fn write_timeout(&self, t: Duration) -> std::io::Result<()>;
}

impl Conn for UnixStream {
    fn read_timeout(&self, t: Duration) -> std::io::Result<()> {
        self.set_read_timeout(Some(t))
    }
    fn write_timeout(&self, t: Duration) -> std::io::Result<()> {
        self.set_write_timeout(Some(t))
    }
}

impl Conn for TcpStream {
    fn read_timeout(&self, t: Duration) -> std::io::Result<()> {
        self.set_read_timeout(Some(t))
    }
    fn write_timeout(&self, t: Duration) -> std::io::Result<()> {
        // Replies are small; send each at once.
        let _ = self.set_nodelay(true);
        self.set_write_timeout(Some(t))
    }
}

/// Runs `mailpipe policy` until killed; `false` when it cannot start.
pub fn command(options: &Options) -> bool {
    let listener = match bind(options.listen.as_ref()) {
        Ok(l) => l,
        Err(e) => {
            log(&format!("cannot listen: {e}"));
            return false;
        }
    };
    let shared = Arc::new(Shared {
        config: ConfigSource::load(&options.config),
        limiter: Limiter::new(),
        connections: AtomicUsize::new(0),
    });
    // Re-read a changed file even while no request comes, so the journal
    // says at once whether an edit loaded.
    let watcher = Arc::clone(&shared);
    let _ = std::thread::Builder::new()
        .name("policy-config".into())
        .spawn(move || {
            loop {
                std::thread::sleep(RELOAD_CHECK);
                let _ = watcher.config.current(Instant::now());
            }
        });
    match listener {
        Listener::Unix(l) => accept_loop(&shared, || l.accept().map(|(s, _)| s)),
        Listener::Inet(l) => accept_loop(&shared, || l.accept().map(|(s, _)| s)),
    }
}

fn accept_loop<C: Conn>(
    shared: &Arc<Shared>,
    mut accept: impl FnMut() -> std::io::Result<C>,
) -> bool {
    loop {
        let conn = match accept() {
            Ok(c) => c,
            Err(e) => {
                // EMFILE and the like: wait instead of spinning.
                log(&format!("accept: {e}"));
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        if shared.connections.fetch_add(1, Ordering::AcqRel) >= MAX_CONNECTIONS {
            shared.connections.fetch_sub(1, Ordering::AcqRel);
            log_once(
                &LOGGED_BUSY,
                &format!("more than {MAX_CONNECTIONS} connections: new ones are closed"),
            );
            continue;
        }
        let worker = Arc::clone(shared);
        let spawned = std::thread::Builder::new()
            .name("policy-conn".into())
            .stack_size(256 * 1024)
            .spawn(move || {
                serve(&worker, conn);
                worker.connections.fetch_sub(1, Ordering::AcqRel);
            });
        if let Err(e) = spawned {
            // The closure (and the connection) is gone; so is its count.
            shared.connections.fetch_sub(1, Ordering::AcqRel);
            log(&format!("cannot start a connection thread: {e}"));
        }
    }
}

/// Serves one connection until the peer closes it, goes idle or breaks a
/// timeout. Answers go out after each read, in request order.
fn serve<C: Conn>(shared: &Shared, mut conn: C) {
    let idle = shared
        .config
        .current(Instant::now())
        .as_ref()
        .as_ref()
        .map_or(300, |c| c.policy.idle_timeout_secs);
    let idle = Duration::from_secs(idle);
    let request_timeout = REQUEST_TIMEOUT.min(idle);
    if conn.write_timeout(WRITE_TIMEOUT).is_err() || conn.read_timeout(idle).is_err() {
        return;
    }
    let mut parser = Parser::new();
    let mut buf = vec![0u8; 16 * 1024];
    let mut out = Vec::with_capacity(1024);
    // When the request being read began; `None` between requests. Postfix
    // sends a request in one write, so the timeouts change only for a
    // client that dribbles.
    let mut request_began: Option<Instant> = None;
    loop {
        let n = match conn.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return,
        };
        let mut answered = false;
        parser.feed(&buf[..n], |request| {
            let a = shared.answer(&request);
            protocol::reply(&a.action, &mut out);
            answered = true;
        });
        if !out.is_empty() {
            if conn.write_all(&out).is_err() {
                return;
            }
            out.clear();
        }
        if parser.in_request() {
            if answered {
                // A new request began within this read.
                request_began = None;
            }
            let began = *request_began.get_or_insert_with(Instant::now);
            match request_timeout.checked_sub(began.elapsed()) {
                Some(left) if !left.is_zero() => {
                    if conn.read_timeout(left).is_err() {
                        return;
                    }
                }
                _ => return,
            }
        } else if request_began.take().is_some() && conn.read_timeout(idle).is_err() {
            return;
        }
    }
}

fn bind(listen: Option<&Listen>) -> Result<Listener, String> {
    match listen {
        Some(Listen::Inet(addr)) => TcpListener::bind(addr)
            .map(Listener::Inet)
            .map_err(|e| format!("{addr}: {e}")),
        Some(Listen::Unix(path)) => {
            // A socket left by an earlier run would make bind fail; remove
            // it only when it is a socket.
            if let Ok(m) = std::fs::symlink_metadata(path)
                && m.file_type().is_socket()
            {
                let _ = std::fs::remove_file(path);
            }
            let l = UnixListener::bind(path).map_err(|e| format!("{}: {e}", path.display()))?;
            // Like Postfix's own private/ sockets: rw for all, the folder
            // decides who may connect.
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))
                .map_err(|e| format!("{}: {e}", path.display()))?;
            Ok(Listener::Unix(l))
        }
        None => systemd_listener(),
    }
}

/// The listening socket systemd passed (sd_listen_fds(3)): exactly one,
/// and meant for this process.
fn systemd_listener() -> Result<Listener, String> {
    let pid = std::env::var("LISTEN_PID").ok();
    let fds = std::env::var("LISTEN_FDS").ok();
    if pid.as_deref() != Some(&std::process::id().to_string()) || fds.as_deref() != Some("1") {
        return Err(
            "no --listen given and no socket from systemd (LISTEN_PID/LISTEN_FDS): \
             use mailpipe-policy.socket or --listen=unix:PATH"
                .into(),
        );
    }
    let fd = SD_LISTEN_FDS_START;
    // SAFETY: getsockname on a descriptor we were told is a socket; the
    // buffer is large enough for any address.
    let family = unsafe {
        let mut addr: libc::sockaddr_storage = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        if libc::getsockname(fd, (&raw mut addr).cast(), &mut len) != 0 {
            return Err(format!(
                "fd {fd} from systemd: {}",
                std::io::Error::last_os_error()
            ));
        }
        i32::from(addr.ss_family)
    };
    // Not inherited by anything we might start.
    // SAFETY: fcntl on a valid descriptor.
    unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    // SAFETY: systemd hands the descriptor over to us, to own.
    match family {
        libc::AF_UNIX => Ok(Listener::Unix(unsafe { UnixListener::from_raw_fd(fd) })),
        libc::AF_INET | libc::AF_INET6 => {
            Ok(Listener::Inet(unsafe { TcpListener::from_raw_fd(fd) }))
        }
        other => Err(format!("fd {fd} from systemd has address family {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses() {
        assert_eq!(
            Listen::parse("unix:/run/p.sock"),
            Ok(Listen::Unix("/run/p.sock".into()))
        );
        assert!(matches!(
            Listen::parse("inet:127.0.0.1:10033"),
            Ok(Listen::Inet(_))
        ));
        assert!(matches!(Listen::parse("[::1]:10033"), Ok(Listen::Inet(_))));
        assert!(Listen::parse("inet:0.0.0.0:10033").is_err());
        assert!(Listen::parse("unix:relative").is_err());
        assert!(Listen::parse("bogus").is_err());
    }
}
