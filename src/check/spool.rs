//! `mailpipe check`'s spool steps: the layout of `crate::layout` as it is
//! on disk, judged from the trust boundary: the deliver account must be
//! able to write `tmp/` and `new/`, and nothing else.
//!
//! Must not: change anything, follow a link, open an entry (only
//! `fstatat` without following), or run as root: run as root, the steps
//! run in a child that has become the spool root's owner
//! (`privilege::as_spool_owner`).
//! Fails: never; what cannot be checked is itself a finding.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::trust::{Account, shown_path as show};
use super::{Level, Report};
use crate::config::{Config, Route};
use crate::layout::{self, Dir, Folder, Kind};

/// The spool steps (below), as the spool's owner when run as
/// root: root never works on the spool as root.
/// `account` is `user` looked up (`None`: no such user).
pub(super) fn check_spool(
    config: &Config,
    user: &str,
    account: Option<&Account>,
    report: &mut Report,
) {
    let Some(account) = account else {
        report.error(
            "spool",
            "user",
            format!("user {user:?} (who Postfix runs mailpipe as) does not exist"),
            "create it (useradd --system mailpipe) or fix user= in master.cf",
        );
        return;
    };
    let steps = || check(config, account);
    // A missing root is reported by the steps themselves (nothing to become).
    let result = if crate::layout::Dir::open_root(&config.spool.dir).is_err() {
        Ok(steps())
    } else {
        crate::privilege::as_spool_owner(&config.spool.dir, steps)
    };
    match result {
        Ok(findings) => {
            for f in findings {
                let level = match f.level.as_str() {
                    "ok" => Level::Ok,
                    "warning" => Level::Warning,
                    _ => Level::Error,
                };
                report.add(level, "spool", &f.subject, f.message, &f.hint);
            }
        }
        Err(why) => report.error(
            "spool",
            "spool.dir",
            why,
            "give the spool to the drain's account: systemd-tmpfiles --create mailpipe.conf",
        ),
    }
}

/// One finding, in the form the child hands back to `check`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SpoolFinding {
    /// "ok", "warning" or "error".
    pub level: String,
    pub subject: String,
    pub message: String,
    pub hint: String,
}

#[derive(Default)]
struct Out(Vec<SpoolFinding>);

impl Out {
    fn push(&mut self, level: &str, subject: &str, message: String, hint: String) {
        self.0.push(SpoolFinding {
            level: level.into(),
            subject: subject.into(),
            message,
            hint,
        });
    }
    fn ok(&mut self, subject: &str, message: String) {
        self.push("ok", subject, message, String::new());
    }
    fn warn(&mut self, subject: &str, message: String, hint: String) {
        self.push("warning", subject, message, hint);
    }
    fn error(&mut self, subject: &str, message: String, hint: String) {
        self.push("error", subject, message, hint);
    }
}

/// Runs every spool step for `config`, judged against `deliver`.
pub(super) fn check(config: &Config, deliver: &Account) -> Vec<SpoolFinding> {
    let mut out = Out::default();
    let root = &config.spool.dir;
    let subject = "spool.dir";
    let root_dir = match Dir::open_root(root) {
        Ok(d) => d,
        Err(e) => {
            out.error(
                subject,
                format!(
                    "{} is missing ({e}); deliver defers every message",
                    show(root)
                ),
                format!(
                    "install -d -m 2750 -o mailpipe-drain -g mailpipe {0}, or \
                     systemd-tmpfiles --create mailpipe.conf",
                    show(root)
                ),
            );
            return out.0;
        }
    };
    let Ok(meta) = root_dir.meta() else {
        return out.0;
    };
    let mode = meta.mode;
    if mode & 0o002 != 0 {
        out.error(
            subject,
            format!("{} is world-writable (mode {mode:04o})", show(root)),
            format!("chmod o-rwx {}", show(root)),
        );
    } else if mode & 0o004 != 0 {
        out.warn(
            subject,
            format!(
                "{} is world-readable (mode {mode:04o}): mail holds users' keys",
                show(root)
            ),
            format!("chmod o-rwx {}", show(root)),
        );
    }
    let boundary_hint = format!(
        "chown mailpipe-drain:mailpipe {0} && chmod 2750 {0} (or systemd-tmpfiles --create \
         mailpipe.conf)",
        show(root)
    );
    if meta.uid == deliver.uid || deliver.can_write_meta(&meta) {
        out.error(
            subject,
            format!(
                "{} is writable by {} (who runs deliver and reads mail from the Internet): it \
                 could replace the drain's folders",
                show(root),
                deliver.name
            ),
            boundary_hint.clone(),
        );
    } else if meta.uid == 0 {
        out.warn(
            subject,
            format!(
                "{} belongs to root: `mailpipe queue`, `requeue` and `drain` run as root refuse \
                 to work on it (they become the spool's owner)",
                show(root)
            ),
            boundary_hint.clone(),
        );
    } else {
        out.ok(
            subject,
            format!("{} exists, mode {mode:04o}, uid {}", show(root), meta.uid),
        );
    }
    for route in config.routes.iter().map(|r| r.route) {
        check_route(&root_dir, route, meta.uid, deliver, &mut out);
    }
    check_space(config, &mut out);
    check_hardlinks(&mut out);
    out.0
}

fn check_route(root: &Dir, route: Route, owner: u32, deliver: &Account, out: &mut Out) {
    let subject = format!("spool {route}");
    let path = root.path().join(route.as_str());
    let dir = match root.open_sub(route.as_str()) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            out.error(
                &subject,
                format!(
                    "{} is missing; deliver defers until it exists (the drain makes it when it \
                     starts)",
                    show(&path)
                ),
                "systemd-tmpfiles --create mailpipe.conf, or start the drain once".into(),
            );
            return;
        }
        Err(e) => {
            out.error(
                &subject,
                format!(
                    "{} is not a plain folder ({e}); mailpipe never follows a link there",
                    show(&path)
                ),
                "replace it with a real directory on the spool's file system".into(),
            );
            return;
        }
    };
    let errors_before = out.0.iter().filter(|f| f.level == "error").count();
    let route_meta = dir.meta().ok();
    if let Some(m) = &route_meta
        && deliver.can_write_meta(m)
    {
        out.error(
            &subject,
            format!(
                "{} is writable by {}: it could swap work/, state/ or failed/ for links",
                show(&path),
                deliver.name
            ),
            format!(
                "chown mailpipe-drain:mailpipe {0} && chmod 2750 {0}",
                show(&path)
            ),
        );
    }
    let mut devices = Vec::new();
    for folder in Folder::ALL {
        let sub = path.join(folder.as_str());
        match dir.stat_at(folder.as_str()) {
            Ok(Some(m)) if m.kind == Kind::Symlink => out.error(
                &subject,
                format!(
                    "{} is a symbolic link; mailpipe never follows one",
                    show(&sub)
                ),
                "replace it with a real directory on the spool's file system".into(),
            ),
            Ok(Some(m)) if m.kind == Kind::Directory => {
                devices.push(m.dev);
                let writable = deliver.can_write_meta(&m);
                if folder.deliver_writes() && !writable {
                    out.error(
                        &subject,
                        format!("{} is not writable by {}", show(&sub), deliver.name),
                        format!(
                            "chown mailpipe-drain:mailpipe {0} && chmod 2770 {0}",
                            show(&sub)
                        ),
                    );
                } else if !folder.deliver_writes() && writable {
                    out.error(
                        &subject,
                        format!(
                            "{} is writable by {}, who may write only tmp/ and new/",
                            show(&sub),
                            deliver.name
                        ),
                        format!(
                            "chown mailpipe-drain:mailpipe {0} && chmod 2750 {0}",
                            show(&sub)
                        ),
                    );
                } else if !folder.deliver_writes() && m.uid != owner {
                    out.warn(
                        &subject,
                        format!(
                            "{} belongs to uid {}, not to the spool's owner (uid {owner}); the \
                             drain refuses it",
                            show(&sub),
                            m.uid
                        ),
                        format!("chown mailpipe-drain:mailpipe {}", show(&sub)),
                    );
                }
                if folder.deliver_writes() {
                    report_planted(&dir, folder, &subject, &sub, out);
                }
            }
            Ok(Some(m)) => out.error(
                &subject,
                format!("{} is a {}, not a folder", show(&sub), m.kind.describe()),
                "remove it".into(),
            ),
            Ok(None) if folder.deliver_writes() => out.error(
                &subject,
                format!("{} is missing; deliver defers until it exists", show(&sub)),
                "systemd-tmpfiles --create mailpipe.conf, or start the drain once".into(),
            ),
            Ok(None) => {} // the drain makes it when it starts
            Err(e) => out.error(
                &subject,
                format!("{} cannot be examined: {e}", show(&sub)),
                String::new(),
            ),
        }
    }
    if devices.windows(2).any(|w| w[0] != w[1]) {
        out.error(
            &subject,
            format!(
                "{} spans file systems; link(2) from tmp/ to new/ fails (EXDEV)",
                show(&path)
            ),
            "keep the route's folders on one file system".into(),
        );
    }
    if let Ok(tmp) = dir.open_sub(Folder::Tmp.as_str()) {
        let stale = stale_files(&tmp);
        if stale > 0 {
            out.warn(
                &subject,
                format!(
                    "{stale} file(s) in tmp/ are older than {} hours (killed deliveries; a \
                     running drain removes them)",
                    layout::ABANDONED_DELIVERY.as_secs() / 3600
                ),
                format!(
                    "remove them: find {} -type f -mmin +{} -delete",
                    show(&path.join("tmp")),
                    layout::ABANDONED_DELIVERY.as_secs() / 60
                ),
            );
        }
    }
    let errors_now = out.0.iter().filter(|f| f.level == "error").count();
    if errors_now == errors_before {
        out.ok(
            &subject,
            format!(
                "{} usable: {} writes tmp/ and new/ only",
                show(&path),
                deliver.name
            ),
        );
    }
}

/// Entries in `tmp/` or `new/` that are not regular files: never mail
/// (deliver makes regular files only); the drain ignores them.
fn report_planted(dir: &Dir, folder: Folder, subject: &str, path: &Path, out: &mut Out) {
    let Ok(sub) = dir.open_sub(folder.as_str()) else {
        return;
    };
    let Ok(entries) = sub.entries() else {
        return;
    };
    let odd = entries
        .iter()
        .filter(|e| match e.kind {
            Some(k) => k != Kind::Regular,
            None => sub
                .stat_at(&e.name)
                .ok()
                .flatten()
                .is_some_and(|m| m.kind != Kind::Regular),
        })
        .count();
    if odd > 0 {
        out.warn(
            subject,
            format!(
                "{odd} entr(ies) in {} are not regular files (links, FIFOs, devices): not mail, \
                 ignored by the drain; someone with the deliver account's rights made them",
                show(path)
            ),
            format!("inspect and remove them: find {} ! -type f", show(path)),
        );
    }
}

fn stale_files(tmp: &Dir) -> usize {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let cutoff = now.saturating_sub(layout::ABANDONED_DELIVERY.as_secs());
    tmp.entries()
        .map(|entries| {
            entries
                .iter()
                .filter(|e| {
                    tmp.stat_at(&e.name).ok().flatten().is_some_and(|m| {
                        m.kind == Kind::Regular && u64::try_from(m.mtime).unwrap_or(0) < cutoff
                    })
                })
                .count()
        })
        .unwrap_or(0)
}

fn check_space(config: &Config, out: &mut Out) {
    let Ok(st) = rustix::fs::statvfs(&config.spool.dir) else {
        return;
    };
    let free = st.f_bavail.saturating_mul(st.f_frsize);
    let want = 2 * config.limits.max_message_bytes;
    if free < want {
        out.error(
            "free space",
            format!(
                "{} MiB free, less than two maximal messages ({} MiB)",
                free >> 20,
                want >> 20
            ),
            "free space on the spool's file system or lower limits.max_message_bytes".into(),
        );
    } else {
        out.ok("free space", format!("{} MiB free", free >> 20));
    }
    if st.f_favail < 1000 {
        out.warn(
            "free inodes",
            format!("only {} inodes free; every message needs one", st.f_favail),
            "free inodes on the spool's file system".into(),
        );
    }
}

/// With `fs.protected_hardlinks = 0`, the deliver account could hard-link
/// files it cannot write (the drain's sidecars, a secret) into `new/`.
fn check_hardlinks(out: &mut Out) {
    let Ok(value) = std::fs::read_to_string("/proc/sys/fs/protected_hardlinks") else {
        return;
    };
    if value.trim() == "0" {
        out.warn(
            "fs.protected_hardlinks",
            "is 0: the deliver account can hard-link files it does not own into new/".into(),
            "sysctl -w fs.protected_hardlinks=1 (Debian's default; persist it in \
             /etc/sysctl.d/)"
                .into(),
        );
    }
}
