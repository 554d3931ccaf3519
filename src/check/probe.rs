//! `mailpipe check --send-test`: submit one probe message through Postfix's
//! sendmail(1) to a random reply address and report where it ended: in the
//! spool (then removed again), deferred in Postfix's queue (with Postfix's
//! reason), or nowhere within the wait.
//!
//! Must not: touch any message but the probe, leave the probe in the
//! spool once found, open anything in `new/` but regular files (never a
//! link, never blocking on a FIFO), or work on the spool as root (run as
//! root, the spool step runs as the spool's owner, src/privilege.rs).
//! Fails: into findings; a probe that cannot be sent is an error finding.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use super::report::{Level, Report};
use crate::config::{Config, Route};
use crate::postfix::Postfix;

/// How long to wait for the probe to show up.
const WAIT: Duration = Duration::from_secs(60);

/// Sends the probe and adds what happened to `report`.
pub fn send(config: &Config, postfix: &Postfix, report: &mut Report) {
    let Some(route) = config
        .route(Route::IncomingEmail)
        .filter(|r| r.template.has_key())
    else {
        push(
            report,
            Level::Warning,
            "no %{key} in incoming_email.address; probe skipped".into(),
            "",
        );
        return;
    };
    let token = format!("{:016x}{:016x}", crate::random::u64(), crate::random::u64());
    // A 32-hex reply key: valid for mailpipe, never issued by GitLab.
    let Some(key) = crate::gitlab::address::Key::new(&token) else {
        return;
    };
    let recipient = route.template.render(&key);
    let host = postfix
        .param("myhostname")
        .unwrap_or_else(|_| "localhost".into());
    let message = format!(
        "From: mailpipe check <MAILER-DAEMON@{host}>\nTo: <{recipient}>\nSubject: mailpipe \
         check probe\nX-Mailpipe-Probe: {token}\nAuto-Submitted: no\n\nProbe from mailpipe \
         check --send-test; it is removed from the spool when found.\n"
    );
    let started = Instant::now();
    let since = SystemTime::now() - Duration::from_secs(2);
    let mut cmd = Command::new("sendmail");
    if let Some(dir) = postfix_dir(postfix) {
        cmd.arg("-C").arg(dir);
    }
    let child = cmd
        .args(["-i", "-f", "", "--", &recipient])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn();
    let sent = child.and_then(|mut c| {
        if let Some(mut stdin) = c.stdin.take() {
            stdin.write_all(message.as_bytes())?;
        }
        c.wait_with_output()
    });
    match sent {
        Ok(out) if out.status.success() => {}
        Ok(out) => {
            let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
            push(
                report,
                Level::Error,
                format!("sendmail refused the probe: {err}"),
                "check postfix status",
            );
            return;
        }
        Err(e) => {
            push(
                report,
                Level::Error,
                format!("cannot run sendmail: {e}"),
                "install Postfix",
            );
            return;
        }
    }
    let since = since
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    // The owner once: every poll below would run id(1) again otherwise.
    let owner = match crate::privilege::spool_owner(&config.spool.dir) {
        Ok(owner) => owner,
        Err(why) => {
            push(report, Level::Error, why.to_string(), "");
            return;
        }
    };
    while started.elapsed() < WAIT {
        let found = crate::privilege::as_account(owner.as_ref(), || {
            take_probe(&config.spool.dir, &token, since)
        });
        let found = match found {
            Ok(found) => found,
            Err(why) => {
                push(report, Level::Error, why, "");
                return;
            }
        };
        if let Some(name) = found {
            let ms = started.elapsed().as_millis();
            push(
                report,
                Level::Ok,
                format!(
                    "probe spooled in {ms} ms ({}/new/{}), then removed",
                    Route::IncomingEmail.as_str(),
                    crate::status::printable(&name, 200)
                ),
                "",
            );
            return;
        }
        if let Some(reason) = deferred_reason(postfix, &recipient) {
            push(
                report,
                Level::Error,
                format!("probe deferred by Postfix: {reason}"),
                "fix what the reason says, then postqueue -f",
            );
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    push(
        report,
        Level::Error,
        format!(
            "probe to {} not in the spool after {} s",
            route.template.address,
            WAIT.as_secs()
        ),
        "look for the probe's queue id in the mail log (status=bounced or deferred)",
    );
}

fn push(report: &mut Report, level: Level, message: String, hint: &str) {
    report.add(level, "probe", "--send-test", message, hint);
}

fn postfix_dir(postfix: &Postfix) -> Option<PathBuf> {
    postfix.config_dir().map(Path::to_path_buf)
}

/// Finds the spooled probe carrying `token` in `incoming_email/new/`
/// (regular files newer than `since`, seconds since the epoch), removes it
/// and returns its name. fd-relative and no-follow throughout.
fn take_probe(root: &Path, token: &str, since: i64) -> Option<String> {
    use crate::layout::{Dir, Folder, Kind};
    let needle = format!("X-Mailpipe-Probe: {token}");
    let new = Dir::open_root(root)
        .and_then(|r| r.open_sub(Route::IncomingEmail.as_str()))
        .and_then(|r| r.open_sub(Folder::New.as_str()))
        .ok()?;
    for entry in new.entries().ok()? {
        if entry.name.starts_with('.') || entry.kind.is_some_and(|k| k != Kind::Regular) {
            continue;
        }
        let Ok((mut file, meta)) = new.open_file(&entry.name, None) else {
            continue;
        };
        if meta.mtime < since {
            continue;
        }
        let mut head = vec![0u8; 8192];
        let n = file.read(&mut head).unwrap_or(0);
        if String::from_utf8_lossy(&head[..n]).contains(&needle) {
            let _ = new.unlink(&entry.name);
            return Some(entry.name);
        }
    }
    None
}

/// Postfix's delay reason for a queued message to `recipient`, from
/// `postqueue -j` (one JSON object per queued message).
fn deferred_reason(postfix: &Postfix, recipient: &str) -> Option<String> {
    let mut cmd = Command::new("postqueue");
    if let Some(dir) = postfix_dir(postfix) {
        cmd.arg("-c").arg(dir);
    }
    let out = cmd.arg("-j").output().ok()?;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        for r in v["recipients"].as_array().into_iter().flatten() {
            if r["address"].as_str() == Some(recipient)
                && let Some(reason) = r["delay_reason"].as_str()
            {
                return Some(reason.to_string());
            }
        }
    }
    None
}
