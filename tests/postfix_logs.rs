//! Where mailpipe's log lines end up, seen in a real Postfix's own log
//! (a private instance with `maillog_file`, so postlogd writes it):
//!
//! - a dropped auto-reply is told apart from a delivery by the text pipe(8)
//!   logs after `status=sent`;
//! - on a host where no syslog daemon listens on /dev/log (Postfix started
//!   inside `unshare -m` with /dev/log covered, so it and every delivery
//!   see none), deliver's line for a spooled message is in Postfix's
//!   maillog_file, exactly where `mailpipe check` (run the same way) says.
//!
//! Needs root, Postfix and util-linux's unshare: `cargo test --test
//! postfix_logs`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod postfix_support;

use postfix_support::*;
use std::process::Command;
use std::time::Duration;

/// Runs the rest of the command line in a private mount namespace where
/// /dev/log is /dev/null (connect fails as with no syslog daemon); when
/// the host has no /dev/log at all, there is nothing to cover.
const NO_SYSLOG: [&str; 8] = [
    "unshare",
    "-m",
    "--propagation",
    "private",
    "sh",
    "-c",
    "if [ -e /dev/log ]; then mount --bind /dev/null /dev/log || exit 1; fi; exec \"$@\"",
    "no-syslog",
];

/// mailpipe's 32-bit key fingerprint, as its log lines show it.
fn fingerprint(key: &str) -> String {
    mailpipe::gitlab::address::Key::new(key)
        .unwrap()
        .fingerprint()
}

fn mailpipe_check(pf: &Instance) -> String {
    let out = Command::new(NO_SYSLOG[0])
        .args(&NO_SYSLOG[1..])
        .arg(mailpipe_binary())
        .arg("check")
        .arg(format!("--config={}", pf.config_file.display()))
        .arg(format!("--postfix-config={}", pf.conf.display()))
        .output()
        .expect("run unshare");
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

#[test]
fn without_syslog_the_line_is_in_postfix_maillog_where_check_says() {
    let pf = Instance::start_wrapped(Variant::Subaddress, &NO_SYSLOG);
    let maillog = pf.dir.join("maillog");

    // What check says, seeing the host as deliver does.
    let said = mailpipe_check(&pf);
    let logging = said
        .lines()
        .find(|l| l.contains("logging"))
        .unwrap_or_else(|| panic!("a logging line:\n{said}"));
    assert!(
        logging.starts_with("warning")
            && logging.contains("no syslog daemon listens")
            && logging.contains(&format!("maillog_file {}", maillog.display())),
        "{logging}"
    );

    // A reply: spooled, and mailpipe's own line is in Postfix's log.
    let key = hex_key();
    let to = incoming(&key);
    let msg = message(
        "Jake <tester@localhost>",
        &to,
        "Re: issue",
        "",
        "reply text\n",
    );
    let qid = pf.send(TESTER, &[&to], &msg);
    let d = pf.wait_status(&qid, "sent", Duration::from_secs(30));
    assert_eq!(d.relay, "mailpipe", "{}", d.line);
    // Postfix keeps 100 characters of it: what its own lines lack.
    let fp = format!("key=fp:{}", fingerprint(&key));
    assert!(
        d.text.starts_with(&format!(
            "delivered via mailpipe service (2.0.0 mailpipe: route=incoming_email \
             kind=create_note {fp} found_in=envelope size="
        )),
        "{}",
        d.line
    );
    assert!(!d.text.contains(&key), "mailpipe masks the key: {}", d.line);
    assert_eq!(pf.spooled("incoming_email").len(), 1);
    let log = std::fs::read_to_string(&maillog).unwrap();
    assert!(
        log.contains(&d.line),
        "the line is in {}",
        maillog.display()
    );
}

#[test]
fn an_auto_reply_drop_is_distinguishable_in_postfix_log() {
    let pf = Instance::start(Variant::Subaddress);
    let to = incoming(&hex_key());
    let auto = message(
        "Vacation <tester@localhost>",
        &to,
        "Out of office",
        "Auto-Submitted: auto-replied\n",
        "I am away.\n",
    );
    let human = message("Jake <tester@localhost>", &to, "Re: x", "", "Fine.\n");
    let q_auto = pf.send(TESTER, &[&to], &auto);
    let q_human = pf.send(TESTER, &[&to], &human);
    let dropped = pf.wait_status(&q_auto, "sent", Duration::from_secs(30));
    let spooled = pf.wait_status(&q_human, "sent", Duration::from_secs(30));
    assert_eq!(
        dropped.text,
        "delivered via mailpipe service (2.0.0 mailpipe: auto-reply dropped \
         (Auto-Submitted: auto-replied))",
        "{}",
        dropped.line
    );
    assert!(!spooled.text.contains("auto-reply"), "{}", spooled.line);
    assert_eq!(pf.spooled("incoming_email").len(), 1);
}
