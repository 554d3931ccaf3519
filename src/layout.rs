//! The spool's layout, in one place: folder names, who may write each,
//! their modes, the ages after which leftovers are removed, the Maildir
//! name format and its parser, and the fd-relative, no-follow file
//! operations every reader and writer of the spool uses (deliver, drain,
//! queue, requeue, check, the probe).
//!
//! Must not: follow a symbolic link below the spool root, open anything but
//! a directory or a regular file, open a special file in a way that can
//! block (FIFOs, devices: `O_NONBLOCK`, then `fstat`), read more than a
//! caller's cap, or build a path through a folder an untrusted account
//! could swap: every operation is relative to a folder opened once.
//! Fails: with `io::Error`s; an entry that is a link, FIFO, device or socket
//! is `EntryError::NotRegular`, one over the cap `EntryError::TooLarge`.
//!
//! Trust boundary. The account that runs `deliver` parses mail from the
//! Internet, so it is assumed to be taken over. It may write only
//! `<route>/tmp` and `<route>/new` (through the group `mailpipe`). The
//! spool root, the route folders and `work/ state/ failed/ cur/` belong to
//! the drain's account and are writable by nobody else:
//!
//! | Path | Owner:group | Mode | Written by |
//! | --- | --- | --- | --- |
//! | `<spool.dir>` | mailpipe-drain:mailpipe | 2750 | the drain (route folders) |
//! | `<route>/` | mailpipe-drain:mailpipe | 2750 | the drain |
//! | `<route>/tmp`, `new` | mailpipe-drain:mailpipe | 2770 | deliver (group), the drain |
//! | `<route>/work`, `state`, `failed`, `cur` | mailpipe-drain:mailpipe | 2750 | the drain only |
//! | messages | mailpipe:mailpipe | 0640 | deliver |
//!
//! So the deliver account can plant anything *inside* `tmp/` and `new/`
//! (links, FIFOs, devices, sparse files, hard links to its own files) but
//! can never replace a folder the drain works in. Readers therefore open
//! each folder once from its parent's descriptor with
//! `O_DIRECTORY|O_NOFOLLOW`, check its owner and mode, and use only
//! `openat`/`renameat2`/`unlinkat`/`fstatat` on those descriptors.

use std::fmt;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustix::fs::{self as rfs, AtFlags, FileType, Mode, OFlags, RenameFlags};

/// A folder of a route's Maildir.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Folder {
    /// Messages being written by `deliver`.
    Tmp,
    /// Messages waiting for the drain.
    New,
    /// Messages a drain is posting right now.
    Work,
    /// Messages given up (never deleted).
    Failed,
    /// One JSON sidecar per message that failed at least once.
    State,
    /// Delivered messages, only with `drain.keep_delivered`.
    Cur,
}

impl Folder {
    pub const ALL: [Folder; 6] = [
        Folder::Tmp,
        Folder::New,
        Folder::Work,
        Folder::Failed,
        Folder::State,
        Folder::Cur,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Folder::Tmp => "tmp",
            Folder::New => "new",
            Folder::Work => "work",
            Folder::Failed => "failed",
            Folder::State => "state",
            Folder::Cur => "cur",
        }
    }

    /// True for the two folders the deliver account writes (through the
    /// group); every other folder is the drain's alone.
    pub fn deliver_writes(self) -> bool {
        matches!(self, Folder::Tmp | Folder::New)
    }

    /// The mode the drain gives the folder when it creates it (the
    /// packages' tmpfiles.d sets the same), setgid so that everything
    /// below stays in the group `mailpipe`.
    pub fn mode(self) -> u32 {
        if self.deliver_writes() {
            DELIVER_DIR_MODE
        } else {
            DRAIN_DIR_MODE
        }
    }
}

/// Mode of the spool root and the route folders: the drain's account
/// writes, the group `mailpipe` may only enter.
pub const DRAIN_DIR_MODE: u32 = 0o2750;
/// Mode of `tmp/` and `new/`: the group `mailpipe` (deliver) writes too.
pub const DELIVER_DIR_MODE: u32 = 0o2770;
/// Mode of a folder `deliver` creates itself (only where the admin let it
/// write the spool root, as in a single-account test setup).
pub const DELIVER_CREATED_DIR_MODE: u32 = 0o770;
/// Mode of spooled messages: the drain's group may read them.
pub const MESSAGE_MODE: u32 = 0o640;
/// Mode of the drain's sidecars.
pub const STATE_MODE: u32 = 0o640;

/// Files in `tmp/` older than this were left by a delivery that died
/// (killed by a signal, or by mailpipe's own SIGKILL fallback); the
/// maildir spec (cr.yp.to/proto/maildir.html) lets readers delete them
/// after 36 hours. A live delivery is never that old: `deliver` gives up
/// after its deadline.
pub const ABANDONED_DELIVERY: Duration = Duration::from_secs(36 * 3600);
/// The drain's own half-written sidecars older than this are removed.
pub const STALE_STATE_TMP: Duration = Duration::from_secs(3600);
/// A sidecar is a few hundred bytes; a larger file is not one of ours.
pub const MAX_STATE_BYTES: u64 = 64 * 1024;
/// What `deliver` may add to a message within `limits.max_message_bytes`:
/// one prepended `Delivered-To:` line (at most a 255-character key in a
/// template). A file in `new/` larger than the limit plus this was not
/// written by `deliver`.
pub const BODY_SLACK: u64 = 64 * 1024;
/// Maildir info suffix for `cur/`: version 2, flag Seen (what mail_room
/// left on a delivered IMAP message).
pub const SEEN_SUFFIX: &str = ":2,S";

/// Why an entry could not be opened as a message or sidecar.
#[derive(Debug)]
pub enum EntryError {
    /// Gone (moved by someone else, or never there).
    Missing,
    /// A symbolic link, FIFO, device, socket or folder: not ours.
    NotRegular(&'static str),
    /// Larger than the caller's cap.
    TooLarge {
        size: u64,
        cap: u64,
    },
    Io(io::Error),
}

impl fmt::Display for EntryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EntryError::Missing => write!(f, "gone"),
            EntryError::NotRegular(what) => write!(f, "not a regular file ({what})"),
            EntryError::TooLarge { size, cap } => {
                write!(f, "{size} bytes, more than the {cap} allowed")
            }
            EntryError::Io(e) => write!(f, "{e}"),
        }
    }
}

impl From<rustix::io::Errno> for EntryError {
    fn from(e: rustix::io::Errno) -> Self {
        if e == rustix::io::Errno::NOENT {
            EntryError::Missing
        } else if e == rustix::io::Errno::LOOP {
            // O_NOFOLLOW on a symbolic link.
            EntryError::NotRegular("symbolic link")
        } else {
            EntryError::Io(e.into())
        }
    }
}

/// What `fstat`/`fstatat` says about a file, as much as callers use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    pub kind: Kind,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub dev: u64,
    pub ino: u64,
    pub nlink: u64,
    /// Modification time, seconds since the epoch.
    pub mtime: i64,
}

/// The type of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Regular,
    Directory,
    Symlink,
    Other(&'static str),
}

impl Kind {
    pub fn describe(self) -> &'static str {
        match self {
            Kind::Regular => "regular file",
            Kind::Directory => "directory",
            Kind::Symlink => "symbolic link",
            Kind::Other(what) => what,
        }
    }
}

fn kind_of(t: FileType) -> Kind {
    match t {
        FileType::RegularFile => Kind::Regular,
        FileType::Directory => Kind::Directory,
        FileType::Symlink => Kind::Symlink,
        FileType::Fifo => Kind::Other("FIFO"),
        FileType::Socket => Kind::Other("socket"),
        FileType::CharacterDevice => Kind::Other("character device"),
        FileType::BlockDevice => Kind::Other("block device"),
        _ => Kind::Other("unknown file type"),
    }
}

fn meta_of(st: &rfs::Stat) -> Meta {
    Meta {
        kind: kind_of(FileType::from_raw_mode(st.st_mode)),
        mode: st.st_mode & 0o7777,
        uid: st.st_uid,
        gid: st.st_gid,
        size: u64::try_from(st.st_size).unwrap_or(0),
        dev: st.st_dev,
        ino: st.st_ino,
        nlink: st.st_nlink,
        mtime: st.st_mtime,
    }
}

/// Metadata of an open file.
pub fn fstat(fd: impl AsFd) -> io::Result<Meta> {
    Ok(meta_of(&rfs::fstat(fd)?))
}

/// An entry of a folder, as `readdir` gives it (no `stat`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    pub name: String,
    /// `d_type`; `None` where the file system does not tell.
    pub kind: Option<Kind>,
}

/// A folder opened once; everything below it goes through its descriptor.
#[derive(Debug)]
pub struct Dir {
    fd: OwnedFd,
    /// For messages only: never used to reach anything.
    path: PathBuf,
}

impl Dir {
    /// Opens the spool root, the one path the admin configured (it may be
    /// a symbolic link: resolved once, here).
    pub fn open_root(path: &Path) -> io::Result<Dir> {
        let fd = rfs::openat(
            rfs::CWD,
            path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        Ok(Dir {
            fd,
            path: path.to_path_buf(),
        })
    }

    /// Opens the folder `name` below this one, never through a link.
    /// `ELOOP`/`ENOTDIR` when something else is there.
    pub fn open_sub(&self, name: &str) -> io::Result<Dir> {
        let fd = rfs::openat(
            &self.fd,
            name,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        Ok(Dir {
            fd,
            path: self.path.join(name),
        })
    }

    /// Like [`Dir::open_sub`], `None` when nothing has that name.
    pub fn open_sub_if_exists(&self, name: &str) -> io::Result<Option<Dir>> {
        match self.open_sub(name) {
            Ok(d) => Ok(Some(d)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Opens `name`, creating it first when missing: `mode` (setgid kept
    /// from this folder), this folder fsynced so the new entry survives a
    /// crash. An existing folder is opened as it is.
    pub fn ensure_sub(&self, name: &str, mode: u32) -> io::Result<Dir> {
        if self.make_sub(name, mode)? {
            self.sync()?;
        }
        self.open_sub(name)
    }

    /// Opens `name`, creating it first only when it is missing (one
    /// openat(2) when it exists, the common case for `deliver`): `mode`,
    /// setgid kept from this folder, this folder fsynced.
    pub fn open_or_make_sub(&self, name: &str, mode: u32) -> io::Result<Dir> {
        match self.open_sub(name) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => self.ensure_sub(name, mode),
            other => other,
        }
    }

    /// mkdirat(2) of `name` unless it exists; true when made now. One
    /// system call when it is already there.
    pub fn make_sub(&self, name: &str, mode: u32) -> io::Result<bool> {
        match rfs::mkdirat(&self.fd, name, Mode::from_raw_mode(mode & 0o777)) {
            Ok(()) => {}
            Err(e) if e == rustix::io::Errno::EXIST => return Ok(false),
            Err(e) => return Err(e.into()),
        }
        // The umask must not decide who can use the spool; setgid keeps
        // everything below in the group the packages chose. Where setting
        // setgid is refused (systemd's RestrictSUIDSGID=), the plain mode
        // still works.
        let setgid = self.meta().map_or(0, |m| m.mode & 0o2000);
        let full = Mode::from_raw_mode((mode & 0o777) | setgid | (mode & 0o2000));
        if rfs::chmodat(&self.fd, name, full, AtFlags::empty()).is_err() {
            rfs::chmodat(
                &self.fd,
                name,
                Mode::from_raw_mode(mode & 0o777),
                AtFlags::empty(),
            )?;
        }
        Ok(true)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    pub fn meta(&self) -> io::Result<Meta> {
        fstat(&self.fd)
    }

    /// `fstatat(AT_SYMLINK_NOFOLLOW)`: what is at `name`, links not
    /// followed; `None` when nothing is.
    pub fn stat_at(&self, name: &str) -> io::Result<Option<Meta>> {
        match rfs::statat(&self.fd, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => Ok(Some(meta_of(&st))),
            Err(e) if e == rustix::io::Errno::NOENT => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// The entries, in directory order, without `.`/`..` and without
    /// names that are not UTF-8 (never made by mailpipe). Callers skip
    /// names starting with `.` where the Maildir rule says so.
    pub fn entries(&self) -> io::Result<Vec<DirEntry>> {
        // A fresh descriptor: reading moves the directory offset.
        let fd = rfs::openat(
            &self.fd,
            ".",
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        let mut dir = rfs::Dir::new(fd)?;
        let mut out = Vec::new();
        while let Some(entry) = dir.read() {
            let entry = entry?;
            let bytes = entry.file_name().to_bytes();
            if bytes == b"." || bytes == b".." {
                continue;
            }
            let Ok(name) = std::str::from_utf8(bytes) else {
                continue;
            };
            let kind = match entry.file_type() {
                FileType::Unknown => None,
                t => Some(kind_of(t)),
            };
            out.push(DirEntry {
                name: name.to_string(),
                kind,
            });
        }
        Ok(out)
    }

    /// Opens the regular file `name` read-only: never through a link,
    /// never blocking on a FIFO or device (`O_NONBLOCK`, then `fstat`
    /// before any read), and only when it is at most `cap` bytes (`None`:
    /// any size; the caller reads with its own bound).
    pub fn open_file(&self, name: &str, cap: Option<u64>) -> Result<(File, Meta), EntryError> {
        let fd = rfs::openat(
            &self.fd,
            name,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        let meta = fstat(&fd).map_err(EntryError::Io)?;
        if meta.kind != Kind::Regular {
            return Err(EntryError::NotRegular(meta.kind.describe()));
        }
        if let Some(cap) = cap
            && meta.size > cap
        {
            return Err(EntryError::TooLarge {
                size: meta.size,
                cap,
            });
        }
        // Regular files never block; clear the flag anyway so reads behave
        // as usual.
        let _ = rfs::fcntl_setfl(&fd, OFlags::RDONLY);
        Ok((File::from(fd), meta))
    }

    /// Creates the new file `name` for writing: `O_EXCL|O_NOFOLLOW`, the
    /// exact `mode` whatever the umask.
    pub fn create_file(&self, name: &str, mode: u32) -> io::Result<File> {
        let fd = rfs::openat(
            &self.fd,
            name,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(mode),
        )?;
        rfs::fchmod(&fd, Mode::from_raw_mode(mode))?;
        Ok(File::from(fd))
    }

    /// Moves `name` to `to/to_name` without ever replacing a name there
    /// (renameat2 RENAME_NOREPLACE; link+unlink where the file system lacks
    /// it). If the target already is the same file (a crash between that
    /// link and unlink), the old name is just removed.
    pub fn move_noreplace(&self, name: &str, to: &Dir, to_name: &str) -> io::Result<()> {
        match rfs::renameat_with(&self.fd, name, &to.fd, to_name, RenameFlags::NOREPLACE) {
            Ok(()) => return Ok(()),
            Err(e) if e == rustix::io::Errno::INVAL || e == rustix::io::Errno::NOSYS => {}
            Err(e) if e == rustix::io::Errno::EXIST && self.same_file(name, to, to_name) => {
                return self.unlink(name);
            }
            Err(e) => return Err(e.into()),
        }
        match rfs::linkat(&self.fd, name, &to.fd, to_name, AtFlags::empty()) {
            Ok(()) => self.unlink(name),
            Err(e) if e == rustix::io::Errno::EXIST && self.same_file(name, to, to_name) => {
                self.unlink(name)
            }
            Err(e) => Err(e.into()),
        }
    }

    fn same_file(&self, name: &str, to: &Dir, to_name: &str) -> bool {
        match (self.stat_at(name), to.stat_at(to_name)) {
            (Ok(Some(a)), Ok(Some(b))) => a.dev == b.dev && a.ino == b.ino,
            _ => false,
        }
    }

    /// Replaces `to_name` in this folder by `name` (rename(2)): only for
    /// the drain's own files in its own folders.
    pub fn rename_over(&self, name: &str, to_name: &str) -> io::Result<()> {
        Ok(rfs::renameat(&self.fd, name, &self.fd, to_name)?)
    }

    /// Removes the name `name` (never a folder); a missing name is fine.
    pub fn unlink(&self, name: &str) -> io::Result<()> {
        match rfs::unlinkat(&self.fd, name, AtFlags::empty()) {
            Ok(()) => Ok(()),
            Err(e) if e == rustix::io::Errno::NOENT => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// fsync(2) of the folder, so the names in it survive a crash.
    pub fn sync(&self) -> io::Result<()> {
        Ok(rfs::fsync(&self.fd)?)
    }
}

/// Why a folder may not be trusted by the drain's account.
pub fn untrusted_reason(meta: &Meta, euid: u32) -> Option<String> {
    if meta.kind != Kind::Directory {
        return Some(format!("is a {}, not a folder", meta.kind.describe()));
    }
    if meta.uid != euid && meta.uid != 0 {
        return Some(format!(
            "belongs to uid {}, not to the account running this (uid {euid})",
            meta.uid
        ));
    }
    None
}

/// Why a folder only the drain may write (`work/ state/ failed/ cur/`, the
/// route folder) is unsafe: someone else could write it.
pub fn drain_only_reason(meta: &Meta, euid: u32) -> Option<String> {
    if let Some(why) = untrusted_reason(meta, euid) {
        return Some(why);
    }
    if meta.mode & 0o022 != 0 {
        return Some(format!(
            "mode {:04o} lets others write it (want {:04o})",
            meta.mode, DRAIN_DIR_MODE
        ));
    }
    None
}

/// The effective user id of this process.
pub fn euid() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// A Maildir name that no other delivery can produce: seconds, then
/// microseconds, pid, 64 random bits and the queue id, then the host
/// (cr.yp.to/proto/maildir.html; pid and time alone repeat).
pub fn unique_name(queue_id: Option<&str>) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let queue = queue_id
        .map(|q| {
            q.chars()
                .filter(char::is_ascii_alphanumeric)
                .take(64)
                .collect::<String>()
        })
        .filter(|q| !q.is_empty())
        .map(|q| format!("Q{q}"))
        .unwrap_or_default();
    format!(
        "{}.M{:06}P{}R{:016x}{}.{}",
        now.as_secs(),
        now.subsec_micros(),
        std::process::id(),
        crate::random::u64(),
        queue,
        host_name()
    )
}

/// This host's name, with `/` and `:` escaped as the maildir spec asks.
pub fn host_name() -> String {
    let name = rustix::system::uname();
    let name = name.nodename().to_string_lossy();
    let name = if name.is_empty() { "localhost" } else { &name };
    name.replace('/', "\\057").replace(':', "\\072")
}

/// (seconds, microseconds) from a name [`unique_name`] made:
/// `<secs>.M<usec>P<pid>…` (the maildir convention).
pub fn arrival_from_name(name: &str) -> Option<(u64, u32)> {
    let (secs, rest) = name.split_once('.')?;
    let secs = secs.parse().ok()?;
    let usec = rest
        .strip_prefix('M')
        .map(|r| {
            let digits: String = r.chars().take_while(char::is_ascii_digit).take(9).collect();
            digits.parse().unwrap_or(0)
        })
        .unwrap_or(0);
    Some((secs, usec))
}

/// A name that can only mean an entry of one folder: one path component,
/// not a dotfile (Maildir's rule; the drain's own temporary files). Other
/// bytes are harmless to fd-relative calls; printing them goes through
/// `status::printable`.
pub fn is_plain_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 255 && !name.starts_with('.') && !name.contains('/')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_safe() {
        let a = unique_name(Some("4F/x:1"));
        let b = unique_name(Some("4F/x:1"));
        assert_ne!(a, b);
        assert!(a.contains("Q4Fx1"), "{a}");
        assert!(is_plain_name(&a), "{a}");
        assert!(!a.contains(':'), "{a}");
        let (secs, _) = arrival_from_name(&a).unwrap();
        assert!(secs > 1_700_000_000);
    }

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
    fn plain_names() {
        for bad in ["", ".x", "..", "a/b", "../x", &"x".repeat(256)] {
            assert!(!is_plain_name(bad), "{bad:?}");
        }
        assert!(is_plain_name("1700000000.M1P2R3.host"));
    }

    #[test]
    fn folder_modes_follow_the_boundary() {
        for f in Folder::ALL {
            let writable_by_group = f.mode() & 0o020 != 0;
            assert_eq!(writable_by_group, f.deliver_writes(), "{f:?}");
        }
    }
}
