//! Root never works on the spool as root: `drain`, `queue` and `requeue`
//! started by root become the spool root's owner (the drain's account,
//! `mailpipe-drain` in the packages) before they touch the spool, and
//! `check` runs its spool steps in a child that does the same.
//!
//! Must not: run anything on the spool while still root, become an account
//! mailpipe did not find as the spool root's owner, or keep any root
//! group (supplementary groups are replaced, then `setuid(0)` must fail).
//! Fails: with a `PrivilegeError`; the caller stops before the spool is
//! touched. A spool root owned by root is refused with the command to use.
//!
//! Why the owner: every folder the drain works in belongs to it (see
//! `crate::layout`), and the deliver account cannot change who owns the
//! spool root, so this is an account the admin chose. Its groups come from
//! id(1): the static build must not load NSS modules (see main.rs).

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::status::printable;

/// Why root could not become the spool's owner.
#[derive(Debug)]
pub enum PrivilegeError {
    /// The spool root cannot be read.
    Root(PathBuf, io::Error),
    /// The spool root belongs to root: nobody to become.
    RootOwned(PathBuf),
    /// id(1) did not know the owner.
    Groups(u32, String),
    /// setgroups/setgid/setuid failed, or root could be regained.
    Switch(u32, io::Error),
}

impl fmt::Display for PrivilegeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PrivilegeError::Root(path, e) => write!(
                f,
                "spool directory {} is not usable ({e}); create it or fix spool.dir",
                printable(&path.to_string_lossy(), 300)
            ),
            PrivilegeError::RootOwned(path) => write!(
                f,
                "{} belongs to root, so there is no account to work on it as; mailpipe never \
                 works on the spool as root (the account that runs deliver could steer it). \
                 Give the spool to the drain's account (`systemd-tmpfiles --create \
                 mailpipe.conf` does), or run this as that account: \
                 `runuser -u mailpipe-drain -- mailpipe …`",
                printable(&path.to_string_lossy(), 300)
            ),
            PrivilegeError::Groups(uid, why) => write!(
                f,
                "cannot find the groups of uid {uid}, the spool's owner: {why}"
            ),
            PrivilegeError::Switch(uid, e) => {
                write!(f, "cannot become uid {uid}, the spool's owner: {e}")
            }
        }
    }
}

impl std::error::Error for PrivilegeError {}

/// The account to become.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
}

/// The owner of the spool root, when this process runs as root and must
/// become someone else; `None` when it is not root.
///
/// # Errors
/// See [`PrivilegeError`].
pub fn spool_owner(spool_root: &Path) -> Result<Option<Account>, PrivilegeError> {
    if crate::layout::euid() != 0 {
        return Ok(None);
    }
    let dir = crate::layout::Dir::open_root(spool_root)
        .map_err(|e| PrivilegeError::Root(spool_root.to_path_buf(), e))?;
    let meta = dir
        .meta()
        .map_err(|e| PrivilegeError::Root(spool_root.to_path_buf(), e))?;
    if meta.uid == 0 {
        return Err(PrivilegeError::RootOwned(spool_root.to_path_buf()));
    }
    account(meta.uid).map(Some)
}

/// The numbers `id FLAG -- WHO` prints (`-u`, `-g`, `-G`; `WHO` a name or
/// `+UID`). id(1) sees every NSS source the system is set up with (LDAP,
/// sssd, systemd), and a statically linked mailpipe must not load NSS
/// modules itself; `check` asks it the same way.
///
/// # Errors
/// Why id(1) gave no numbers, printable.
pub fn id_numbers(flag: &str, who: &str) -> Result<Vec<u32>, String> {
    let out = Command::new("id")
        .args([flag, "--", who])
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(printable(String::from_utf8_lossy(&out.stderr).trim(), 200));
    }
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(|n| n.parse().map_err(|_| "id(1) printed no number".to_string()))
        .collect()
}

/// The primary and supplementary groups of `uid`, from id(1).
fn account(uid: u32) -> Result<Account, PrivilegeError> {
    let who = format!("+{uid}");
    let id = |flag| id_numbers(flag, &who).map_err(|why| PrivilegeError::Groups(uid, why));
    let gid = *id("-g")?
        .first()
        .ok_or_else(|| PrivilegeError::Groups(uid, "no primary group".into()))?;
    let groups = id("-G")?;
    Ok(Account { uid, gid, groups })
}

/// Becomes `account` for good: groups, then group, then user, then checks
/// that root cannot be regained.
///
/// # Errors
/// `Switch` when a step fails.
pub fn become_account(account: &Account) -> Result<(), PrivilegeError> {
    let fail = |e: io::Error| PrivilegeError::Switch(account.uid, e);
    let groups: Vec<libc::gid_t> = account.groups.clone();
    // SAFETY: plain system calls with a valid buffer; glibc applies
    // setgid/setuid to every thread of the process.
    unsafe {
        if libc::setgroups(groups.len(), groups.as_ptr()) != 0 {
            return Err(fail(io::Error::last_os_error()));
        }
        if libc::setgid(account.gid) != 0 {
            return Err(fail(io::Error::last_os_error()));
        }
        if libc::setuid(account.uid) != 0 {
            return Err(fail(io::Error::last_os_error()));
        }
        if libc::setuid(0) == 0 || libc::geteuid() == 0 {
            return Err(fail(io::Error::other("root could be regained")));
        }
    }
    Ok(())
}

/// For `drain`, `queue` and `requeue`: when run as root, becomes the spool
/// root's owner; otherwise does nothing.
///
/// # Errors
/// See [`PrivilegeError`].
pub fn leave_root(spool_root: &Path) -> Result<(), PrivilegeError> {
    match spool_owner(spool_root)? {
        Some(account) => become_account(&account),
        None => Ok(()),
    }
}

/// Runs `work` as the spool root's owner and returns what it returned:
/// directly when this process is not root, else in a forked child that
/// becomes the owner first and hands the result back as JSON through a
/// pipe (for `check`, which must stay root for Postfix's tools).
///
/// # Errors
/// Why root could not become the owner, or the child failed; as text,
/// for a finding.
pub fn as_spool_owner<T>(spool_root: &Path, work: impl FnOnce() -> T) -> Result<T, String>
where
    T: serde::Serialize + serde::de::DeserializeOwned,
{
    let owner = spool_owner(spool_root).map_err(|e| e.to_string())?;
    as_account(owner.as_ref(), work)
}

/// [`as_spool_owner`] with the owner already looked up ([`spool_owner`]):
/// `None` runs `work` directly. For a caller that runs work as the owner
/// again and again (`check --send-test` polls the spool), so id(1) runs
/// once, not on every poll.
///
/// # Errors
/// As [`as_spool_owner`], but for the look-up.
pub fn as_account<T>(account: Option<&Account>, work: impl FnOnce() -> T) -> Result<T, String>
where
    T: serde::Serialize + serde::de::DeserializeOwned,
{
    use std::io::{Read, Write};
    use std::os::fd::FromRawFd;
    let Some(account) = account else {
        return Ok(work());
    };
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two descriptors.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(format!("pipe: {}", io::Error::last_os_error()));
    }
    // SAFETY: fresh descriptors we own from here on.
    let (mut reader, writer) = unsafe {
        (
            std::fs::File::from_raw_fd(fds[0]),
            std::fs::File::from_raw_fd(fds[1]),
        )
    };
    // SAFETY: `check` is single-threaded; the child only runs `work` and
    // exits with _exit, never returning into the parent's code.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(format!("fork: {}", io::Error::last_os_error()));
    }
    if pid == 0 {
        drop(reader);
        let mut writer = writer;
        let text = match become_account(account) {
            Ok(()) => serde_json::to_vec(&Ok::<T, String>(work())),
            Err(e) => serde_json::to_vec(&Err::<T, String>(e.to_string())),
        };
        let code = match text.map(|t| writer.write_all(&t)) {
            Ok(Ok(())) => 0,
            _ => 1,
        };
        // SAFETY: ends the child without running the parent's exit code.
        unsafe { libc::_exit(code) };
    }
    drop(writer);
    let mut text = Vec::new();
    let read = Read::by_ref(&mut reader)
        .take(16 << 20)
        .read_to_end(&mut text)
        .map_err(|e| e.to_string());
    let mut status = 0;
    // SAFETY: waits for our own child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    read?;
    serde_json::from_slice::<Result<T, String>>(&text)
        .map_err(|_| "the spool check as the spool's owner ended without an answer".to_string())?
}
