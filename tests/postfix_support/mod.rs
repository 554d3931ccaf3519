//! A private, throw-away Postfix instance for end-to-end tests of mailpipe.
//!
//! Each [`Instance`] lives in its own folder under `/tmp/mailpipe-e2e/`:
//!
//! ```text
//! D/conf/        main.cf, master.cf, maps   (built FROM the shipped postfix/ files)
//! D/queue/       Postfix queue (root)
//! D/data/        Postfix data (owned by postfix)
//! D/bin/mailpipe copy of the binary under test, executable by the mailpipe user
//! D/etc/mailpipe mailpipe.toml (and aliases, procmailrc for the local(8) variants)
//! D/spool/       mailpipe's spool (the packaged layout, owned by mailpipe-drain)
//! D/bounces/     Maildir of tester@localhost, the local sender that gets DSNs
//! D/home/<user>/ .forward files (forward_path points here)
//! D/maillog      Postfix's log (maillog_file)
//! ```
//!
//! SMTP listens on a free 127.0.0.1 port. Nothing else is contacted: the
//! default and relay transports are `error:`. The instance is stopped (and the
//! folder removed) when the value is dropped, including when a test panics;
//! when a test fails, the tail of the log and the queue are printed first. Set
//! `MAILPIPE_E2E_KEEP=1` to keep the folder for a look afterwards.
//!
//! The shipped snippets are used as they are; only paths, the port, the
//! binary path and the user are substituted (see [`Instance::substitute`]).
//!
//! The binary is cargo's `mailpipe` (CARGO_BIN_EXE_mailpipe), copied into the
//! instance folder so that the unprivileged `mailpipe` user can run it.
//! `MAILPIPE_E2E_BIN=/path/to/mailpipe` runs the suite against another build
//! (a release binary, an installed package).

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::{PermissionsExt, chown};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Once;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// The repository root (where `postfix/` lives).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The shipped file `postfix/<rel>`.
pub fn shipped(rel: &str) -> String {
    let p = repo_root().join("postfix").join(rel);
    fs::read_to_string(&p).unwrap_or_else(|e| panic!("read shipped {}: {e}", p.display()))
}

/// The unprivileged user mailpipe runs as (created by scripts/install-test-deps).
pub const MAILPIPE_USER: &str = "mailpipe";
/// The incoming domain of the shipped snippets.
pub const DOMAIN: &str = "incoming.gitlab.example.com";
/// The local sender that receives bounces (aliased to D/bounces/).
pub const TESTER: &str = "tester@localhost";

/// How the instance hands mail to mailpipe, i.e. which shipped files it uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    /// pipe(8): postfix/master.cf + main.cf + recipients.subaddress.regexp + mailpipe.toml
    Subaddress,
    /// pipe(8): ... + recipients.catch-all.regexp + mailpipe.catch-all.toml
    CatchAll,
    /// pipe(8): ... + recipients.dedicated.regexp + mailpipe.dedicated.toml
    Dedicated,
    /// local(8): postfix/local/main.cf + local/aliases (owned by mailpipe) + mailpipe.toml
    LocalAlias,
    /// local(8): postfix/local/main.cf + local/dot-forward in ~mailpipe + local/mailpipe-forward.toml
    LocalForward,
    /// local(8): as LocalForward, but .forward runs procmail with local/procmailrc
    LocalProcmail,
}

impl Variant {
    fn is_local(self) -> bool {
        matches!(
            self,
            Variant::LocalAlias | Variant::LocalForward | Variant::LocalProcmail
        )
    }
}

/// Which binary the instance runs. The real one unless MAILPIPE_E2E_BIN says
/// otherwise (e.g. a release build or an installed /usr/bin/mailpipe).
pub fn mailpipe_binary() -> PathBuf {
    match std::env::var_os("MAILPIPE_E2E_BIN") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => PathBuf::from(env!("CARGO_BIN_EXE_mailpipe")),
    }
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);
static CLEAN_STALE: Once = Once::new();
const BASE: &str = "/tmp/mailpipe-e2e";

pub struct Instance {
    pub dir: PathBuf,
    pub conf: PathBuf,
    pub port: u16,
    pub variant: Variant,
    pub spool: PathBuf,
    pub bounces: PathBuf,
    pub config_file: PathBuf,
    pub hostname: String,
    /// main.cf also has the shipped main.policy.cf (check_policy_service).
    pub policy: bool,
    running: bool,
}

/// Run a command, panic with its output if it fails.
pub fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    if !out.status.success() {
        panic!(
            "{cmd:?} failed: {}\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out
}

fn user_ids(name: &str) -> (u32, u32) {
    let out = Command::new("id").arg(name).output().expect("run id");
    assert!(
        out.status.success(),
        "user {name:?} missing: run scripts/install-test-deps as root first"
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let num = |tag: &str| -> u32 {
        let i = text.find(tag).unwrap() + tag.len();
        text[i..]
            .chars()
            .take_while(|c| c.is_ascii_digit())
            .collect::<String>()
            .parse()
            .unwrap()
    };
    (num("uid="), num("gid="))
}

fn mkdir(p: &Path, mode: u32, owner: Option<(u32, u32)>) {
    fs::create_dir_all(p).unwrap_or_else(|e| panic!("mkdir {}: {e}", p.display()));
    // chown first: it may clear the setgid bit.
    if let Some((u, g)) = owner {
        chown(p, Some(u), Some(g)).unwrap();
    }
    fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
}

/// The spool as packaging/tmpfiles.d/mailpipe.conf makes it (the layout of
/// src/layout.rs): everything mailpipe-drain:mailpipe; the deliver account
/// writes only tmp/ and new/ through the group.
pub fn make_spool_layout(spool: &Path) {
    use mailpipe::layout::{DRAIN_DIR_MODE, Folder};
    let drain = (user_ids("mailpipe-drain").0, user_ids("mailpipe").1);
    mkdir(spool, DRAIN_DIR_MODE, Some(drain));
    for route in ["incoming_email", "service_desk_email"] {
        mkdir(&spool.join(route), DRAIN_DIR_MODE, Some(drain));
        for folder in Folder::ALL {
            mkdir(
                &spool.join(route).join(folder.as_str()),
                folder.mode(),
                Some(drain),
            );
        }
    }
}

fn write_file(p: &Path, data: &[u8], mode: u32, owner: Option<(u32, u32)>) {
    fs::write(p, data).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
    // Postfix commands wait (in 300 ms steps, about 2 s) for a main.cf that
    // was modified within the last second to settle; date the files back.
    let past = std::time::SystemTime::now() - Duration::from_secs(10);
    fs::File::options()
        .write(true)
        .open(p)
        .and_then(|f| f.set_modified(past))
        .unwrap();
    fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
    if let Some((u, g)) = owner {
        chown(p, Some(u), Some(g)).unwrap();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn pid_alive(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Stop instances left behind by test processes that died without dropping them.
fn clean_stale() {
    let Ok(rd) = fs::read_dir(BASE) else { return };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.split('-').next().and_then(|p| p.parse::<i32>().ok()) else {
            continue;
        };
        if pid == std::process::id() as i32 || pid_alive(pid) {
            continue;
        }
        let conf = e.path().join("conf");
        let _ = Command::new("postfix")
            .arg("-c")
            .arg(&conf)
            .arg("stop")
            .output();
        let _ = fs::remove_dir_all(e.path());
    }
}

/// Root and Postfix are required; say how to get them instead of failing
/// somewhere deep inside.
pub fn require_environment() {
    let me = Command::new("id").arg("-u").output().expect("run id -u");
    assert_eq!(
        String::from_utf8_lossy(&me.stdout).trim(),
        "0",
        "the Postfix end-to-end tests must run as root (they start a private Postfix)"
    );
    assert!(
        Command::new("postconf")
            .args(["-d", "-h", "mail_version"])
            .output()
            .is_ok_and(|o| o.status.success()),
        "Postfix is not installed: run scripts/install-test-deps as root first"
    );
    user_ids(MAILPIPE_USER);
}

impl Instance {
    /// Build and start a private Postfix from the shipped files.
    pub fn start(variant: Variant) -> Instance {
        Instance::start_full(variant, false, &[])
    }

    /// As [`Instance::start`], with the shipped `main.policy.cf` added to
    /// main.cf when `policy` is set (the policy service itself is the
    /// test's to start, on [`Instance::policy_socket`]).
    pub fn start_opts(variant: Variant, policy: bool) -> Instance {
        Instance::start_full(variant, policy, &[])
    }

    /// Like [`Instance::start`], with `postfix start` run through `wrapper`
    /// (a command and its arguments, like `unshare -m …`): master and every
    /// delivery it starts inherit what the wrapper set up.
    pub fn start_wrapped(variant: Variant, wrapper: &[&str]) -> Instance {
        Instance::start_full(variant, false, wrapper)
    }

    fn start_full(variant: Variant, policy: bool, wrapper: &[&str]) -> Instance {
        require_environment();
        CLEAN_STALE.call_once(clean_stale);
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        fs::create_dir_all(BASE).unwrap();
        fs::set_permissions(BASE, fs::Permissions::from_mode(0o755)).unwrap();
        let dir = PathBuf::from(format!("{BASE}/{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let hostname = format!("mx{n}-{}.e2e.test", std::process::id());
        let mut last_err = String::new();
        // A port picked as free can be taken by someone else before master binds
        // it; try a few ports.
        for _attempt in 0..5 {
            let port = free_port();
            let mut inst = Instance {
                conf: dir.join("conf"),
                spool: dir.join("spool"),
                bounces: dir.join("bounces"),
                config_file: dir.join("etc/mailpipe").join(match variant {
                    Variant::LocalForward | Variant::LocalProcmail => "mailpipe-forward.toml",
                    _ => "mailpipe.toml",
                }),
                dir: dir.clone(),
                port,
                variant,
                hostname: hostname.clone(),
                policy,
                running: false,
            };
            inst.build();
            // The shipped snippets must load without a single warning.
            let check = run(Command::new("postfix")
                .arg("-c")
                .arg(&inst.conf)
                .arg("check"));
            let check_out = String::from_utf8_lossy(&check.stderr).into_owned()
                + &String::from_utf8_lossy(&check.stdout);
            assert!(
                check_out.trim().is_empty(),
                "postfix check ({variant:?}):\n{check_out}"
            );
            let postconf = run(Command::new("postconf").arg("-c").arg(&inst.conf).arg("-n"));
            let warnings = String::from_utf8_lossy(&postconf.stderr);
            assert!(
                warnings.trim().is_empty(),
                "postconf -n ({variant:?}):\n{warnings}"
            );
            let mut start = match wrapper.split_first() {
                None => Command::new("postfix"),
                Some((first, rest)) => {
                    let mut c = Command::new(first);
                    c.args(rest).arg("postfix");
                    c
                }
            };
            let started = start
                .arg("-c")
                .arg(&inst.conf)
                .arg("start")
                .output()
                .expect("run postfix start");
            inst.running = true;
            let ready = if started.status.success() {
                inst.wait_ready(Duration::from_secs(20))
            } else {
                // e.g. master could not bind the port after all
                Err(format!(
                    "postfix start: {}{}\nlog:\n{}",
                    String::from_utf8_lossy(&started.stdout),
                    String::from_utf8_lossy(&started.stderr),
                    inst.log()
                ))
            };
            match ready {
                Ok(()) => return inst,
                Err(e) => {
                    last_err = e;
                    inst.stop();
                    // Drop would stop again and remove the folder: do it now and retry.
                    drop(inst);
                }
            }
        }
        panic!("private Postfix did not come up: {last_err}");
    }

    /// Replace the production paths of the shipped files by this instance's.
    pub fn substitute(&self, text: &str) -> String {
        let d = self.dir.display().to_string();
        text.replace("/usr/bin/mailpipe", &format!("{d}/bin/mailpipe"))
            .replace("/etc/mailpipe/", &format!("{d}/etc/mailpipe/"))
            .replace("/etc/postfix/", &format!("{d}/conf/"))
            .replace("hash:/etc/aliases", &format!("hash:{d}/conf/aliases"))
            .replace("/var/spool/mailpipe", &format!("{d}/spool"))
            .replace("user=mailpipe", &format!("user={MAILPIPE_USER}"))
    }

    fn build(&mut self) {
        let d = &self.dir;
        let mp = user_ids(MAILPIPE_USER);
        let postfix = user_ids("postfix");
        let nobody = user_ids("nobody");
        let _ = fs::remove_dir_all(d);
        mkdir(d, 0o755, None);
        for sub in ["conf", "queue", "bin", "etc", "etc/mailpipe", "home"] {
            mkdir(&d.join(sub), 0o755, None);
        }
        mkdir(&d.join("data"), 0o700, Some(postfix));
        // The spool as postfix/README.md tells the admin to create it (the
        // packages' tmpfiles.d layout).
        make_spool_layout(&self.spool);
        // tester@localhost's mailbox: written by local(8) as default_privs (nobody)
        // because the alias table is root's.
        mkdir(&self.bounces, 0o755, Some(nobody));

        // The binary under test, where the unprivileged user can run it.
        let bin = mailpipe_binary();
        assert!(
            bin.exists(),
            "mailpipe binary {} missing (cargo build)",
            bin.display()
        );
        fs::copy(&bin, d.join("bin/mailpipe")).unwrap();
        fs::set_permissions(d.join("bin/mailpipe"), fs::Permissions::from_mode(0o755)).unwrap();

        // --- master.cf: the standard services (chroot off) + the shipped entry.
        let mut master = format!("127.0.0.1:{} inet n - n - - smtpd\n", self.port);
        master.push_str(BASE_MASTER_CF);
        if !self.variant.is_local() {
            master.push_str(&self.substitute(&shipped("master.cf")));
        }
        write_file(&self.conf.join("master.cf"), master.as_bytes(), 0o644, None);

        // --- main.cf: the instance's own settings, then the shipped snippet.
        let main = format!(
            "# private test instance, generated by tests/postfix_support\n\
             compatibility_level = 3.6\n\
             queue_directory = {d}/queue\n\
             data_directory = {d}/data\n\
             mail_owner = postfix\n\
             setgid_group = postdrop\n\
             myhostname = {host}\n\
             mydomain = e2e.test\n\
             myorigin = $myhostname\n\
             inet_interfaces = 127.0.0.1\n\
             inet_protocols = ipv4\n\
             mydestination = localhost\n\
             # the test client is treated like any Internet sender\n\
             mynetworks =\n\
             default_transport = error:5.7.1 e2e test instance: nothing leaves this machine\n\
             relay_transport = error:5.7.1 e2e test instance: nothing leaves this machine\n\
             smtpd_peername_lookup = no\n\
             # headers of mail from 127.0.0.1 are not rewritten, as for Internet mail\n\
             local_header_rewrite_clients =\n\
             maillog_file = {d}/maillog\n\
             maillog_file_prefixes = {d}\n\
             alias_maps = hash:{d}/conf/aliases\n\
             alias_database = hash:{d}/conf/aliases\n\
             mail_spool_directory = {d}/mail\n\
             forward_path = {d}/home/$user/.forward\n\
             biff = no\n\
             # do not slow SMTP down while the queue is busy (200-message test)\n\
             in_flow_delay = 0\n\
             # 200 simultaneous sessions from one address (default limit: 50)\n\
             smtpd_client_event_limit_exceptions = 127.0.0.0/8\n\
             # retries happen when a test flushes the queue, not by themselves\n\
             queue_run_delay = 3600s\n\
             minimal_backoff_time = 3600s\n\
             maximal_backoff_time = 3600s\n\
             # the shipped settings follow\n",
            d = d.display(),
            host = self.hostname,
        );
        let mut snippet = if self.variant.is_local() {
            self.substitute(&shipped("local/main.cf"))
        } else {
            // The admin picks the recipients file for the address form (main.cf
            // comment); everything else is used as shipped.
            let recipients = match self.variant {
                Variant::CatchAll => "recipients.catch-all.regexp",
                Variant::Dedicated => "recipients.dedicated.regexp",
                _ => "recipients.subaddress.regexp",
            };
            self.substitute(&shipped("main.cf"))
                .replace("recipients.subaddress.regexp", recipients)
        };
        if self.policy {
            snippet.push_str(&self.substitute(&shipped("main.policy.cf")));
        }
        // Settings the shipped snippet makes win over the instance's own.
        let shipped_keys: Vec<&str> = snippet
            .lines()
            .filter(|l| !l.starts_with(['#', ' ', '\t']))
            .filter_map(|l| l.split_once('=').map(|(k, _)| k.trim()))
            .collect();
        let mut main: String = main
            .lines()
            .filter(|l| {
                l.split_once('=')
                    .is_none_or(|(k, _)| !shipped_keys.contains(&k.trim()))
            })
            .map(|l| format!("{l}\n"))
            .collect();
        main.push_str(&snippet);
        write_file(&self.conf.join("main.cf"), main.as_bytes(), 0o644, None);

        // --- maps
        for f in [
            "mailpipe_transport",
            "recipients.subaddress.regexp",
            "recipients.catch-all.regexp",
            "recipients.dedicated.regexp",
        ] {
            write_file(
                &self.conf.join(f),
                self.substitute(&shipped(f)).as_bytes(),
                0o644,
                None,
            );
        }
        run(Command::new("postmap").arg(self.conf.join("mailpipe_transport")));
        let aliases = format!(
            "tester: {d}/bounces/\npostmaster: {d}/bounces/\nroot: postmaster\nMAILER-DAEMON: postmaster\n",
            d = d.display()
        );
        write_file(&self.conf.join("aliases"), aliases.as_bytes(), 0o644, None);
        run(Command::new("postalias").arg(self.conf.join("aliases")));

        // --- mailpipe's config(s), from the shipped examples.
        let etc = d.join("etc/mailpipe");
        let toml = match self.variant {
            Variant::CatchAll => "mailpipe.catch-all.toml",
            Variant::Dedicated => "mailpipe.dedicated.toml",
            Variant::LocalForward | Variant::LocalProcmail => "local/mailpipe-forward.toml",
            _ => "mailpipe.toml",
        };
        write_file(
            &self.config_file,
            self.substitute(&shipped(toml)).as_bytes(),
            0o644,
            None,
        );

        if self.variant.is_local() {
            // The alias table is the mailpipe user's, so local(8) runs its
            // commands as mailpipe (README.md, local(8) variant).
            let p = etc.join("aliases");
            write_file(
                &p,
                self.substitute(&shipped("local/aliases")).as_bytes(),
                0o644,
                Some(mp),
            );
            run(Command::new("postalias").arg("-o").arg(&p));
            chown(etc.join("aliases.db"), Some(mp.0), Some(mp.1)).unwrap();
        }
        match self.variant {
            Variant::LocalForward | Variant::LocalProcmail => {
                let home = d.join("home").join(MAILPIPE_USER);
                mkdir(&home, 0o755, Some(mp));
                let fwd = if self.variant == Variant::LocalForward {
                    "local/dot-forward"
                } else {
                    write_file(
                        &etc.join("procmailrc"),
                        self.substitute(&shipped("local/procmailrc")).as_bytes(),
                        0o644,
                        None,
                    );
                    "local/procmail-dot-forward"
                };
                write_file(
                    &home.join(".forward"),
                    self.substitute(&shipped(fwd)).as_bytes(),
                    0o644,
                    Some(mp),
                );
            }
            _ => {}
        }
    }

    fn wait_ready(&self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        let mut last = String::new();
        while Instant::now() < deadline {
            match TcpStream::connect(("127.0.0.1", self.port)) {
                Ok(s) => {
                    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
                    let mut r = BufReader::new(s);
                    let mut line = String::new();
                    let _ = r.read_line(&mut line);
                    if line.starts_with("220 ") && line.contains(&self.hostname) {
                        let _ = r.get_mut().write_all(b"QUIT\r\n");
                        return Ok(());
                    }
                    // Someone else's server on this port.
                    return Err(format!("port {} answered {line:?}", self.port));
                }
                Err(e) => last = e.to_string(),
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(format!(
            "no SMTP on port {} within {timeout:?}: {last}; log:\n{}",
            self.port,
            self.log()
        ))
    }

    /// Where `check_policy_service unix:private/mailpipe-policy` points:
    /// private/ under this instance's queue_directory.
    pub fn policy_socket(&self) -> PathBuf {
        self.dir.join("queue/private/mailpipe-policy")
    }

    pub fn stop(&mut self) {
        if !self.running {
            return;
        }
        self.running = false;
        let _ = Command::new("postfix")
            .arg("-c")
            .arg(&self.conf)
            .arg("stop")
            .output();
        // postfix stop signals master and returns; wait for it to go away, and
        // kill it (by its pid) if it does not.
        let pidfile = self.dir.join("queue/pid/master.pid");
        let pid = fs::read_to_string(&pidfile)
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok());
        if let Some(pid) = pid {
            let deadline = Instant::now() + Duration::from_secs(10);
            while pid_alive(pid) && !is_zombie(pid) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            if pid_alive(pid) && !is_zombie(pid) {
                let _ = Command::new("kill").arg("-9").arg(pid.to_string()).output();
            }
        }
    }

    // ----- SMTP -------------------------------------------------------------

    pub fn smtp(&self) -> Smtp {
        Smtp::connect(self.port)
    }

    /// Send one message (LF or CRLF line ends; sent as CRLF). Panics unless it
    /// is accepted; returns the queue id.
    pub fn send(&self, from: &str, to: &[&str], msg: &[u8]) -> String {
        let mut s = self.smtp();
        let r = s.send(from, to, msg);
        s.quit();
        match r {
            SendResult::Queued(id) => id,
            other => panic!("message from {from:?} to {to:?} not accepted: {other:?}"),
        }
    }

    // ----- Postfix state -----------------------------------------------------

    pub fn log(&self) -> String {
        String::from_utf8_lossy(&fs::read(self.dir.join("maillog")).unwrap_or_default())
            .into_owned()
    }

    /// The delivery lines (`to=<...>, ..., status=...`) logged for a queue id.
    pub fn deliveries(&self, queue_id: &str) -> Vec<Delivery> {
        let tag = format!(" {queue_id}: to=<");
        self.log()
            .lines()
            .filter(|l| l.contains(&tag))
            .map(Delivery::parse)
            .collect()
    }

    /// Wait until `queue_id` has `n` delivery lines in the log.
    pub fn wait_deliveries(&self, queue_id: &str, n: usize, timeout: Duration) -> Vec<Delivery> {
        let deadline = Instant::now() + timeout;
        loop {
            let d = self.deliveries(queue_id);
            if d.len() >= n {
                return d;
            }
            if Instant::now() > deadline {
                panic!(
                    "{queue_id}: expected {n} delivery log lines within {timeout:?}, got {d:?}\nlog:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// Wait for the single delivery of `queue_id` and return it.
    pub fn wait_delivery(&self, queue_id: &str) -> Delivery {
        self.wait_deliveries(queue_id, 1, Duration::from_secs(60))
            .remove(0)
    }

    /// Wait for a delivery line of `queue_id` with the given status (the
    /// message may have been deferred before).
    pub fn wait_status(&self, queue_id: &str, status: &str, timeout: Duration) -> Delivery {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(d) = self
                .deliveries(queue_id)
                .into_iter()
                .find(|d| d.status == status)
            {
                return d;
            }
            if Instant::now() > deadline {
                panic!(
                    "{queue_id}: no status={status} within {timeout:?}: {:?}\nlog:\n{}",
                    self.deliveries(queue_id),
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// Wait until Postfix has removed `queue_id` from its queue.
    pub fn wait_removed(&self, queue_id: &str, timeout: Duration) {
        let needle = format!(" {queue_id}: removed");
        let deadline = Instant::now() + timeout;
        while !self.log().contains(&needle) {
            if Instant::now() > deadline {
                panic!(
                    "{queue_id} not removed within {timeout:?}\nlog:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// `postqueue -p` (what an admin runs as `mailq`).
    pub fn mailq(&self) -> String {
        let out = run(Command::new("postqueue")
            .arg("-c")
            .arg(&self.conf)
            .arg("-p"));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `postqueue -f`: retry everything in the queue now.
    pub fn flush(&self) {
        run(Command::new("postqueue")
            .arg("-c")
            .arg(&self.conf)
            .arg("-f"));
    }

    /// The queue file of a message as an admin sees it with `postcat -q`.
    pub fn postcat(&self, queue_id: &str) -> String {
        let out = Command::new("postcat")
            .arg("-c")
            .arg(&self.conf)
            .arg("-q")
            .arg(queue_id)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    // ----- mailpipe's spool and the sender's mailbox -------------------------

    /// Files in `<spool>/<route>/new`, sorted by name.
    pub fn spooled(&self, route: &str) -> Vec<(PathBuf, Vec<u8>)> {
        maildir_files(&self.spool.join(route))
    }

    pub fn spool_tmp(&self, route: &str) -> Vec<PathBuf> {
        list(&self.spool.join(route).join("tmp"))
    }

    /// Messages delivered to tester@localhost (bounces/DSNs).
    pub fn bounces(&self) -> Vec<(PathBuf, Vec<u8>)> {
        maildir_files(&self.bounces)
    }

    /// Wait for the bounce of `queue_id` to reach tester@localhost; return it.
    pub fn wait_bounce(&self, queue_id: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        // Postfix logs "QID: sender non-delivery notification: NEWQID".
        let tag = format!(" {queue_id}: sender non-delivery notification: ");
        loop {
            let log = self.log();
            if let Some(line) = log.lines().find(|l| l.contains(&tag)) {
                let dsn_id = line.rsplit(' ').next().unwrap().trim().to_string();
                let d = self.wait_status(&dsn_id, "sent", Duration::from_secs(30));
                assert_eq!(d.to, TESTER, "bounce went to {d:?}");
                let needle = format!(" id {queue_id}");
                for (_, data) in self.bounces() {
                    let text = String::from_utf8_lossy(&data).into_owned();
                    if text.contains(&needle) {
                        return text;
                    }
                }
            }
            if Instant::now() > deadline {
                panic!("no bounce for {queue_id} reached {TESTER}\nlog:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// Make the spool unwritable for the mailpipe user (or writable again):
    /// the two folders it writes, tmp/ and new/.
    pub fn spool_writable(&self, writable: bool) {
        let mode = if writable {
            mailpipe::layout::DELIVER_DIR_MODE
        } else {
            0o2750
        };
        for route in ["incoming_email", "service_desk_email"] {
            for sub in ["tmp", "new"] {
                let p = self.spool.join(route).join(sub);
                if p.is_dir() {
                    fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
                }
            }
        }
    }
}

fn is_zombie(pid: i32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit(')')
                .next()
                .is_some_and(|r| r.trim_start().starts_with('Z'))
        })
        .unwrap_or(true)
}

fn list(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

fn maildir_files(maildir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    list(&maildir.join("new"))
        .into_iter()
        .chain(list(&maildir.join("cur")))
        .map(|p| {
            let data = fs::read(&p).unwrap();
            (p, data)
        })
        .collect()
}

impl Drop for Instance {
    fn drop(&mut self) {
        if std::thread::panicking() && self.dir.exists() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(60).collect();
            eprintln!(
                "---- private Postfix {} (port {}) ----",
                self.dir.display(),
                self.port
            );
            eprintln!("maillog (last lines):");
            for l in tail.iter().rev() {
                eprintln!("  {l}");
            }
            if self.running {
                eprintln!("postqueue -p:\n{}", self.mailq_lossy());
            }
        }
        self.stop();
        let keep = std::env::var_os("MAILPIPE_E2E_KEEP").is_some_and(|v| !v.is_empty() && v != "0");
        if keep {
            eprintln!("kept {}", self.dir.display());
        } else {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

impl Instance {
    fn mailq_lossy(&self) -> String {
        Command::new("postqueue")
            .arg("-c")
            .arg(&self.conf)
            .arg("-p")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    }
}

/// The standard services of a Postfix 3.7 master.cf, chroot off everywhere
/// (a chrooted service would need copies of system files in the queue folder).
const BASE_MASTER_CF: &str = "\
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
";

// ----- log lines -------------------------------------------------------------

/// One `QID: to=<...>, ..., status=... (text)` line of the log.
#[derive(Clone, Debug)]
pub struct Delivery {
    pub line: String,
    pub to: String,
    pub orig_to: Option<String>,
    pub relay: String,
    pub dsn: String,
    pub status: String,
    /// The parenthesised text after the status (mailpipe's output for pipe).
    pub text: String,
}

impl Delivery {
    fn parse(line: &str) -> Delivery {
        let after = |key: &str| -> Option<String> {
            let i = line.find(key)? + key.len();
            let rest = &line[i..];
            let end = if key.ends_with('<') {
                rest.find(">,")?
            } else {
                rest.find([',', ' ']).unwrap_or(rest.len())
            };
            Some(rest[..end].to_string())
        };
        let status = after("status=").unwrap_or_default();
        let text = line
            .find(&format!("status={status} ("))
            .map(|i| {
                let t = &line[i + "status=".len() + status.len() + 2..];
                t.strip_suffix(')').unwrap_or(t).to_string()
            })
            .unwrap_or_default();
        Delivery {
            line: line.to_string(),
            to: after(" to=<").unwrap_or_default(),
            orig_to: after(" orig_to=<"),
            relay: after(" relay=").unwrap_or_default(),
            dsn: after(" dsn=").unwrap_or_default(),
            status,
            text,
        }
    }
}

// ----- a small SMTP client -----------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendResult {
    Queued(String),
    /// Refused at MAIL, RCPT (all recipients) or DATA: the reply.
    Refused(String),
}

pub struct Smtp {
    r: BufReader<TcpStream>,
    pub ehlo: String,
}

impl Smtp {
    pub fn connect(port: u16) -> Smtp {
        let s = TcpStream::connect(("127.0.0.1", port))
            .unwrap_or_else(|e| panic!("connect 127.0.0.1:{port}: {e}"));
        s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
        s.set_write_timeout(Some(Duration::from_secs(120))).unwrap();
        let mut c = Smtp {
            r: BufReader::new(s),
            ehlo: String::new(),
        };
        let banner = c.reply();
        assert!(banner.starts_with("220"), "banner {banner:?}");
        c.ehlo = c.cmd("EHLO client.e2e.test");
        assert!(c.ehlo.starts_with("250"), "EHLO: {}", c.ehlo);
        c
    }

    /// Read one (possibly multi-line) reply.
    pub fn reply(&mut self) -> String {
        let mut all = String::new();
        loop {
            let mut line = String::new();
            let n = self.r.read_line(&mut line).expect("read SMTP reply");
            assert!(n > 0, "server closed the connection; so far {all:?}");
            all.push_str(&line);
            if line.len() < 4 || line.as_bytes()[3] != b'-' {
                return all.trim_end().to_string();
            }
        }
    }

    pub fn cmd(&mut self, line: &str) -> String {
        let s = self.r.get_mut();
        s.write_all(line.as_bytes()).unwrap();
        s.write_all(b"\r\n").unwrap();
        self.reply()
    }

    /// MAIL, RCPT..., DATA. Recipients refused at RCPT are skipped (their
    /// replies are in `rcpt_replies`); the message goes to the rest.
    pub fn send_detailed(
        &mut self,
        from: &str,
        to: &[&str],
        msg: &[u8],
    ) -> (SendResult, Vec<String>) {
        let r = self.cmd(&format!("MAIL FROM:<{from}> BODY=8BITMIME"));
        if !r.starts_with("250") {
            self.cmd("RSET");
            return (SendResult::Refused(r), vec![]);
        }
        let mut replies = vec![];
        let mut ok = 0;
        for t in to {
            let r = self.cmd(&format!("RCPT TO:<{t}>"));
            if r.starts_with("250") {
                ok += 1;
            }
            replies.push(r);
        }
        if ok == 0 {
            self.cmd("RSET");
            let first = replies.first().cloned().unwrap_or_default();
            return (SendResult::Refused(first), replies);
        }
        let r = self.cmd("DATA");
        if !r.starts_with("354") {
            return (SendResult::Refused(r), replies);
        }
        let wire = to_wire(msg);
        let s = self.r.get_mut();
        s.write_all(&wire).unwrap();
        s.write_all(b".\r\n").unwrap();
        let r = self.reply();
        if !r.starts_with("250") {
            return (SendResult::Refused(r), replies);
        }
        let id = r.rsplit("queued as ").next().unwrap().trim().to_string();
        (SendResult::Queued(id), replies)
    }

    pub fn send(&mut self, from: &str, to: &[&str], msg: &[u8]) -> SendResult {
        self.send_detailed(from, to, msg).0
    }

    /// Just the RCPT reply for an address (then RSET).
    pub fn rcpt_reply(&mut self, from: &str, to: &str) -> String {
        let r = self.cmd(&format!("MAIL FROM:<{from}>"));
        assert!(r.starts_with("250"), "MAIL: {r}");
        let r = self.cmd(&format!("RCPT TO:<{to}>"));
        self.cmd("RSET");
        r
    }

    pub fn quit(mut self) {
        let _ = self.r.get_mut().write_all(b"QUIT\r\n");
        let mut sink = Vec::new();
        let _ = self.r.read_to_end(&mut sink);
    }
}

/// SMTP DATA encoding: every line ends in CRLF (an LF alone becomes CRLF, an
/// existing CRLF stays), lines starting with "." get another ".", and a
/// missing final line end is added.
pub fn to_wire(msg: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(msg.len() + msg.len() / 40 + 8);
    for line in msg.split_inclusive(|&b| b == b'\n') {
        let body = line.strip_suffix(b"\n").unwrap_or(line);
        let body = body.strip_suffix(b"\r").unwrap_or(body);
        if body.first() == Some(&b'.') {
            out.push(b'.');
        }
        out.extend_from_slice(body);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// What Postfix hands a pipe(8) command for a message sent with [`to_wire`]:
/// the same lines with LF endings (pipe's eol is "\n").
pub fn as_delivered(msg: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(msg.len());
    for line in msg.split_inclusive(|&b| b == b'\n') {
        let body = line.strip_suffix(b"\n").unwrap_or(line);
        let body = body.strip_suffix(b"\r").unwrap_or(body);
        out.extend_from_slice(body);
        out.push(b'\n');
    }
    out
}

// ----- messages and stored copies ---------------------------------------------

/// A 32-hex reply key (GitLab's legacy CreateNote form), unique per call.
pub fn hex_key() -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    let n = N.fetch_add(1, Ordering::SeqCst) as u64;
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let mut x = t ^ (u64::from(std::process::id()) << 32) ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let mut s = String::new();
    for _ in 0..2 {
        // splitmix64
        x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        s.push_str(&format!("{z:016x}"));
    }
    s
}

pub fn incoming(key: &str) -> String {
    format!("incoming+{key}@{DOMAIN}")
}

/// A plain reply as a mail client would write it (LF line ends).
pub fn message(from: &str, to: &str, subject: &str, extra_headers: &str, body: &str) -> Vec<u8> {
    format!(
        "From: {from}\nTo: {to}\nSubject: {subject}\nDate: Wed, 25 Nov 2026 10:00:00 +0000\n\
         Message-ID: <{}@client.e2e.test>\nMIME-Version: 1.0\nContent-Type: text/plain; charset=utf-8\n\
         {extra_headers}\n{body}",
        hex_key()
    )
    .into_bytes()
}

/// One header field of the part of a stored file that precedes the original
/// message: name and full (unfolded) value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prepended {
    pub name: String,
    pub value: String,
}

/// Split a stored copy into the header lines put in front of the original
/// message and check that the rest is the original, byte for byte. Panics
/// otherwise. `original` is what Postfix hands over (see [`as_delivered`]).
pub fn split_prepended(stored: &[u8], original: &[u8]) -> Vec<Prepended> {
    assert!(
        stored.len() >= original.len() && stored.ends_with(original),
        "stored copy ({} bytes) does not end with the original message ({} bytes); first difference: {}",
        stored.len(),
        original.len(),
        first_difference(stored, original)
    );
    let prefix = &stored[..stored.len() - original.len()];
    let text = std::str::from_utf8(prefix).expect("prepended lines are ASCII");
    let mut out: Vec<Prepended> = vec![];
    for line in text.split_inclusive('\n') {
        assert!(
            line.ends_with('\n'),
            "prepended part does not end at a line end: {text:?}"
        );
        let l = line.trim_end_matches('\n');
        if l.starts_with([' ', '\t']) {
            let last = out
                .last_mut()
                .unwrap_or_else(|| panic!("continuation without a field: {text:?}"));
            last.value.push_str(l);
        } else {
            let (name, value) = l
                .split_once(':')
                .unwrap_or_else(|| panic!("not a header line: {l:?}"));
            out.push(Prepended {
                name: name.to_string(),
                value: value.trim().to_string(),
            });
        }
    }
    out
}

fn first_difference(stored: &[u8], original: &[u8]) -> String {
    // Compare from the end (the original should be the tail).
    let n = stored
        .iter()
        .rev()
        .zip(original.iter().rev())
        .take_while(|(a, b)| a == b)
        .count();
    let from_end_stored = stored.len() - n;
    let lo = from_end_stored.saturating_sub(40);
    format!(
        "last {n} bytes equal; stored before that: {:?}",
        String::from_utf8_lossy(&stored[lo..from_end_stored])
    )
}

/// Poll `f` until it returns Some or the timeout passes.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// Count of header fields with this name (case-insensitive) in a message's header section.
pub fn header_values(msg: &[u8], name: &str) -> Vec<String> {
    let end = msg
        .windows(2)
        .position(|w| w == b"\n\n")
        .map(|i| i + 1)
        .unwrap_or(msg.len());
    let head = String::from_utf8_lossy(&msg[..end]);
    let mut fields: Vec<(String, String)> = vec![];
    for line in head.lines() {
        if line.starts_with([' ', '\t']) {
            if let Some(last) = fields.last_mut() {
                last.1.push_str(line);
            }
        } else if let Some((n, v)) = line.split_once(':') {
            fields.push((n.to_string(), v.trim().to_string()));
        }
    }
    fields
        .into_iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v)
        .collect()
}

pub fn counts<T: Ord + Clone>(items: &[T]) -> BTreeMap<T, usize> {
    let mut m = BTreeMap::new();
    for i in items {
        *m.entry(i.clone()).or_insert(0) += 1;
    }
    m
}
