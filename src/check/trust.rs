//! `mailpipe check`'s trust steps: what the account that runs `deliver`
//! (assumed taken over: it parses mail from the Internet) could change or
//! read, by mode bits and owners: the configuration, the secret files and
//! the folders on their way.
//!
//! Must not: read a secret's content or change anything.
//! Fails: never; what cannot be examined is a finding.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::Report;
use crate::config::Config;

/// A local account, for "can this user write there" questions.
pub(super) struct Account {
    pub(super) name: String,
    pub(super) uid: u32,
    pub(super) gids: Vec<u32>,
}

impl Account {
    /// Asks id(1) rather than calling getpwnam(3) in this process (see
    /// `privilege::id_numbers`).
    pub(super) fn lookup(name: &str) -> Option<Account> {
        let id = |flag| crate::privilege::id_numbers(flag, name).ok();
        let uid = *id("-u")?.first()?;
        let gids = id("-G")?;
        Some(Account {
            name: name.to_string(),
            uid,
            gids,
        })
    }

    /// The one permission rule of `check`: true when a file of `owner`,
    /// `group` and `mode` grants this account `bits` (in other's position).
    /// Root is granted everything, as the kernel does; so is the owner,
    /// which may chmod whatever the mode bits say now.
    pub(super) fn grants(&self, owner: u32, group: u32, mode: u32, bits: u32) -> bool {
        if self.uid == 0 || owner == self.uid {
            return true;
        }
        let class = if self.gids.contains(&group) {
            mode >> 3
        } else {
            mode
        };
        class & bits == bits
    }

    /// Write and search permission on a folder.
    fn can_write(&self, dir: &Path) -> bool {
        std::fs::metadata(dir).is_ok_and(|m| self.may(&m, WRITE | SEARCH))
    }

    /// Write and search permission on a folder `fstatat` described.
    pub(super) fn can_write_meta(&self, m: &crate::layout::Meta) -> bool {
        self.grants(m.uid, m.gid, m.mode, WRITE | SEARCH)
    }
}

// ---- The trust boundary: what the deliver account must not control -------

/// The deliver account parses mail from the Internet and must be assumed
/// taken over. It must not be able to change the configuration (which
/// names the spool, GitLab's URL and the secret files that root and the
/// drain then use), nor read or change a route's mail_room secret (which
/// signs the drain's requests to GitLab). Mode bits and owners only, like
/// the spool checks; path names are shown through `status::printable`.
pub(super) fn check_trust(
    config: &Config,
    config_path: &Path,
    account: Option<&Account>,
    report: &mut Report,
) {
    let Some(account) = account else {
        return; // check_spool has said that the user does not exist
    };
    let shown = shown_path(config_path);
    let errors_before = report.errors;
    match std::fs::metadata(config_path) {
        Ok(m) => {
            if account.may(&m, WRITE) {
                report.error(
                    "security",
                    &shown,
                    format!(
                        "writable by {}, the account that parses Internet mail: taken over, it \
                         rewrites what root and the drain read (spool.dir, gitlab.url, secret_file)",
                        account.name
                    ),
                    &format!("chown root:root {shown} && chmod 0644 {shown}"),
                );
            } else if !account.may(&m, READ) || !account.can_search_to(config_path) {
                report.error(
                    "config",
                    &shown,
                    format!(
                        "not readable by {}, who runs deliver: every message is deferred",
                        account.name
                    ),
                    &format!(
                        "chmod 0644 {shown} (or chgrp {} and 0640), with search permission on its folders",
                        account.name
                    ),
                );
            }
        }
        Err(e) => report.error(
            "config",
            &shown,
            format!("cannot be examined: {e}"),
            "check the path",
        ),
    }
    check_folders(config_path, account, &shown, report);
    if report.errors == errors_before {
        report.ok(
            "security",
            &shown,
            format!("{} can read it and cannot change it", account.name),
        );
    }
    for r in &config.routes {
        let Some(secret) = r.secret_file.as_deref() else {
            continue;
        };
        let Ok(m) = std::fs::metadata(secret) else {
            continue; // check_drain reports a secret that cannot be read
        };
        let subject = format!("{}.secret_file", r.route);
        let shown = shown_path(secret);
        let errors_before = report.errors;
        let mode = m.permissions().mode() & 0o7777;
        let hint = format!("chown root:mailpipe-drain {shown} && chmod 0640 {shown}");
        if account.may(&m, WRITE) {
            report.error(
                "security",
                &subject,
                format!(
                    "{shown} is writable by {}, the account that parses Internet mail",
                    account.name
                ),
                &hint,
            );
        }
        if mode & 0o004 != 0 {
            report.error(
                "security",
                &subject,
                format!("{shown} is world-readable (mode {mode:04o}); it signs the drain's requests to GitLab"),
                &hint,
            );
        } else if account.may(&m, READ) && account.can_search_to(secret) {
            report.error(
                "security",
                &subject,
                format!(
                    "{shown} is readable by {}, the account that parses Internet mail: taken over, \
                     it could sign requests to GitLab's mail_room API",
                    account.name
                ),
                &hint,
            );
        }
        check_folders(secret, account, &subject, report);
        if report.errors == errors_before {
            report.ok(
                "security",
                &subject,
                format!(
                    "{shown} (mode {mode:04o}) is out of {}'s reach",
                    account.name
                ),
            );
        }
    }
}

/// An error for each folder on the way to `path` (as written and as
/// resolved) in which `account` could replace the next step: a folder it
/// may write, unless the sticky bit keeps it from renaming what it does not
/// own (like /tmp).
fn check_folders(path: &Path, account: &Account, subject: &str, report: &mut Report) {
    let mut steps: Vec<PathBuf> = vec![absolute(path)];
    if let Ok(real) = std::fs::canonicalize(path)
        && real != steps[0]
    {
        steps.push(real);
    }
    let mut seen = Vec::new();
    for full in steps {
        for child in full.ancestors() {
            let Some(dir) = child.parent() else {
                break;
            };
            if seen.iter().any(|d: &PathBuf| d == dir) {
                continue;
            }
            seen.push(dir.to_path_buf());
            let Ok(m) = std::fs::metadata(dir) else {
                continue;
            };
            if !account.can_write(dir) {
                continue;
            }
            let sticky = m.permissions().mode() & 0o1000 != 0;
            let owns_child = std::fs::symlink_metadata(child).is_ok_and(|c| c.uid() == account.uid);
            if sticky && !owns_child && account.uid != 0 {
                continue;
            }
            let shown_dir = shown_path(dir);
            report.error(
                "security",
                subject,
                format!(
                    "folder {shown_dir} is writable by {}, the account that parses Internet mail: \
                     it can replace {}",
                    account.name,
                    shown_path(child)
                ),
                &format!("chown root:root {shown_dir} && chmod go-w {shown_dir}"),
            );
        }
    }
}

/// A path as `check` prints it: through the one printable filter.
/// A path for a finding: printable, escaped, bounded (spool and trust
/// steps alike).
pub(super) fn shown_path(path: &Path) -> String {
    crate::status::printable(&path.display().to_string(), 300)
}

/// `path` made absolute against the working directory, without resolving
/// links (the folders as written are the ones opened).
fn absolute(path: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()
            .map(|d| d.join(path))
            .unwrap_or_else(|_| path.to_path_buf())
    }
}

/// Permission bits of one class (other's position): read, write, search.
const READ: u32 = 0o4;
const WRITE: u32 = 0o2;
const SEARCH: u32 = 0o1;

impl Account {
    /// True when the mode bits that apply to this account grant `bits`.
    fn may(&self, m: &std::fs::Metadata, bits: u32) -> bool {
        self.grants(m.uid(), m.gid(), m.permissions().mode(), bits)
    }

    /// True when every folder above `path` lets this account pass.
    fn can_search_to(&self, path: &Path) -> bool {
        let full = std::fs::canonicalize(path).unwrap_or_else(|_| absolute(path));
        full.ancestors()
            .skip(1)
            .all(|dir| std::fs::metadata(dir).is_ok_and(|m| self.may(&m, SEARCH)))
    }
}
