//! The drain's Prometheus metrics: a small registry the dispatcher and the
//! workers feed (posts by status class, outcomes, holds, last success,
//! arrivals), rendered together with a fresh count of the spool
//! (`snapshot`) in the text exposition format 0.0.4, and an exporter
//! thread that serves it on a loopback HTTP listener
//! (`drain.metrics_listen`) and/or writes it, replaced atomically, into a
//! node_exporter textfile (`drain.metrics_textfile`).
//!
//! Must not: bind anything but a loopback address (config.rs refuses
//! others), put a key, a secret, a message name or any free text from a
//! message into a label, or slow the drain: the registry is a mutex held
//! for a few map updates, the spool is counted only when metrics are
//! asked for.
//! Fails: a listener that cannot bind stops the drain's start (like a bad
//! secret file); a scrape or textfile write that fails is logged and
//! retried at the next scrape or interval. A spool that cannot be counted
//! renders `mailpipe_spool_scan_ok 0` and no spool gauges.
//!
//! Why both outputs: the listener needs no write access anywhere and works
//! under the shipped unit's `ProtectSystem=strict`; the textfile needs no
//! port and no scrape job, for hosts that already run node_exporter (the
//! unit then needs a `ReadWritePaths=` drop-in for the file's folder).
//! doc/drain.md says how to set up either.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::{self, OpenOptions};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::config::{Config, DrainConfig, Route};

use super::journal::Journal;
use super::snapshot::{self, RouteCounts};
use super::unix_now;

/// How often the textfile is rewritten (node_exporter reads it at every
/// scrape; Prometheus' default scrape interval is 15 s).
const TEXTFILE_EVERY: Duration = Duration::from_secs(15);
/// How long one scrape may take to send its request or read the answer.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(5);
/// A request head larger than this is not a scrape.
const MAX_REQUEST: usize = 8 * 1024;
/// How often the exporter looks at its stop flags and the listener.
const TICK: Duration = Duration::from_millis(50);

/// HTTP status classes of a post; `none` is no answer at all (refused
/// connection, timeout, TLS error) or no post (the secret file could not
/// be read).
const CLASSES: [&str; 5] = ["2xx", "3xx", "4xx", "5xx", "none"];
/// What became of an attempt (`Outcome` in drain/mod.rs).
pub const OUTCOMES: [&str; 6] = [
    "delivered",
    "rejected",
    "gave_up",
    "deferred",
    "misconfigured",
    "error",
];

/// The status class label of an HTTP status.
pub fn class(code: Option<u16>) -> &'static str {
    match code {
        Some(200..=299) => "2xx",
        Some(300..=399) => "3xx",
        Some(400..=499) => "4xx",
        Some(500..=599) => "5xx",
        _ => "none",
    }
}

#[derive(Debug, Default)]
struct Registry {
    posts: BTreeMap<(Route, &'static str), u64>,
    outcomes: BTreeMap<(Route, &'static str), u64>,
    /// Held back as a whole, and whether because of GitLab's answer about
    /// the configuration (401, secret) rather than an outage.
    held: BTreeMap<Route, (bool, bool)>,
    last_success: BTreeMap<Route, u64>,
    arrivals: BTreeMap<Route, u64>,
}

/// The drain's counters and gauges. Shared by the dispatcher, the workers
/// and the exporter thread.
#[derive(Debug)]
pub struct Metrics {
    registry: Mutex<Registry>,
    routes: Vec<Route>,
    started: u64,
}

impl Metrics {
    /// Every series of `routes` starts at zero, so a rate() or an alert
    /// sees it from the first scrape.
    pub fn new(routes: &[Route]) -> Metrics {
        let mut r = Registry::default();
        for &route in routes {
            for c in CLASSES {
                r.posts.insert((route, c), 0);
            }
            for o in OUTCOMES {
                r.outcomes.insert((route, o), 0);
            }
            r.held.insert(route, (false, false));
            r.last_success.insert(route, 0);
            r.arrivals.insert(route, 0);
        }
        Metrics {
            registry: Mutex::new(r),
            routes: routes.to_vec(),
            started: unix_now(),
        }
    }

    fn with(&self, f: impl FnOnce(&mut Registry)) {
        // A panic elsewhere while holding the lock leaves plain numbers:
        // still good to render.
        let mut r = self
            .registry
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut r);
    }

    /// One POST to GitLab answered with `code` (`None`: no answer).
    pub fn record_post(&self, route: Route, code: Option<u16>) {
        self.with(|r| *r.posts.entry((route, class(code))).or_default() += 1);
    }

    /// What became of one attempt: one of [`OUTCOMES`]. `delivered` also
    /// sets the route's last success time.
    pub fn record_outcome(&self, route: Route, outcome: &'static str) {
        self.with(|r| {
            *r.outcomes.entry((route, outcome)).or_default() += 1;
            if outcome == "delivered" {
                r.last_success.insert(route, unix_now());
            }
        });
    }

    /// The route is held back (`true`) after a failure that is not the
    /// message's own, or delivering again (`false`). `misconfigured`:
    /// GitLab refused the route's credentials (401) or the secret file is
    /// unusable, rather than GitLab being unavailable.
    pub fn set_route_held(&self, route: Route, held: bool, misconfigured: bool) {
        self.with(|r| {
            r.held.insert(route, (held, held && misconfigured));
        });
    }

    /// `count` messages `deliver` spooled were seen in `new/` for the
    /// first time.
    pub fn record_arrivals(&self, route: Route, count: usize) {
        if count > 0 {
            self.with(|r| *r.arrivals.entry(route).or_default() += count as u64);
        }
    }

    /// The exposition text: the registry and a fresh count of the spool.
    pub fn render(&self, config: &Config) -> String {
        let spool = snapshot::scan(config);
        let now = unix_now();
        let mut out = String::with_capacity(4096);
        let r = self
            .registry
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);

        header(
            &mut out,
            "mailpipe_build_info",
            "gauge",
            "mailpipe's version; always 1.",
        );
        let _ = writeln!(
            out,
            "mailpipe_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        );
        header(
            &mut out,
            "mailpipe_drain_start_time_seconds",
            "gauge",
            "When this drain started, in seconds since the epoch.",
        );
        let _ = writeln!(out, "mailpipe_drain_start_time_seconds {}", self.started);

        header(
            &mut out,
            "mailpipe_drain_posts_total",
            "counter",
            "POSTs to GitLab's mail_room API by HTTP status class (none: no answer).",
        );
        for ((route, c), n) in &r.posts {
            let _ = writeln!(
                out,
                "mailpipe_drain_posts_total{{route=\"{route}\",class=\"{c}\"}} {n}"
            );
        }
        header(
            &mut out,
            "mailpipe_drain_attempts_total",
            "counter",
            "Attempts by what became of the message.",
        );
        for ((route, o), n) in &r.outcomes {
            let _ = writeln!(
                out,
                "mailpipe_drain_attempts_total{{route=\"{route}\",outcome=\"{o}\"}} {n}"
            );
        }
        header(
            &mut out,
            "mailpipe_drain_route_held",
            "gauge",
            "1 while the route is held back after a failure of GitLab or of its configuration.",
        );
        for (route, (held, _)) in &r.held {
            let _ = writeln!(
                out,
                "mailpipe_drain_route_held{{route=\"{route}\"}} {}",
                u8::from(*held)
            );
        }
        header(
            &mut out,
            "mailpipe_drain_route_misconfigured",
            "gauge",
            "1 while the route is held because GitLab refused its credentials (401) or its secret file is unusable.",
        );
        for (route, (_, bad)) in &r.held {
            let _ = writeln!(
                out,
                "mailpipe_drain_route_misconfigured{{route=\"{route}\"}} {}",
                u8::from(*bad)
            );
        }
        header(
            &mut out,
            "mailpipe_drain_last_success_timestamp_seconds",
            "gauge",
            "When GitLab last accepted a message of the route (0: not since the drain started).",
        );
        for (route, t) in &r.last_success {
            let _ = writeln!(
                out,
                "mailpipe_drain_last_success_timestamp_seconds{{route=\"{route}\"}} {t}"
            );
        }
        header(
            &mut out,
            "mailpipe_spool_arrivals_total",
            "counter",
            "Messages deliver spooled, counted when the drain first sees them in new/.",
        );
        for (route, n) in &r.arrivals {
            let _ = writeln!(
                out,
                "mailpipe_spool_arrivals_total{{route=\"{route}\"}} {n}"
            );
        }
        drop(r);

        header(
            &mut out,
            "mailpipe_spool_scan_ok",
            "gauge",
            "1 when the spool could be counted for this scrape.",
        );
        let counts = match &spool {
            Ok(c) => {
                let _ = writeln!(out, "mailpipe_spool_scan_ok 1");
                c.as_slice()
            }
            Err(_) => {
                let _ = writeln!(out, "mailpipe_spool_scan_ok 0");
                &[]
            }
        };
        render_spool(&mut out, counts, now);
        out
    }

    /// The routes the registry was made for.
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn render_spool(out: &mut String, counts: &[RouteCounts], now: u64) {
    if counts.is_empty() {
        return;
    }
    header(
        out,
        "mailpipe_spool_messages",
        "gauge",
        "Messages in the spool by state (as mailpipe queue counts them).",
    );
    for c in counts {
        for (state, n) in [
            ("waiting", c.waiting),
            ("deferred", c.deferred),
            ("active", c.active),
            ("orphaned", c.orphaned),
            ("failed", c.failed),
        ] {
            let _ = writeln!(
                out,
                "mailpipe_spool_messages{{route=\"{}\",state=\"{state}\"}} {n}",
                c.route
            );
        }
    }
    header(
        out,
        "mailpipe_spool_oldest_message_age_seconds",
        "gauge",
        "Age of the oldest message not yet posted or failed (0: none).",
    );
    for c in counts {
        let age = c.oldest_arrival.map_or(0, |t| now.saturating_sub(t));
        let _ = writeln!(
            out,
            "mailpipe_spool_oldest_message_age_seconds{{route=\"{}\"}} {age}",
            c.route
        );
    }
    header(
        out,
        "mailpipe_spool_refused_messages",
        "gauge",
        "Messages waiting whose last answer from GitLab was 401 or 403 (wrong secret, mailbox disabled).",
    );
    for c in counts {
        let _ = writeln!(
            out,
            "mailpipe_spool_refused_messages{{route=\"{}\"}} {}",
            c.route, c.refused
        );
    }
    header(
        out,
        "mailpipe_route_configured",
        "gauge",
        "1 when the route is configured; 0 for a route whose messages are left from an earlier configuration.",
    );
    for c in counts {
        let _ = writeln!(
            out,
            "mailpipe_route_configured{{route=\"{}\"}} {}",
            c.route,
            u8::from(c.configured)
        );
    }
}

/// Serves and/or writes the metrics while the drain runs.
pub struct Exporter {
    listener: Option<TcpListener>,
    textfile: Option<PathBuf>,
}

impl Exporter {
    /// Binds the listener when one is configured. `None` when metrics are
    /// off.
    ///
    /// # Errors
    /// The listener cannot bind (in use, not a local address).
    pub fn start(drain: &DrainConfig) -> io::Result<Option<Exporter>> {
        let listener = match &drain.metrics_listen {
            None => None,
            Some(text) => {
                let addr: SocketAddr = text.parse().map_err(|_| {
                    io::Error::new(io::ErrorKind::InvalidInput, "not an address:port")
                })?;
                // config.rs refuses these already; the drain never relies
                // on that alone.
                if !addr.ip().is_loopback() {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        "drain.metrics_listen must be a loopback address",
                    ));
                }
                let l = TcpListener::bind(addr).map_err(|e| {
                    io::Error::new(e.kind(), format!("drain.metrics_listen {addr}: {e}"))
                })?;
                l.set_nonblocking(true)?;
                Some(l)
            }
        };
        if listener.is_none() && drain.metrics_textfile.is_none() {
            return Ok(None);
        }
        Ok(Some(Exporter {
            listener,
            textfile: drain.metrics_textfile.clone(),
        }))
    }

    /// The bound address, for the start line.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(addr) = self.listener.as_ref().and_then(|l| l.local_addr().ok()) {
            parts.push(format!("http://{addr}/metrics"));
        }
        if let Some(f) = &self.textfile {
            parts.push(f.display().to_string());
        }
        parts.join(", ")
    }

    /// Runs until `stop` or `done`, then writes the textfile one last
    /// time, so a `--once` run leaves its final numbers.
    pub fn run(
        &self,
        config: &Config,
        metrics: &Metrics,
        stop: &AtomicBool,
        done: &AtomicBool,
        journal: &Journal,
    ) {
        let mut last_write: Option<Instant> = None;
        let mut write_failed = false;
        let mut write = |last: &mut Option<Instant>| {
            if let Some(path) = &self.textfile {
                match write_textfile(path, &metrics.render(config)) {
                    Ok(()) => {
                        if write_failed {
                            journal.info(&format!("metrics: writing {} again", path.display()));
                        }
                        write_failed = false;
                    }
                    Err(e) if !write_failed => {
                        write_failed = true;
                        journal.error(&format!(
                            "metrics: cannot write {}: {e} (hint: the drain's unit needs \
                             ReadWritePaths= for that folder)",
                            path.display()
                        ));
                    }
                    Err(_) => {}
                }
            }
            *last = Some(Instant::now());
        };
        while !stop.load(Ordering::SeqCst) && !done.load(Ordering::SeqCst) {
            if last_write.is_none_or(|t| t.elapsed() >= TEXTFILE_EVERY) {
                write(&mut last_write);
            }
            match self.listener.as_ref().map(TcpListener::accept) {
                Some(Ok((stream, _))) => {
                    if let Err(e) = answer(stream, || metrics.render(config)) {
                        journal.warn(&format!("metrics: a scrape failed: {e}"));
                    }
                }
                Some(Err(e)) if e.kind() != io::ErrorKind::WouldBlock => {
                    journal.warn(&format!("metrics: accept failed: {e}"));
                    std::thread::sleep(TICK);
                }
                _ => std::thread::sleep(TICK),
            }
        }
        if self.textfile.is_some() {
            write(&mut last_write);
        }
    }
}

/// Answers one HTTP/1.x request: `GET /metrics` gets the text, anything
/// else a short error. One request per connection.
fn answer(mut stream: TcpStream, body: impl FnOnce() -> String) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_write_timeout(Some(SCRAPE_TIMEOUT))?;
    // One deadline for the whole request: a client that trickles a byte
    // at a time must not hold the exporter (and the drain's stop) for long.
    let deadline = std::time::Instant::now() + SCRAPE_TIMEOUT;
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && !head.windows(2).any(|w| w == b"\n\n") {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Err(io::Error::from(io::ErrorKind::TimedOut));
        }
        stream.set_read_timeout(Some(left))?;
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
        if head.len() > MAX_REQUEST {
            return respond(&mut stream, "431 Request Header Fields Too Large", "", "");
        }
    }
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    match (method, path) {
        ("GET" | "HEAD", "/metrics") => {
            let text = body();
            let text = if method == "HEAD" { "" } else { text.as_str() };
            respond(
                &mut stream,
                "200 OK",
                "text/plain; version=0.0.4; charset=utf-8",
                text,
            )
        }
        ("GET" | "HEAD", "/") => respond(
            &mut stream,
            "200 OK",
            "text/plain; charset=utf-8",
            "mailpipe drain: metrics at /metrics\n",
        ),
        ("GET" | "HEAD", _) => respond(&mut stream, "404 Not Found", "text/plain", "not found\n"),
        _ => respond(
            &mut stream,
            "405 Method Not Allowed",
            "text/plain",
            "only GET\n",
        ),
    }
}

fn respond(stream: &mut TcpStream, status: &str, kind: &str, body: &str) -> io::Result<()> {
    let mut head = format!(
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    if !kind.is_empty() {
        let _ = write!(head, "Content-Type: {kind}\r\n");
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    stream.write_all(body.as_bytes())?;
    stream.flush()
}

/// Replaces `path` with `text` atomically: written to a dotfile beside it
/// (node_exporter reads only `*.prom`), then renamed over it, so a scrape
/// never reads half a file.
///
/// # Errors
/// The folder is missing or not writable.
pub fn write_textfile(path: &Path, text: &str) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("/"));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let _ = fs::remove_file(&tmp);
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes() {
        assert_eq!(class(Some(200)), "2xx");
        assert_eq!(class(Some(401)), "4xx");
        assert_eq!(class(Some(503)), "5xx");
        assert_eq!(class(None), "none");
        assert_eq!(class(Some(99)), "none");
    }
}
