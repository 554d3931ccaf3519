//! The durable Maildir spool: one Maildir per route under `spool.dir`, and
//! the commit sequence that makes a message either wholly in `new/` or not
//! there at all.
//!
//! Must not: parse mail, follow a symbolic link below the spool root,
//! overwrite any file, or create the spool root (it may be an unmounted
//! volume).
//! Fails: with a `SpoolError`; the caller defers (75). Whatever fails, the
//! tmp file is removed, and a `new/` entry whose directory fsync failed is
//! removed too, so nothing unconfirmed is ever left visible.
//!
//! The sequence follows qmail's maildir(5) ("HOW A MESSAGE IS DELIVERED";
//! <https://cr.yp.to/proto/maildir.html>), made durable as Postfix's
//! `local/maildir.c` and Dovecot's `maildir-save.c` do:
//! create `tmp/<unique>` with O_CREAT|O_EXCL|O_NOFOLLOW and an explicit mode,
//! write every byte, fsync, close and check close, link(2) into `new/`
//! (link never replaces an existing name, unlike rename), unlink the tmp
//! name, fsync `new/`. Only then may the caller exit 0.

use std::ffi::CString;
use std::fmt;
use std::io;
use std::os::fd::{AsRawFd, IntoRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicPtr, Ordering};

use crate::config::Route;
use crate::layout::{Dir, Folder};
use rustix::fs::{self as rfs, AtFlags, Mode, OFlags};
use rustix::io::Errno;

/// Mode of spooled files: the drain's group may read them.
const FILE_MODE: libc::mode_t = crate::layout::MESSAGE_MODE;
/// Mode of folders `deliver` creates itself, where the admin let it write
/// the spool root (a single-account setup; the packages create them with
/// the layout's modes, see `crate::layout`).
const DIR_MODE: u32 = crate::layout::DELIVER_CREATED_DIR_MODE;
/// Fresh names tried when one is taken, before giving up.
const NAME_ATTEMPTS: usize = 8;
/// Size of the copy buffer; page-aligned, since an unaligned buffer made
/// the kernel's copies about 2x slower when measured on our build machine
/// (bench/run shows the copy cost).
const COPY_BUFFER: usize = 128 * 1024;
/// Most that one splice(2) or copy_file_range(2) call is asked to move.
const FAST_CHUNK: u64 = 1 << 20;
const PAGE: usize = 4096;

/// A spool failure; `op` names the step for the admin.
#[derive(Debug)]
pub enum SpoolError {
    /// `spool.dir` does not exist or is not a directory.
    RootMissing(PathBuf, io::Error),
    /// A step of the commit sequence failed.
    Io {
        op: &'static str,
        path: PathBuf,
        err: io::Error,
    },
    /// Reading the message from stdin failed.
    Input(io::Error),
    /// The message is larger than the limit.
    TooLarge(u64),
}

impl SpoolError {
    /// True for a full disk or quota: ENOSPC, EDQUOT, EFBIG.
    pub fn is_disk_full(&self) -> bool {
        match self {
            SpoolError::Io { err, .. } => {
                matches!(
                    err.raw_os_error(),
                    Some(libc::ENOSPC | libc::EDQUOT | libc::EFBIG)
                )
            }
            _ => false,
        }
    }
}

impl fmt::Display for SpoolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SpoolError::RootMissing(p, e) => write!(
                f,
                "spool directory {} is not usable ({e}); create it or fix spool.dir",
                p.display()
            ),
            SpoolError::Io { op, path, err } => {
                write!(f, "spool {op} {} failed: {err}", path.display())
            }
            SpoolError::Input(e) => write!(f, "reading the message failed: {e}"),
            SpoolError::TooLarge(max) => {
                write!(
                    f,
                    "message larger than limits.max_message_bytes ({max} bytes)"
                )
            }
        }
    }
}

/// The tmp file being written, for the panic hook and the deadline's
/// signal handler to remove: a leaked C string behind an atomic pointer,
/// because a signal handler may neither lock nor allocate.
static IN_FLIGHT: AtomicPtr<libc::c_char> = AtomicPtr::new(std::ptr::null_mut());

/// Removes the tmp file of a delivery that is being abandoned (panic,
/// deadline). Async-signal-safe: one atomic swap and unlink(2).
pub fn abandon_in_flight() {
    let path = IN_FLIGHT.swap(std::ptr::null_mut(), Ordering::SeqCst);
    if !path.is_null() {
        // SAFETY: a pointer from CString::into_raw, never freed while set;
        // leaked here on purpose (the process is about to exit).
        unsafe { libc::unlink(path) };
    }
}

fn set_in_flight(path: Option<CString>) {
    let new = path.map_or(std::ptr::null_mut(), CString::into_raw);
    let old = IN_FLIGHT.swap(new, Ordering::SeqCst);
    if !old.is_null() {
        // SAFETY: `old` came from CString::into_raw and was swapped out,
        // so no one else can reach it any more.
        drop(unsafe { CString::from_raw(old) });
    }
}

/// The open directories of one route's Maildir.
pub struct Maildir {
    path: PathBuf,
    tmp: Dir,
    new: Dir,
}

impl Maildir {
    /// Opens `<root>/<route>/{tmp,new}`, creating the route's folders
    /// (and `cur/`) when missing. The root itself must exist; it may be a
    /// symbolic link (resolved once, here), nothing below it may be.
    pub fn open(root: &Path, route: Route) -> Result<Maildir, SpoolError> {
        let root_dir =
            Dir::open_root(root).map_err(|e| SpoolError::RootMissing(root.to_path_buf(), e))?;
        let path = root.join(route.as_str());
        let open = |parent: &Dir, name: &str| {
            parent
                .open_or_make_sub(name, DIR_MODE)
                .map_err(|err| SpoolError::Io {
                    op: "open",
                    path: parent.path().join(name),
                    err,
                })
        };
        let route_dir = open(&root_dir, route.as_str())?;
        let tmp = open(&route_dir, Folder::Tmp.as_str())?;
        let new = open(&route_dir, Folder::New.as_str())?;
        // cur/ is the reader's (maildir(5)); made when deliver may, but a
        // delivery never fails for it: in the packaged layout only the
        // drain writes the route folder.
        if route_dir
            .make_sub(Folder::Cur.as_str(), DIR_MODE)
            .unwrap_or(false)
        {
            let _ = route_dir.sync();
        }
        Ok(Maildir { path, tmp, new })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Starts a new message in `tmp/`.
    pub fn create(&self, queue_id: Option<&str>) -> Result<Pending<'_>, SpoolError> {
        let mut last = None;
        for _ in 0..NAME_ATTEMPTS {
            let name = unique_name(queue_id);
            let opened = rfs::openat(
                self.tmp.fd(),
                name.as_str(),
                OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::from_raw_mode(FILE_MODE),
            );
            let file = match opened {
                Ok(file) => file,
                Err(e) if e == Errno::EXIST => {
                    last = Some(e.into());
                    continue;
                }
                Err(e) => return Err(self.io("create", &format!("tmp/{name}"), e.into())),
            };
            set_in_flight(Some(cstring(
                &self.path.join("tmp").join(&name).to_string_lossy(),
            )));
            let pending = Pending {
                maildir: self,
                file: Some(file),
                name,
                linked: None,
                tmp_gone: false,
                written: 0,
            };
            // The umask must not decide who can read the spool.
            if let Some(file) = &pending.file
                && let Err(e) = rfs::fchmod(file, Mode::from_raw_mode(FILE_MODE))
            {
                return Err(pending.io_err("chmod", e.into()));
            }
            fault_point("create");
            return Ok(pending);
        }
        Err(self.io(
            "create",
            "tmp/",
            last.unwrap_or_else(|| io::Error::from_raw_os_error(libc::EEXIST)),
        ))
    }

    fn io(&self, op: &'static str, rel: &str, err: io::Error) -> SpoolError {
        SpoolError::Io {
            op,
            path: self.path.join(rel),
            err,
        }
    }
}

/// A message being written in `tmp/`. Dropping it without `commit` removes
/// the tmp file (and never leaves anything in `new/`).
pub struct Pending<'m> {
    maildir: &'m Maildir,
    file: Option<OwnedFd>,
    name: String,
    /// The name in `new/` once linked, so a failure after the link can
    /// take it back.
    linked: Option<String>,
    /// The tmp name is already unlinked (after a commit).
    tmp_gone: bool,
    written: u64,
}

impl Pending<'_> {
    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Appends `bytes`, every one of them or an error.
    pub fn write_all(&mut self, mut bytes: &[u8]) -> Result<(), SpoolError> {
        while !bytes.is_empty() {
            fault_point("write");
            let Some(file) = &self.file else {
                return Err(self.io_err("write", io::Error::from_raw_os_error(libc::EBADF)));
            };
            let n = match rustix::io::write(file, bytes) {
                Ok(n) => n,
                Err(e) if e == Errno::INTR => continue,
                Err(e) => return Err(self.io_err("write", e.into())),
            };
            if n == 0 {
                return Err(self.io_err("write", io::Error::from(io::ErrorKind::WriteZero)));
            }
            bytes = &bytes[n..];
            self.written += n as u64;
        }
        Ok(())
    }

    /// Copies the rest of `input` into the file until end of input, keeping
    /// the total written at most `max` bytes. Uses splice(2) from a pipe
    /// (what Postfix gives) or copy_file_range(2) from a file, and a plain
    /// read/write loop through a page-aligned buffer where neither works.
    pub fn copy_from(&mut self, input: RawFd, max: u64) -> Result<(), SpoolError> {
        let mut mode = CopyMode::for_input(input);
        let mut moved_fast = 0u64;
        let mut buffer: Option<AlignedBuffer> = None;
        loop {
            // Ask for one byte past the limit, to notice an oversize message.
            let room = (max + 1).saturating_sub(self.written);
            if room == 0 {
                return Err(SpoolError::TooLarge(max));
            }
            // Each chunk ends on a multiple of its size: after the head
            // (16 KiB, already written), unaligned 1 MiB writes split the
            // page cache's large folios and cost a 100 MB delivery ×1.2
            // (bench/RESULTS.md); aligned, it is as fast as the floor.
            let room = room.min(FAST_CHUNK - self.written % FAST_CHUNK) as usize;
            let n = match mode {
                CopyMode::ReadWrite => {
                    let buf = buffer.get_or_insert_with(AlignedBuffer::new);
                    let want = room.min(COPY_BUFFER - (self.written % COPY_BUFFER as u64) as usize);
                    let n =
                        read_some(input, &mut buf.slice()[..want]).map_err(SpoolError::Input)?;
                    self.write_all(&buf.slice()[..n])?;
                    n
                }
                fast => {
                    fault_point("write");
                    // SAFETY: valid fds; null offsets use the file positions.
                    let rc = unsafe {
                        if fast == CopyMode::Splice {
                            libc::splice(
                                input,
                                std::ptr::null_mut(),
                                self.fd(),
                                std::ptr::null_mut(),
                                room,
                                libc::SPLICE_F_MOVE,
                            )
                        } else {
                            libc::copy_file_range(
                                input,
                                std::ptr::null_mut(),
                                self.fd(),
                                std::ptr::null_mut(),
                                room,
                                0,
                            )
                        }
                    };
                    if rc < 0 {
                        let err = io::Error::last_os_error();
                        match err.raw_os_error() {
                            Some(libc::EINTR) => continue,
                            // Not supported for these files: fall back, but
                            // only before the fast path moved any data.
                            Some(libc::EINVAL | libc::EXDEV | libc::ENOSYS | libc::EOPNOTSUPP)
                                if moved_fast == 0 =>
                            {
                                mode = CopyMode::ReadWrite;
                                continue;
                            }
                            _ => return Err(self.classify_copy_error(input, err)),
                        }
                    }
                    let n = rc as usize;
                    self.written += n as u64;
                    moved_fast += n as u64;
                    n
                }
            };
            if n == 0 {
                return Ok(());
            }
            if self.written > max {
                return Err(SpoolError::TooLarge(max));
            }
        }
    }

    /// An error from splice/copy_file_range is the input's or the file's;
    /// a full disk is the file's, a broken input descriptor the input's.
    fn classify_copy_error(&self, input: RawFd, err: io::Error) -> SpoolError {
        // SAFETY: fcntl(F_GETFL) on any number is safe; -1 means it is gone.
        let input_gone = unsafe { libc::fcntl(input, libc::F_GETFL) } < 0;
        let disk = matches!(
            err.raw_os_error(),
            Some(libc::ENOSPC | libc::EDQUOT | libc::EFBIG | libc::EROFS)
        );
        if input_gone && !disk {
            SpoolError::Input(err)
        } else {
            self.io_err("write", err)
        }
    }

    /// Makes the message durable and visible in `new/`; returns its path.
    pub fn commit(mut self) -> Result<PathBuf, SpoolError> {
        fault_point("fsync");
        if let Some(file) = &self.file
            && let Err(e) = rfs::fsync(file)
        {
            // After a failed fsync the page cache may already be clean:
            // never retry and trust it (fsync(2): after a writeback error
            // the dirty pages may be dropped and a second fsync succeed).
            return Err(self.io_err("fsync", e.into()));
        }
        // The file is open until here (fsync above used it); if it were not,
        // defer like any failed close rather than panic.
        let Some(owned) = self.file.take() else {
            return Err(self.io_err("close", io::Error::from_raw_os_error(libc::EBADF)));
        };
        fault_point("close");
        // SAFETY: we own the fd; close(2) reports late NFS errors, and
        // Rust's File drop would ignore them.
        if unsafe { libc::close(owned.into_raw_fd()) } != 0 {
            return Err(self.io_err("close", io::Error::last_os_error()));
        }
        fault_point("link");
        let mut new_name = self.name.clone();
        let mut attempts = 0;
        loop {
            // linkat(2) without AT_SYMLINK_FOLLOW never follows a link, and
            // never replaces a name.
            let linked = rfs::linkat(
                self.maildir.tmp.fd(),
                self.name.as_str(),
                self.maildir.new.fd(),
                new_name.as_str(),
                AtFlags::empty(),
            );
            match linked {
                Ok(()) => {
                    self.linked = Some(new_name.clone());
                    break;
                }
                Err(e) if e == Errno::EXIST && attempts + 1 < NAME_ATTEMPTS => {
                    // Never overwrite: pick another name for new/.
                    attempts += 1;
                    new_name = unique_name(None);
                }
                Err(e) => return Err(self.io_err("link", e.into())),
            }
        }
        fault_point("unlink");
        if let Err(e) = rfs::unlinkat(self.maildir.tmp.fd(), self.name.as_str(), AtFlags::empty()) {
            return Err(self.io_err("unlink", e.into()));
        }
        self.tmp_gone = true;
        set_in_flight(None);
        fault_point("dirsync");
        if let Err(e) = self.maildir.new.sync() {
            return Err(self.io_err("fsync new/", e));
        }
        fault_point("done");
        let path = self
            .maildir
            .path
            .join("new")
            .join(self.linked.take().unwrap_or_default());
        Ok(path)
    }

    fn fd(&self) -> RawFd {
        self.file.as_ref().map_or(-1, |f| f.as_raw_fd())
    }

    fn io_err(&self, op: &'static str, err: io::Error) -> SpoolError {
        self.maildir.io(op, &format!("tmp/{}", self.name), err)
    }
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        // Errors are ignored on purpose: this is cleanup after a failure
        // that is already being reported.
        if !self.tmp_gone {
            let _ = rfs::unlinkat(self.maildir.tmp.fd(), self.name.as_str(), AtFlags::empty());
        }
        if let Some(linked) = &self.linked {
            let _ = rfs::unlinkat(self.maildir.new.fd(), linked.as_str(), AtFlags::empty());
        }
        set_in_flight(None);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CopyMode {
    Splice,
    CopyRange,
    ReadWrite,
}

impl CopyMode {
    fn for_input(fd: RawFd) -> CopyMode {
        // SAFETY: fstat fills a zeroed struct.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        if unsafe { libc::fstat(fd, &mut st) } != 0 {
            return CopyMode::ReadWrite;
        }
        match st.st_mode & libc::S_IFMT {
            libc::S_IFIFO => CopyMode::Splice,
            libc::S_IFREG => CopyMode::CopyRange,
            _ => CopyMode::ReadWrite,
        }
    }
}

/// A page-aligned copy buffer inside an ordinary Vec (no unsafe needed).
struct AlignedBuffer {
    storage: Vec<u8>,
    offset: usize,
}

impl AlignedBuffer {
    fn new() -> AlignedBuffer {
        let storage = vec![0u8; COPY_BUFFER + PAGE];
        let offset = storage.as_ptr().align_offset(PAGE).min(PAGE);
        AlignedBuffer { storage, offset }
    }

    fn slice(&mut self) -> &mut [u8] {
        &mut self.storage[self.offset..self.offset + COPY_BUFFER]
    }
}

/// One read(2), retried on EINTR.
pub fn read_some(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        // SAFETY: valid slice.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

pub use crate::layout::{host_name, unique_name};

fn cstring(s: &str) -> CString {
    // Names are built here and never contain NUL; a path with one cannot
    // name anything, and an empty string fails the syscall cleanly.
    CString::new(
        s.as_bytes()
            .iter()
            .copied()
            .filter(|&b| b != 0)
            .collect::<Vec<u8>>(),
    )
    .unwrap_or_default()
}

/// Debug builds only: `MAILPIPE_FAULT=<step>:<action>` stops the commit
/// sequence at `step` (create, write, fsync, close, link, unlink, dirsync,
/// done) by `exit` (75), `panic`, `abort` or `kill` (SIGKILL), for
/// crash-point tests. Release builds compile this to nothing.
pub fn fault_point(step: &str) {
    #[cfg(debug_assertions)]
    if let Some(spec) = std::env::var_os("MAILPIPE_FAULT") {
        let spec = spec.to_string_lossy();
        let Some((at, action)) = spec.split_once(':') else {
            return;
        };
        if at != step {
            return;
        }
        match action {
            "exit" => std::process::exit(75),
            "panic" => panic!("injected fault at {step}"),
            "abort" => std::process::abort(),
            // SAFETY: raising a signal at ourselves.
            "kill" => unsafe {
                libc::raise(libc::SIGKILL);
            },
            _ => {}
        }
    }
    let _ = step;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_buffer_is_page_aligned() {
        let mut b = AlignedBuffer::new();
        assert_eq!(b.slice().as_ptr() as usize % PAGE, 0);
        assert_eq!(b.slice().len(), COPY_BUFFER);
    }
}
