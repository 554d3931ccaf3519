//! The drain's side of the spool: which folder a message is in, who owns
//! it, and the state that travels with it between attempts.
//!
//! Must not: write into `tmp/` or create a name in `new/` (that is
//! `deliver`'s), read a message except to hand its bytes to the caller,
//! replace any existing file, or delete a message that GitLab has not
//! accepted.
//! Fails: with a `StoreError` naming the step and the path. A failure
//! never loses a message: whatever happens, it stays in `new/`, `work/`
//! or `failed/`, and a message left in `work/` by a dead drain is put back.
//!
//! Layout per route, below `<spool.dir>/<route>/`:
//!
//! | Folder | Holds | Written by |
//! | --- | --- | --- |
//! | `tmp/`, `new/` | messages being written, messages waiting | deliver (drain renames out of `new/`) |
//! | `work/` | messages a drain is posting right now | drain |
//! | `failed/` | messages given up (never deleted) | drain; `requeue` moves them back |
//! | `state/` | one JSON sidecar per message that failed at least once | drain |
//! | `cur/` | delivered messages, only with `drain.keep_delivered` | drain |
//!
//! Ownership is an exclusive flock(2) on the message file. The rule that
//! makes it safe: *only the holder of the lock moves or deletes a message,
//! and it keeps the lock until the file has left `work/`*. A claim opens
//! `new/<name>`, takes the lock without waiting, checks that the name still
//! points at the locked file (it may have moved between open and lock),
//! and only then renames it into `work/`. So two drains, or two workers,
//! cannot both post one file, and a file in `work/` whose lock is free
//! belongs to a drain that died (even by SIGKILL: the kernel drops the lock
//! with the process); [`RouteSpool::recover`] puts it back into `new/`.
//!
//! Every move is renameat2(RENAME_NOREPLACE): a name clash fails instead of
//! destroying a message. The sidecar is written to a temporary name,
//! fsynced, renamed over the old one and the folder fsynced, before the
//! message goes back to `new/`; on success the sidecar is removed before
//! the message, so a crash between the two re-posts the message (the one
//! duplicate the contract allows) instead of leaving a stray sidecar.

use std::collections::HashSet;
use std::ffi::CString;
use std::fmt;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::config::Route;

/// Mode of the folders the drain creates: the shared group may use them
/// (the same as `deliver`'s folders).
const DIR_MODE: u32 = 0o770;
/// The set-group-ID bit of a folder: new entries take the folder's group.
const SETGID: u32 = 0o2000;
/// Mode of sidecar files: `mailpipe queue` run by the group may read them.
const STATE_MODE: u32 = 0o640;
/// A sidecar is a few hundred bytes; a larger file is not one of ours.
const MAX_STATE_BYTES: u64 = 64 * 1024;
/// Leftover temporary sidecars (a drain died while writing one) older than
/// this are removed by [`RouteSpool::recover`].
const STALE_TMP: Duration = Duration::from_secs(3600);
/// Files in the Maildir's `tmp/` older than this were left by a delivery
/// that died (killed by a signal, or by mailpipe's own SIGKILL fallback);
/// the maildir spec lets readers delete them after 36 hours. A live
/// delivery is never that old: `deliver` gives up after its deadline.
const ABANDONED_DELIVERY: Duration = Duration::from_secs(36 * 3600);
/// Maildir info suffix for `cur/`: version 2, flag Seen (what mail_room
/// left on a delivered IMAP message).
const SEEN_SUFFIX: &str = ":2,S";

/// A spool folder of one route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Folder {
    New,
    Work,
    Failed,
    Cur,
}

impl Folder {
    pub fn as_str(self) -> &'static str {
        match self {
            Folder::New => "new",
            Folder::Work => "work",
            Folder::Failed => "failed",
            Folder::Cur => "cur",
        }
    }
}

const STATE_DIR: &str = "state";
/// Folders the drain needs; `tmp/` and `new/` are created too, so that
/// `deliver` finds them, with the same mode it would use.
const SUBDIRS: [&str; 6] = ["tmp", "new", "cur", "work", "failed", STATE_DIR];

/// A spool failure.
#[derive(Debug)]
#[non_exhaustive]
pub enum StoreError {
    /// `spool.dir` itself is missing: the drain never creates it (it may
    /// be an unmounted volume).
    RootMissing { path: PathBuf, err: io::Error },
    /// A file system step failed.
    Io {
        op: &'static str,
        path: PathBuf,
        err: io::Error,
    },
    /// A sidecar exists but cannot be understood.
    BadState { path: PathBuf, why: String },
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::RootMissing { path, err } => write!(
                f,
                "spool directory {} is not usable ({err}); create it or fix spool.dir",
                path.display()
            ),
            StoreError::Io { op, path, err } => {
                write!(f, "spool {op} {} failed: {err}", path.display())
            }
            StoreError::BadState { path, why } => {
                write!(f, "state file {} is unreadable: {why}", path.display())
            }
        }
    }
}

impl std::error::Error for StoreError {}

fn io_err<'p>(op: &'static str, path: &'p Path) -> impl FnOnce(io::Error) -> StoreError + 'p {
    move |err| StoreError::Io {
        op,
        path: path.to_path_buf(),
        err,
    }
}

/// What the drain remembers about a message between attempts. Times are
/// seconds since the epoch.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct State {
    /// Attempts made so far (each POST, and each attempt stopped before
    /// the POST by a local configuration problem).
    pub attempts: u32,
    /// When the first attempt failed: the give-up window starts here.
    pub first_failure: Option<u64>,
    /// When the last attempt was made.
    pub last_attempt: Option<u64>,
    /// Not to be tried again before this time (0: at once).
    pub next_attempt: u64,
    /// HTTP status of the last answer, if there was one.
    pub last_status: Option<u16>,
    /// Why the last attempt failed (no message content).
    pub last_error: String,
    /// When the message was moved to `failed/`.
    pub failed_at: Option<u64>,
}

/// A message in a folder, with the time it arrived.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub name: String,
    /// (seconds, microseconds) since the epoch: from the Maildir name
    /// `deliver` gave it, or the file's modification time.
    pub arrived: (u64, u32),
}

/// The drain's view of one route's Maildir.
#[derive(Debug, Clone)]
pub struct RouteSpool {
    route: Route,
    dir: PathBuf,
}

impl RouteSpool {
    /// Opens `<root>/<route>`, creating the route's folders that are
    /// missing (mode 0770, group of the route folder). The root must exist.
    ///
    /// # Errors
    /// `RootMissing` without the root, `Io` when a folder cannot be created
    /// or is not a plain directory (a symbolic link is refused).
    pub fn open(root: &Path, route: Route) -> Result<RouteSpool, StoreError> {
        let meta = fs::metadata(root).map_err(|err| StoreError::RootMissing {
            path: root.to_path_buf(),
            err,
        })?;
        if !meta.is_dir() {
            return Err(StoreError::RootMissing {
                path: root.to_path_buf(),
                err: io::Error::from_raw_os_error(libc::ENOTDIR),
            });
        }
        let spool = RouteSpool {
            route,
            dir: root.join(route.as_str()),
        };
        ensure_dir(&spool.dir, None)?;
        let gid = fs::symlink_metadata(&spool.dir)
            .map_err(io_err("stat", &spool.dir))?
            .gid();
        for sub in SUBDIRS {
            ensure_dir(&spool.dir.join(sub), Some(gid))?;
        }
        Ok(spool)
    }

    /// The route's folder when it exists, without creating anything (for
    /// `mailpipe queue`, which must not write).
    pub fn existing(root: &Path, route: Route) -> Option<RouteSpool> {
        let dir = root.join(route.as_str());
        dir.is_dir().then_some(RouteSpool { route, dir })
    }

    pub fn route(&self) -> Route {
        self.route
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, folder: Folder, name: &str) -> PathBuf {
        self.dir.join(folder.as_str()).join(name)
    }

    fn state_path(&self, name: &str) -> PathBuf {
        self.dir.join(STATE_DIR).join(name)
    }

    /// The messages in `folder`, oldest first. Names starting with `.` are
    /// skipped (the Maildir rule), and so is anything not a regular file.
    ///
    /// # Errors
    /// `Io` when the folder cannot be read; a missing folder is empty.
    pub fn list(&self, folder: Folder) -> Result<Vec<Entry>, StoreError> {
        let dir = self.dir.join(folder.as_str());
        let reader = match fs::read_dir(&dir) {
            Ok(r) => r,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err("read", &dir)(e)),
        };
        let mut entries = Vec::new();
        for item in reader {
            let item = item.map_err(io_err("read", &dir))?;
            let Some(name) = item.file_name().to_str().map(str::to_string) else {
                continue; // not ours: deliver writes ASCII names
            };
            if name.starts_with('.') {
                continue;
            }
            // d_type, no stat, on the usual file systems.
            match item.file_type() {
                Ok(t) if t.is_file() => {}
                _ => continue,
            }
            let arrived = arrival_from_name(&name).unwrap_or_else(|| {
                item.metadata()
                    .ok()
                    .and_then(|m| m.modified().ok())
                    .map_or((0, 0), |t| {
                        let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
                        (d.as_secs(), d.subsec_micros())
                    })
            });
            entries.push(Entry { name, arrived });
        }
        entries.sort_by(|a, b| a.arrived.cmp(&b.arrived).then_with(|| a.name.cmp(&b.name)));
        Ok(entries)
    }

    /// Names that have a sidecar.
    ///
    /// # Errors
    /// `Io` when `state/` cannot be read.
    pub fn names_with_state(&self) -> Result<HashSet<String>, StoreError> {
        let dir = self.dir.join(STATE_DIR);
        let reader = match fs::read_dir(&dir) {
            Ok(r) => r,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(HashSet::new()),
            Err(e) => return Err(io_err("read", &dir)(e)),
        };
        let mut names = HashSet::new();
        for item in reader {
            let item = item.map_err(io_err("read", &dir))?;
            if let Some(name) = item.file_name().to_str()
                && !name.starts_with('.')
            {
                names.insert(name.to_string());
            }
        }
        Ok(names)
    }

    /// The sidecar of `name`, if it has one.
    ///
    /// # Errors
    /// `Io` when it cannot be read, `BadState` when it is not ours.
    pub fn read_state(&self, name: &str) -> Result<Option<State>, StoreError> {
        let path = self.state_path(name);
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err("open", &path)(e)),
        };
        let mut text = Vec::new();
        file.take(MAX_STATE_BYTES)
            .read_to_end(&mut text)
            .map_err(io_err("read", &path))?;
        serde_json::from_slice(&text)
            .map(Some)
            .map_err(|e| StoreError::BadState {
                path,
                why: e.to_string(),
            })
    }

    /// Replaces the sidecar of `name` crash-safely: temporary name, fsync,
    /// rename, fsync of `state/`.
    fn write_state(&self, name: &str, state: &State) -> Result<(), StoreError> {
        let dir = self.dir.join(STATE_DIR);
        let tmp = dir.join(format!(
            ".{name}.{}.{:016x}.tmp",
            std::process::id(),
            crate::random::u64()
        ));
        let path = self.state_path(name);
        let result = (|| {
            let mut file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(STATE_MODE)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&tmp)
                .map_err(io_err("create", &tmp))?;
            let text = serde_json::to_vec(state).map_err(|e| StoreError::BadState {
                path: path.clone(),
                why: e.to_string(),
            })?;
            file.write_all(&text).map_err(io_err("write", &tmp))?;
            file.sync_all().map_err(io_err("fsync", &tmp))?;
            drop(file);
            fs::rename(&tmp, &path).map_err(io_err("rename", &path))?;
            sync_dir(&dir)
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }

    fn remove_state(&self, name: &str) -> Result<(), StoreError> {
        let path = self.state_path(name);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err("remove", &path)(e)),
        }
    }

    /// Takes `name` from `new/` for this process: locked, then moved into
    /// `work/`. `None` when another worker or drain has it, or it is gone.
    ///
    /// # Errors
    /// `Io` when the file system fails (not when the file is simply gone).
    pub fn claim(&self, name: &str) -> Result<Option<Claim<'_>>, StoreError> {
        let from = self.path(Folder::New, name);
        let Some(file) = lock_at(&from)? else {
            return Ok(None);
        };
        let to = self.path(Folder::Work, name);
        match move_noreplace(&from, &to) {
            Ok(()) => Ok(Some(Claim {
                spool: self,
                name: name.to_string(),
                file,
                settled: false,
            })),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err("claim", &from)(e)),
        }
    }

    /// Puts back into `new/` every message in `work/` whose lock is free:
    /// its drain died mid-attempt. Also removes temporary sidecars older
    /// than an hour. Returns how many messages were put back, and the
    /// problems met on the way (one file's trouble does not stop the rest).
    ///
    /// # Errors
    /// `Io` when `work/` cannot be read.
    pub fn recover(&self) -> Result<(usize, Vec<StoreError>), StoreError> {
        let mut count = 0;
        let mut problems = Vec::new();
        for entry in self.list(Folder::Work)? {
            let from = self.path(Folder::Work, &entry.name);
            let _lock = match lock_at(&from) {
                Ok(Some(lock)) => lock,
                Ok(None) => continue, // a live drain is posting it
                Err(e) => {
                    problems.push(e);
                    continue;
                }
            };
            match move_noreplace(&from, &self.path(Folder::New, &entry.name)) {
                Ok(()) => count += 1,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => problems.push(io_err("put back", &from)(e)),
            }
        }
        self.remove_stale_tmp();
        Ok((count, problems))
    }

    fn remove_stale_tmp(&self) {
        // Our own half-written sidecars.
        remove_older_than(&self.dir.join(STATE_DIR), STALE_TMP, |name| {
            name.starts_with(b".") && name.ends_with(b".tmp")
        });
        // Deliveries that died in tmp/: maildir(5) lets readers remove tmp/
        // files not accessed for 36 hours (https://cr.yp.to/proto/maildir.html).
        remove_older_than(&self.dir.join("tmp"), ABANDONED_DELIVERY, |_| true);
    }

    /// Moves `name` from `failed/` back to `new/` with a clean slate (its
    /// sidecar removed first). False when it is not there or locked.
    ///
    /// # Errors
    /// `Io` when the file system fails.
    pub fn requeue(&self, name: &str) -> Result<bool, StoreError> {
        let from = self.path(Folder::Failed, name);
        let Some(_lock) = lock_at(&from)? else {
            return Ok(false);
        };
        // Sidecar first: a crash in between leaves a failed message without
        // its reason, never a requeued one that is given up at once.
        self.remove_state(name)?;
        match move_noreplace(&from, &self.path(Folder::New, name)) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io_err("requeue", &from)(e)),
        }
    }

    /// True when a drain holds `name` in `folder` right now; false when it
    /// is free or gone. Takes the lock for an instant when it is free.
    ///
    /// # Errors
    /// `Io` when the file cannot be opened for another reason.
    pub fn is_locked(&self, folder: Folder, name: &str) -> Result<bool, StoreError> {
        let path = self.path(folder, name);
        let file = match open_message(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(io_err("open", &path)(e)),
        };
        Ok(!try_lock(&file, libc::LOCK_SH).map_err(io_err("lock", &path))?)
    }
}

/// A message this process owns, in `work/`. Dropping it without settling
/// it puts it back into `new/` unchanged.
pub struct Claim<'a> {
    spool: &'a RouteSpool,
    name: String,
    /// Holds the lock until the message has left `work/`.
    file: File,
    settled: bool,
}

impl Claim<'_> {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn route(&self) -> Route {
        self.spool.route
    }

    /// The message's sidecar; a fresh state when it has none.
    ///
    /// # Errors
    /// As [`RouteSpool::read_state`].
    pub fn state(&self) -> Result<State, StoreError> {
        Ok(self.spool.read_state(&self.name)?.unwrap_or_default())
    }

    /// The message's bytes, read from the locked file.
    ///
    /// # Errors
    /// `Io` when reading fails.
    pub fn read_body(&mut self) -> Result<Vec<u8>, StoreError> {
        let len = self.file.metadata().map(|m| m.len()).unwrap_or(0);
        let mut body = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
        self.file
            .read_to_end(&mut body)
            .map_err(io_err("read", &self.spool.path(Folder::Work, &self.name)))?;
        Ok(body)
    }

    /// GitLab has the message: forget its state, then remove it (or keep
    /// it in `cur/` with the Seen flag).
    ///
    /// # Errors
    /// `Io` when the removal fails; the message is then put back in `new/`
    /// and will be posted again.
    pub fn delivered(mut self, keep: bool) -> Result<(), StoreError> {
        // A sidecar that cannot be removed is litter, not a reason to post
        // the message again.
        let _ = self.spool.remove_state(&self.name);
        let from = self.spool.path(Folder::Work, &self.name);
        if keep {
            let to = self
                .spool
                .path(Folder::Cur, &format!("{}{SEEN_SUFFIX}", self.name));
            move_noreplace(&from, &to).map_err(io_err("move to cur/", &from))?;
        } else {
            fs::remove_file(&from).map_err(io_err("remove", &from))?;
        }
        self.settled = true;
        Ok(())
    }

    /// Puts the message back into `new/`, with `state` saved first when
    /// given. The message goes back even when saving the state fails.
    ///
    /// # Errors
    /// The first failure, state or move.
    pub fn release(mut self, state: Option<&State>) -> Result<(), StoreError> {
        let saved = state.map_or(Ok(()), |s| self.spool.write_state(&self.name, s));
        let from = self.spool.path(Folder::Work, &self.name);
        let moved = move_noreplace(&from, &self.spool.path(Folder::New, &self.name))
            .map_err(io_err("release", &from));
        self.settled = moved.is_ok();
        saved.and(moved)
    }

    /// Gives the message up: `state` (with the reason) saved, the message
    /// moved to `failed/`, both folders fsynced so the decision survives a
    /// crash.
    ///
    /// # Errors
    /// The first failure; the message is then put back in `new/`.
    pub fn fail(mut self, state: &State) -> Result<(), StoreError> {
        self.spool.write_state(&self.name, state)?;
        let from = self.spool.path(Folder::Work, &self.name);
        move_noreplace(&from, &self.spool.path(Folder::Failed, &self.name))
            .map_err(io_err("move to failed/", &from))?;
        self.settled = true;
        sync_dir(&self.spool.dir.join(Folder::Failed.as_str()))?;
        sync_dir(&self.spool.dir.join(Folder::Work.as_str()))
    }
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        if !self.settled {
            // Best effort: if this fails too, the file stays in work/ with
            // its lock released when `file` closes, and recovery moves it.
            let from = self.spool.path(Folder::Work, &self.name);
            let _ = move_noreplace(&from, &self.spool.path(Folder::New, &self.name));
        }
    }
}

/// Opens a message read-only without following a symbolic link.
/// Removes the regular files of `dir` whose name passes `wanted` and whose
/// modification time is more than `age` ago. Best effort: a file that
/// cannot be removed is left for the next pass.
fn remove_older_than(dir: &Path, age: Duration, wanted: impl Fn(&[u8]) -> bool) {
    let Ok(reader) = fs::read_dir(dir) else {
        return;
    };
    let now = SystemTime::now();
    for item in reader.flatten() {
        let name = item.file_name();
        if !wanted(name.as_bytes()) {
            continue;
        }
        let old = item
            .metadata()
            .ok()
            .filter(|m| m.is_file())
            .and_then(|m| m.modified().ok())
            .and_then(|t| now.duration_since(t).ok())
            .is_some_and(|elapsed| elapsed > age);
        if old {
            let _ = fs::remove_file(item.path());
        }
    }
}

fn open_message(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
}

/// Opens `path` and takes its exclusive lock without waiting, then checks
/// that the name still points at the locked file. `None` when the file is
/// gone, locked by someone else, moved meanwhile, or not a regular file.
fn lock_at(path: &Path) -> Result<Option<File>, StoreError> {
    let file = match open_message(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err("open", path)(e)),
    };
    if !try_lock(&file, libc::LOCK_EX).map_err(io_err("lock", path))? {
        return Ok(None);
    }
    let held = file.metadata().map_err(io_err("stat", path))?;
    if !held.is_file() {
        return Ok(None);
    }
    match fs::symlink_metadata(path) {
        Ok(now) if now.dev() == held.dev() && now.ino() == held.ino() => Ok(Some(file)),
        Ok(_) => Ok(None),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err("stat", path)(e)),
    }
}

/// flock(2) without waiting: true when taken, false when someone holds it.
fn try_lock(file: &File, kind: libc::c_int) -> io::Result<bool> {
    loop {
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(file.as_raw_fd(), kind | libc::LOCK_NB) } == 0 {
            return Ok(true);
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EWOULDBLOCK) => return Ok(false),
            _ => return Err(err),
        }
    }
}

/// rename(2) that never replaces an existing name. Where the file system
/// lacks RENAME_NOREPLACE, link(2) then unlink(2), which also refuses to
/// replace. If the target already is the same file (a crash between that
/// link and unlink), the old name is just removed.
fn move_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    let c = |p: &Path| CString::new(p.as_os_str().as_bytes()).map_err(io::Error::other);
    let (c_from, c_to) = (c(from)?, c(to)?);
    // SAFETY: valid NUL-terminated paths; renameat2 through syscall(2) so
    // it works with any libc.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            libc::AT_FDCWD,
            c_from.as_ptr(),
            libc::AT_FDCWD,
            c_to.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if rc == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EINVAL | libc::ENOSYS) => match fs::hard_link(from, to) {
            Ok(()) => fs::remove_file(from),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && same_inode(from, to) => {
                fs::remove_file(from)
            }
            Err(e) => Err(e),
        },
        Some(libc::EEXIST) if same_inode(from, to) => fs::remove_file(from),
        _ => Err(err),
    }
}

fn same_inode(a: &Path, b: &Path) -> bool {
    match (fs::symlink_metadata(a), fs::symlink_metadata(b)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// fsync(2) of a directory, so the names in it survive a crash.
fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("fsync", dir))
}

/// Creates `path` as a 0770 directory unless it exists; refuses anything
/// that is not a real directory. `gid`: the group to give a new folder.
fn ensure_dir(path: &Path, gid: Option<u32>) -> Result<(), StoreError> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => return Ok(()),
        Ok(_) => {
            return Err(io_err("open", path)(io::Error::from_raw_os_error(
                libc::ENOTDIR,
            )));
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err("stat", path)(e)),
    }
    match DirBuilder::new().mode(DIR_MODE).create(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return ensure_dir(path, gid),
        Err(e) => return Err(io_err("mkdir", path)(e)),
    }
    let made = fs::symlink_metadata(path).map_err(io_err("stat", path))?;
    let mode = made.permissions().mode();
    if mode & 0o777 != DIR_MODE {
        // The umask took bits away: the umask must not decide who can use
        // the spool. Keep the setgid bit a setgid parent passed on (the
        // packaging makes route folders 2770 so everything stays in the
        // group mailpipe); where setting it is refused (systemd's
        // RestrictSUIDSGID=), plain 0770 still works with the group below.
        let want = DIR_MODE | (mode & SETGID);
        fs::set_permissions(path, fs::Permissions::from_mode(want))
            .or_else(|_| fs::set_permissions(path, fs::Permissions::from_mode(DIR_MODE)))
            .map_err(io_err("chmod", path))?;
    }
    if let Some(gid) = gid
        && made.gid() != gid
    {
        // Best effort: only possible when we are in that group.
        let _ = std::os::unix::fs::chown(path, None, Some(gid));
    }
    if let Some(parent) = path.parent() {
        sync_dir(parent)?;
    }
    Ok(())
}

/// (seconds, microseconds) from a name `deliver` made:
/// `<secs>.M<usec>P<pid>…` (the maildir convention).
fn arrival_from_name(name: &str) -> Option<(u64, u32)> {
    let (secs, rest) = name.split_once('.')?;
    let secs = secs.parse().ok()?;
    let usec = rest
        .strip_prefix('M')
        .map(|r| {
            let digits: String = r.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().unwrap_or(0)
        })
        .unwrap_or(0);
    Some((secs, usec))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arrival_comes_from_maildir_names() {
        let table = [
            (
                "1700000000.M000123P77R00ff.host",
                Some((1_700_000_000, 123)),
            ),
            ("1700000000.P77.host", Some((1_700_000_000, 0))),
            (
                "1700000000.M999999P1Q4F.host:2,S",
                Some((1_700_000_000, 999_999)),
            ),
            ("hello", None),
            ("x.M1", None),
        ];
        for (name, want) in table {
            assert_eq!(arrival_from_name(name), want, "{name}");
        }
    }

    #[test]
    fn state_round_trips_and_tolerates_missing_fields() {
        let s = State {
            attempts: 3,
            first_failure: Some(10),
            last_attempt: Some(20),
            next_attempt: 30,
            last_status: Some(500),
            last_error: "500: boom".into(),
            failed_at: None,
        };
        let text = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<State>(&text).unwrap(), s);
        let old: State = serde_json::from_str(r#"{"attempts":1}"#).unwrap();
        assert_eq!(old.attempts, 1);
        assert_eq!(old.next_attempt, 0);
    }
}
