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
//! A folder someone else could write or swap is refused (`Unsafe`) before
//! anything is touched.
//!
//! Trust: everything in `new/` and `tmp/` may have been planted by the
//! deliver account (see `crate::layout`). Every folder is opened once with
//! `O_NOFOLLOW` and checked; every entry is opened with
//! `O_NOFOLLOW|O_NONBLOCK` and used only when `fstat` says it is a regular
//! file; sidecars are read with a size cap, and a sidecar that does not
//! parse is reported without quoting it (it may be a link to a secret).
//!
//! Layout per route, below `<spool.dir>/<route>/`:
//!
//! | Folder | Holds | Written by |
//! | --- | --- | --- |
//! | `tmp/`, `new/` | messages being written, messages waiting | deliver (drain renames out of `new/`) |
//! | `work/` | messages a drain is posting right now | drain only |
//! | `failed/` | messages given up (never deleted) | drain only; `requeue` moves them back |
//! | `state/` | one JSON sidecar per message that failed at least once | drain only |
//! | `cur/` | delivered messages, only with `drain.keep_delivered` | drain only |
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
//! Every move is renameat2(RENAME_NOREPLACE) between folder descriptors: a name clash fails instead of
//! destroying a message. The sidecar is written to a temporary name,
//! fsynced, renamed over the old one and the folder fsynced, before the
//! message goes back to `new/`; on success the sidecar is removed before
//! the message, so a crash between the two re-posts the message (the one
//! duplicate the contract allows) instead of leaving a stray sidecar.

use std::collections::HashSet;
use std::fmt;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::config::Route;
use crate::layout::{self, Dir, EntryError, Kind, Meta};
use crate::status::printable;

pub use crate::layout::Folder;

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
    /// A folder that someone other than the drain's account could write or
    /// replace: nothing in it is touched.
    Unsafe { path: PathBuf, why: String },
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::RootMissing { path, err } => write!(
                f,
                "spool directory {} is not usable ({err}); create it or fix spool.dir",
                printable(&path.to_string_lossy(), 300)
            ),
            StoreError::Io { op, path, err } => write!(
                f,
                "spool {op} {} failed: {err}",
                printable(&path.to_string_lossy(), 300)
            ),
            StoreError::BadState { path, why } => write!(
                f,
                "state file {} is unreadable: {why}",
                printable(&path.to_string_lossy(), 300)
            ),
            StoreError::Unsafe { path, why } => write!(
                f,
                "{} {why}; refusing to use it (the packages' layout: \
                 `systemd-tmpfiles --create mailpipe.conf` repairs it; see `mailpipe check`)",
                printable(&path.to_string_lossy(), 300)
            ),
        }
    }
}

impl std::error::Error for StoreError {}

fn io_err(op: &'static str, path: PathBuf) -> impl FnOnce(io::Error) -> StoreError {
    move |err| StoreError::Io { op, path, err }
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

/// The drain's view of one route's Maildir: the route folder and each of
/// its folders, opened once.
#[derive(Debug)]
pub struct RouteSpool {
    route: Route,
    dir: PathBuf,
    folders: [Option<Dir>; 6],
    /// Largest message body the drain will read: `limits.max_message_bytes`
    /// plus what `deliver` may add.
    max_body: u64,
}

fn slot(folder: Folder) -> usize {
    match folder {
        Folder::Tmp => 0,
        Folder::New => 1,
        Folder::Work => 2,
        Folder::Failed => 3,
        Folder::State => 4,
        Folder::Cur => 5,
    }
}

/// Refuses a folder the drain's account cannot trust: not a folder, owned
/// by another account, or (for the drain's own folders) writable by others.
fn vet(dir: &Dir, drain_only: bool) -> Result<(), StoreError> {
    let meta = dir
        .meta()
        .map_err(io_err("stat", dir.path().to_path_buf()))?;
    let euid = layout::euid();
    let why = if drain_only {
        layout::drain_only_reason(&meta, euid)
    } else {
        layout::untrusted_reason(&meta, euid)
    };
    match why {
        Some(why) => Err(StoreError::Unsafe {
            path: dir.path().to_path_buf(),
            why,
        }),
        None => Ok(()),
    }
}

fn open_root(root: &Path) -> Result<Dir, StoreError> {
    let dir = Dir::open_root(root).map_err(|err| StoreError::RootMissing {
        path: root.to_path_buf(),
        err,
    })?;
    vet(&dir, true)?;
    Ok(dir)
}

impl RouteSpool {
    /// Opens `<root>/<route>`, creating the route's folders that are
    /// missing (the layout's modes). The root must exist. `max_message_bytes`:
    /// `limits.max_message_bytes`, the bound on what is read of a message.
    ///
    /// # Errors
    /// `RootMissing` without the root, `Unsafe` when a folder is not the
    /// drain's to trust, `Io` when a folder cannot be created or opened
    /// (a symbolic link is refused).
    pub fn open(
        root: &Path,
        route: Route,
        max_message_bytes: u64,
    ) -> Result<RouteSpool, StoreError> {
        let root_dir = open_root(root)?;
        let path = root.join(route.as_str());
        let route_dir = root_dir
            .ensure_sub(route.as_str(), layout::DRAIN_DIR_MODE)
            .map_err(io_err("open", path.clone()))?;
        vet(&route_dir, true)?;
        let mut folders: [Option<Dir>; 6] = Default::default();
        for folder in Folder::ALL {
            let dir = route_dir
                .ensure_sub(folder.as_str(), folder.mode())
                .map_err(io_err("open", path.join(folder.as_str())))?;
            vet(&dir, !folder.deliver_writes())?;
            folders[slot(folder)] = Some(dir);
        }
        Ok(RouteSpool {
            route,
            dir: path,
            folders,
            max_body: max_message_bytes.saturating_add(layout::BODY_SLACK),
        })
    }

    /// The route's folders that exist, without creating anything, vetted
    /// as [`RouteSpool::open`] does (for `requeue`, which moves files).
    /// `None` without the route folder.
    ///
    /// # Errors
    /// As [`RouteSpool::open`], but a missing folder is no error.
    pub fn existing(root: &Path, route: Route) -> Result<Option<RouteSpool>, StoreError> {
        RouteSpool::existing_as(root, route, true)
    }

    /// The route's folders that exist, for reading only (`queue`, `health`,
    /// the metrics): any account that can enter them may look, since every
    /// folder is still opened without following links and every entry
    /// read through `layout::Dir::open_file`; what could be swapped cannot
    /// lead the reader out of the spool. Nothing may be moved or removed
    /// through it.
    ///
    /// # Errors
    /// `RootMissing` without the root, `Io` when a folder cannot be opened.
    pub fn for_reading(root: &Path, route: Route) -> Result<Option<RouteSpool>, StoreError> {
        RouteSpool::existing_as(root, route, false)
    }

    fn existing_as(
        root: &Path,
        route: Route,
        strict: bool,
    ) -> Result<Option<RouteSpool>, StoreError> {
        let root_dir = if strict {
            open_root(root)?
        } else {
            Dir::open_root(root).map_err(|err| StoreError::RootMissing {
                path: root.to_path_buf(),
                err,
            })?
        };
        let path = root.join(route.as_str());
        let Some(route_dir) = root_dir
            .open_sub_if_exists(route.as_str())
            .map_err(io_err("open", path.clone()))?
        else {
            return Ok(None);
        };
        if strict {
            vet(&route_dir, true)?;
        }
        let mut folders: [Option<Dir>; 6] = Default::default();
        for folder in Folder::ALL {
            let dir = route_dir
                .open_sub_if_exists(folder.as_str())
                .map_err(io_err("open", path.join(folder.as_str())))?;
            if strict && let Some(dir) = &dir {
                vet(dir, !folder.deliver_writes())?;
            }
            folders[slot(folder)] = dir;
        }
        Ok(Some(RouteSpool {
            route,
            dir: path,
            folders,
            max_body: u64::MAX,
        }))
    }

    pub fn route(&self) -> Route {
        self.route
    }

    /// The route folder's path, for messages.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `state/`, opened once: for the drain's other own files (the route's
    /// hold record, `breaker.rs`).
    pub fn state_dir(&self) -> Option<&Dir> {
        self.folder(Folder::State)
    }

    fn folder(&self, folder: Folder) -> Option<&Dir> {
        self.folders[slot(folder)].as_ref()
    }

    fn need(&self, folder: Folder) -> Result<&Dir, StoreError> {
        self.folder(folder).ok_or_else(|| StoreError::Io {
            op: "open",
            path: self.dir.join(folder.as_str()),
            err: io::Error::from(io::ErrorKind::NotFound),
        })
    }

    fn path(&self, folder: Folder, name: &str) -> PathBuf {
        self.dir.join(folder.as_str()).join(name)
    }

    /// The messages in `folder`, oldest first. Names starting with `.` are
    /// skipped (the Maildir rule), and so is anything not a regular file.
    ///
    /// # Errors
    /// `Io` when the folder cannot be read; a missing folder is empty.
    pub fn list(&self, folder: Folder) -> Result<Vec<Entry>, StoreError> {
        let Some(dir) = self.folder(folder) else {
            return Ok(Vec::new());
        };
        let read = io_err("read", self.dir.join(folder.as_str()));
        let mut entries = Vec::new();
        for item in dir.entries().map_err(read)? {
            if item.name.starts_with('.') {
                continue;
            }
            // d_type, no stat, on the usual file systems.
            let meta = match item.kind {
                Some(Kind::Regular) => None,
                Some(_) => continue,
                None => match dir.stat_at(&item.name) {
                    Ok(Some(m)) if m.kind == Kind::Regular => Some(m),
                    _ => continue,
                },
            };
            let arrived = layout::arrival_from_name(&item.name).unwrap_or_else(|| {
                let mtime = meta
                    .or_else(|| dir.stat_at(&item.name).ok().flatten())
                    .map_or(0, |m| m.mtime);
                (u64::try_from(mtime).unwrap_or(0), 0)
            });
            entries.push(Entry {
                name: item.name,
                arrived,
            });
        }
        entries.sort_by(|a, b| a.arrived.cmp(&b.arrived).then_with(|| a.name.cmp(&b.name)));
        Ok(entries)
    }

    /// Names that have a sidecar.
    ///
    /// # Errors
    /// `Io` when `state/` cannot be read.
    pub fn names_with_state(&self) -> Result<HashSet<String>, StoreError> {
        let Some(dir) = self.folder(Folder::State) else {
            return Ok(HashSet::new());
        };
        let entries = dir
            .entries()
            .map_err(io_err("read", self.dir.join(Folder::State.as_str())))?;
        Ok(entries
            .into_iter()
            .filter(|e| !e.name.starts_with('.'))
            .map(|e| e.name)
            .collect())
    }

    /// The sidecar of `name`, if it has one.
    ///
    /// # Errors
    /// `Io` when it cannot be read, `BadState` when it is not ours (not a
    /// regular file, too large, or not our JSON; never quoted).
    pub fn read_state(&self, name: &str) -> Result<Option<State>, StoreError> {
        let Some(dir) = self.folder(Folder::State) else {
            return Ok(None);
        };
        let path = self.path(Folder::State, name);
        let bad = |why: String| StoreError::BadState {
            path: path.clone(),
            why,
        };
        let (file, _) = match dir.open_file(name, Some(layout::MAX_STATE_BYTES)) {
            Ok(f) => f,
            Err(EntryError::Missing) => return Ok(None),
            Err(EntryError::Io(e)) => return Err(io_err("open", path.clone())(e)),
            Err(e) => return Err(bad(e.to_string())),
        };
        let mut text = Vec::new();
        file.take(layout::MAX_STATE_BYTES)
            .read_to_end(&mut text)
            .map_err(io_err("read", path.clone()))?;
        // serde's message can quote the file (a link to a secret would
        // show its digits): say only where it broke.
        serde_json::from_slice(&text).map(Some).map_err(|e| {
            bad(format!(
                "not a sidecar the drain wrote (invalid at line {}, column {})",
                e.line(),
                e.column()
            ))
        })
    }

    /// Replaces the sidecar of `name` crash-safely: temporary name, fsync,
    /// rename, fsync of `state/`.
    fn write_state(&self, name: &str, state: &State) -> Result<(), StoreError> {
        let dir = self.need(Folder::State)?;
        let tmp = format!(
            ".{name}.{}.{:016x}.tmp",
            std::process::id(),
            crate::random::u64()
        );
        let path = self.path(Folder::State, name);
        let tmp_path = self.path(Folder::State, &tmp);
        let result = (|| {
            let mut file = dir
                .create_file(&tmp, layout::STATE_MODE)
                .map_err(io_err("create", tmp_path.clone()))?;
            let text = serde_json::to_vec(state).map_err(|e| StoreError::BadState {
                path: path.clone(),
                why: e.to_string(),
            })?;
            file.write_all(&text)
                .map_err(io_err("write", tmp_path.clone()))?;
            file.sync_all().map_err(io_err("fsync", tmp_path.clone()))?;
            drop(file);
            dir.rename_over(&tmp, name)
                .map_err(io_err("rename", path.clone()))?;
            dir.sync()
                .map_err(io_err("fsync", self.dir.join(Folder::State.as_str())))
        })();
        if result.is_err() {
            let _ = dir.unlink(&tmp);
        }
        result
    }

    fn remove_state(&self, name: &str) -> Result<(), StoreError> {
        match self.folder(Folder::State) {
            None => Ok(()),
            Some(dir) => dir
                .unlink(name)
                .map_err(io_err("remove", self.path(Folder::State, name))),
        }
    }

    /// Takes `name` from `new/` for this process: locked, then moved into
    /// `work/`. `None` when another worker or drain has it, it is gone, or
    /// it is not a regular file.
    ///
    /// # Errors
    /// `Io` when the file system fails (not when the file is simply gone).
    pub fn claim(&self, name: &str) -> Result<Option<Claim<'_>>, StoreError> {
        let new = self.need(Folder::New)?;
        let work = self.need(Folder::Work)?;
        let Some((file, meta)) = self.lock_at(Folder::New, name)? else {
            return Ok(None);
        };
        match new.move_noreplace(name, work, name) {
            Ok(()) => Ok(Some(Claim {
                spool: self,
                name: name.to_string(),
                file,
                size: meta.size,
                settled: false,
            })),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err("claim", self.path(Folder::New, name))(e)),
        }
    }

    /// Opens `folder/name` and takes its exclusive lock without waiting,
    /// then checks that the name still points at the locked file. `None`
    /// when the file is gone, locked by someone else, moved meanwhile, or
    /// not a regular file.
    fn lock_at(&self, folder: Folder, name: &str) -> Result<Option<(File, Meta)>, StoreError> {
        let Some(dir) = self.folder(folder) else {
            return Ok(None);
        };
        let path = || self.path(folder, name);
        let (file, meta) = match dir.open_file(name, None) {
            Ok(f) => f,
            Err(EntryError::Io(e)) => return Err(io_err("open", path())(e)),
            Err(_) => return Ok(None),
        };
        if !try_lock(&file, Lock::Exclusive).map_err(io_err("lock", path()))? {
            return Ok(None);
        }
        match dir.stat_at(name) {
            Ok(Some(now)) if now.dev == meta.dev && now.ino == meta.ino => Ok(Some((file, meta))),
            Ok(_) => Ok(None),
            Err(e) => Err(io_err("stat", path())(e)),
        }
    }

    /// Puts back into `new/` every message in `work/` whose lock is free:
    /// its drain died mid-attempt. Also removes temporary sidecars older
    /// than an hour and abandoned deliveries in `tmp/`. Returns how many
    /// messages were put back, and the problems met on the way (one file's
    /// trouble does not stop the rest).
    ///
    /// # Errors
    /// `Io` when `work/` cannot be read.
    pub fn recover(&self) -> Result<(usize, Vec<StoreError>), StoreError> {
        let mut count = 0;
        let mut problems = Vec::new();
        let (work, new) = (self.need(Folder::Work)?, self.need(Folder::New)?);
        for entry in self.list(Folder::Work)? {
            let _lock = match self.lock_at(Folder::Work, &entry.name) {
                Ok(Some(lock)) => lock,
                Ok(None) => continue, // a live drain is posting it
                Err(e) => {
                    problems.push(e);
                    continue;
                }
            };
            match work.move_noreplace(&entry.name, new, &entry.name) {
                Ok(()) => count += 1,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    problems.push(io_err("put back", self.path(Folder::Work, &entry.name))(e))
                }
            }
        }
        self.remove_stale_tmp();
        Ok((count, problems))
    }

    fn remove_stale_tmp(&self) {
        // Our own half-written sidecars.
        if let Some(state) = self.folder(Folder::State) {
            remove_older_than(state, layout::STALE_STATE_TMP, |name| {
                name.starts_with('.') && name.ends_with(".tmp")
            });
        }
        // Deliveries that died in tmp/: maildir(5) lets readers remove tmp/
        // files not accessed for 36 hours (https://cr.yp.to/proto/maildir.html).
        if let Some(tmp) = self.folder(Folder::Tmp) {
            remove_older_than(tmp, layout::ABANDONED_DELIVERY, |_| true);
        }
    }

    /// Moves `name` from `failed/` back to `new/` with a clean slate (its
    /// sidecar removed first). False when it is not there or locked.
    ///
    /// # Errors
    /// `Io` when the file system fails.
    pub fn requeue(&self, name: &str) -> Result<bool, StoreError> {
        if !layout::is_plain_name(name) {
            return Ok(false);
        }
        let (failed, new) = (self.need(Folder::Failed)?, self.need(Folder::New)?);
        let Some(_lock) = self.lock_at(Folder::Failed, name)? else {
            return Ok(false);
        };
        // The name may be taken in new/ (the deliver account can make any
        // name there): then a fresh one, never a replacement. The sidecar
        // goes after the move; a crash in between leaves a requeued
        // message with its old state, which the next attempt overwrites.
        let mut target = name.to_string();
        for _ in 0..4 {
            match failed.move_noreplace(name, new, &target) {
                Ok(()) => {
                    let _ = self.remove_state(name);
                    return Ok(true);
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    target = layout::unique_name(None);
                }
                Err(e) => return Err(io_err("requeue", self.path(Folder::Failed, name))(e)),
            }
        }
        Err(io_err("requeue", self.path(Folder::Failed, name))(
            io::Error::from(io::ErrorKind::AlreadyExists),
        ))
    }

    /// True when a drain holds `name` in `folder` right now; false when it
    /// is free, gone or not a regular file. Takes the lock for an instant
    /// when it is free.
    ///
    /// # Errors
    /// `Io` when the file cannot be opened for another reason.
    pub fn is_locked(&self, folder: Folder, name: &str) -> Result<bool, StoreError> {
        let Some(dir) = self.folder(folder) else {
            return Ok(false);
        };
        // A file that cannot be opened (its owner, the deliver account,
        // may chmod it) or locked is not held by a drain: counted as
        // orphaned, never a reason to stop listing the spool.
        let Ok((file, _)) = dir.open_file(name, None) else {
            return Ok(false);
        };
        Ok(!try_lock(&file, Lock::Shared).unwrap_or(true))
    }
}

/// A message this process owns, in `work/`. Dropping it without settling
/// it puts it back into `new/` unchanged.
pub struct Claim<'a> {
    spool: &'a RouteSpool,
    name: String,
    /// Holds the lock until the message has left `work/`.
    file: File,
    /// Its size when it was claimed: what is read and posted.
    size: u64,
    settled: bool,
}

impl Claim<'_> {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn route(&self) -> Route {
        self.spool.route
    }

    /// The message's size when it was claimed.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// True when the file is larger than anything `deliver` stores
    /// (`limits.max_message_bytes` plus one header line): not posted.
    pub fn oversized(&self) -> bool {
        self.size > self.spool.max_body
    }

    /// The largest body the drain reads.
    pub fn max_body(&self) -> u64 {
        self.spool.max_body
    }

    /// The message's sidecar; a fresh state when it has none.
    ///
    /// # Errors
    /// As [`RouteSpool::read_state`].
    pub fn state(&self) -> Result<State, StoreError> {
        Ok(self.spool.read_state(&self.name)?.unwrap_or_default())
    }

    /// The message's bytes as a stream from the locked file, at most
    /// [`Claim::size`] of them (the file may grow meanwhile: its writer
    /// is not trusted), from the start.
    ///
    /// # Errors
    /// `Io` when the file cannot be rewound.
    pub fn body(&mut self) -> Result<impl Read + '_, StoreError> {
        use std::io::Seek;
        let size = self.size;
        let path = self.spool.path(Folder::Work, &self.name);
        self.file
            .seek(io::SeekFrom::Start(0))
            .map_err(io_err("read", path))?;
        Ok((&self.file).take(size))
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
        let work = self.spool.need(Folder::Work)?;
        let from = self.spool.path(Folder::Work, &self.name);
        if keep {
            let cur = self.spool.need(Folder::Cur)?;
            let to = format!("{}{}", self.name, layout::SEEN_SUFFIX);
            work.move_noreplace(&self.name, cur, &to)
                .map_err(io_err("move to cur/", from))?;
        } else {
            work.unlink(&self.name).map_err(io_err("remove", from))?;
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
        let moved = self.move_back();
        self.settled = moved.is_ok();
        saved.and(moved)
    }

    fn move_back(&self) -> Result<(), StoreError> {
        let (work, new) = (
            self.spool.need(Folder::Work)?,
            self.spool.need(Folder::New)?,
        );
        work.move_noreplace(&self.name, new, &self.name)
            .map_err(io_err("release", self.spool.path(Folder::Work, &self.name)))
    }

    /// Gives the message up: `state` (with the reason) saved, the message
    /// moved to `failed/`, both folders fsynced so the decision survives a
    /// crash.
    ///
    /// # Errors
    /// The first failure; the message is then put back in `new/`.
    pub fn fail(mut self, state: &State) -> Result<(), StoreError> {
        self.spool.write_state(&self.name, state)?;
        let (work, failed) = (
            self.spool.need(Folder::Work)?,
            self.spool.need(Folder::Failed)?,
        );
        let from = self.spool.path(Folder::Work, &self.name);
        // A name already in failed/ (a copy the deliver account planted in
        // new/ under a failed message's name): a fresh name, never a
        // replacement and never a loop back to new/.
        match work.move_noreplace(&self.name, failed, &self.name) {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => work
                .move_noreplace(&self.name, failed, &layout::unique_name(None))
                .map_err(io_err("move to failed/", from))?,
            other => other.map_err(io_err("move to failed/", from))?,
        }
        self.settled = true;
        failed.sync().map_err(io_err(
            "fsync",
            self.spool.dir.join(Folder::Failed.as_str()),
        ))?;
        work.sync()
            .map_err(io_err("fsync", self.spool.dir.join(Folder::Work.as_str())))
    }
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        if !self.settled {
            // Best effort: if this fails too, the file stays in work/ with
            // its lock released when `file` closes, and recovery moves it.
            let _ = self.move_back();
        }
    }
}

/// Removes the regular files of `dir` whose name passes `wanted` and whose
/// modification time is more than `age` ago. Best effort: a file that
/// cannot be removed is left for the next pass. Never follows a link: a
/// link, FIFO or device is not a regular file and is left alone.
fn remove_older_than(dir: &Dir, age: Duration, wanted: impl Fn(&str) -> bool) {
    let Ok(entries) = dir.entries() else {
        return;
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    for item in entries {
        if !wanted(&item.name) {
            continue;
        }
        let old = dir.stat_at(&item.name).ok().flatten().is_some_and(|m| {
            m.kind == Kind::Regular
                && now.saturating_sub(u64::try_from(m.mtime).unwrap_or(0)) > age.as_secs()
        });
        if old {
            let _ = dir.unlink(&item.name);
        }
    }
}

#[derive(Clone, Copy)]
enum Lock {
    Shared,
    Exclusive,
}

/// flock(2) without waiting: true when taken, false when someone holds it.
fn try_lock(file: &File, kind: Lock) -> io::Result<bool> {
    use rustix::fs::FlockOperation;
    let op = match kind {
        Lock::Shared => FlockOperation::NonBlockingLockShared,
        Lock::Exclusive => FlockOperation::NonBlockingLockExclusive,
    };
    loop {
        match rustix::fs::flock(file.as_fd(), op) {
            Ok(()) => return Ok(true),
            Err(e) if e == rustix::io::Errno::INTR => continue,
            Err(e) if e == rustix::io::Errno::WOULDBLOCK => return Ok(false),
            Err(e) => return Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
