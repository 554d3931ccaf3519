//! `mailpipe policy` in front of a real Postfix (3.7 on Debian 12): private
//! instances built from the shipped `postfix/` files plus the shipped
//! `postfix/main.policy.cf`, the real binary as the policy service on
//! `private/mailpipe-policy` (run as the postfix user, which owns that
//! folder; under systemd the socket unit creates it), real SMTP on
//! 127.0.0.1.
//!
//! Needs root and Postfix, like tests/postfix_e2e.rs:
//! `cargo test --test policy_e2e`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod postfix_support;

use postfix_support::*;
use std::fs;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const SECS: fn(u64) -> Duration = Duration::from_secs;

fn ids(user: &str) -> (u32, u32) {
    let num = |flag: &str| -> u32 {
        let out = Command::new("id").arg(flag).arg(user).output().unwrap();
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
    };
    (num("-u"), num("-g"))
}

/// The policy service of one instance; killed when dropped.
struct Policy {
    child: Option<Child>,
    log: PathBuf,
    socket: PathBuf,
}

impl Policy {
    /// Starts `mailpipe policy` on the instance's private/ socket with
    /// `config`, as the postfix user, and waits until it answers.
    fn start(pf: &Instance, config: &std::path::Path) -> Policy {
        static STARTS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = STARTS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let log = pf.dir.join(format!("policy-{n}.log"));
        let (uid, gid) = ids("postfix");
        let stderr = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let socket = pf.policy_socket();
        let child = Command::new(pf.dir.join("bin/mailpipe"))
            .arg("policy")
            .arg(format!("--config={}", config.display()))
            .arg(format!("--listen=unix:{}", socket.display()))
            .uid(uid)
            .gid(gid)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("start mailpipe policy");
        let p = Policy {
            child: Some(child),
            log,
            socket,
        };
        wait_for("the policy socket", SECS(20), || {
            std::os::unix::net::UnixStream::connect(&p.socket)
                .ok()
                .map(|_| ())
        });
        p
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().unwrap().id();
        Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(pid.to_string())
            .status()
            .unwrap();
    }
}

impl Drop for Policy {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("policy service log:\n{}", self.log());
        }
        self.kill();
    }
}

fn start(variant: Variant) -> (Instance, Policy) {
    let pf = Instance::start_opts(variant, true);
    let policy = Policy::start(&pf, &pf.config_file);
    (pf, policy)
}

/// A random string of `n` hex digits.
fn hex(n: usize) -> String {
    let mut s = String::new();
    while s.len() < n {
        s.push_str(&hex_key());
    }
    s.truncate(n);
    s
}

/// What `mailpipe explain` gives as the reason for this recipient (the text
/// `deliver` bounces with).
fn explain(pf: &Instance, recipient: &str) -> serde_json::Value {
    let out = Command::new(pf.dir.join("bin/mailpipe"))
        .arg("explain")
        .arg(format!("--config={}", pf.config_file.display()))
        .arg(format!("--recipient={recipient}"))
        .stdin(fs::File::open("/dev/null").unwrap())
        .output()
        .unwrap();
    serde_json::from_slice(&out.stdout).expect("explain prints JSON")
}

fn explain_msg(pf: &Instance, recipient: &str, msg: &[u8]) -> serde_json::Value {
    use std::io::Write;
    let mut child = Command::new(pf.dir.join("bin/mailpipe"))
        .arg("explain")
        .arg(format!("--config={}", pf.config_file.display()))
        .arg(format!("--recipient={recipient}"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(msg).unwrap();
    let out = child.wait_with_output().unwrap();
    serde_json::from_slice(&out.stdout).expect("explain prints JSON")
}

fn count(log: &str, needle: &str) -> usize {
    log.lines().filter(|l| l.contains(needle)).count()
}

fn mailpipe_runs(pf: &Instance) -> usize {
    count(&pf.log(), "relay=mailpipe")
}

// ---------------------------------------------------------------------------

#[test]
fn random_keys_get_550_during_the_session_and_nothing_else_happens() {
    let (pf, _policy) = start(Variant::Subaddress);
    // Keys the recipient regexp lets in but no handler accepts, and keys
    // that break the key alphabet.
    let keys: Vec<String> = (0..500)
        .map(|i| match i % 4 {
            0 => format!("nokey-{}.x", hex(12)),
            1 => format!("{}-{}", hex(6), hex(6)),
            2 => format!("bad..{}", hex(10)),
            _ => format!("x-y-{}-z", hex(8)),
        })
        .collect();
    let replies: Vec<String> = std::thread::scope(|s| {
        let workers: Vec<_> = keys
            .chunks(63)
            .map(|chunk| {
                let pf = &pf;
                s.spawn(move || {
                    let mut replies = Vec::new();
                    // Under smtpd_soft_error_limit (10) per session, so
                    // Postfix never slows the test down.
                    for few in chunk.chunks(8) {
                        let mut c = pf.smtp();
                        let r = c.cmd("MAIL FROM:<spammer@client.e2e.test>");
                        assert!(r.starts_with("250"), "{r}");
                        for k in few {
                            replies.push(c.cmd(&format!("RCPT TO:<{}>", incoming(k))));
                        }
                        c.quit();
                    }
                    replies
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect()
    });
    assert_eq!(replies.len(), 500);
    for r in &replies {
        assert!(r.starts_with("550 5.1.1 "), "{r}");
        assert!(r.contains("Recipient address rejected: mailpipe: "), "{r}");
    }
    // The text is the one deliver would bounce with.
    for k in &keys[..4] {
        let reason = explain_msg(&pf, &incoming(k), b"Subject: x\n\nbody\n")["reason"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(
            replies.iter().any(|r| r.ends_with(&reason)),
            "no reply ends with deliver's reason {reason:?}: {:?}",
            &replies[..4]
        );
    }
    std::thread::sleep(SECS(2));
    let log = pf.log();
    assert_eq!(count(&log, "NOQUEUE: reject: RCPT from"), 500);
    assert_eq!(mailpipe_runs(&pf), 0, "deliver ran");
    assert!(pf.bounces().is_empty(), "a DSN was sent");
    assert!(!log.contains("sender non-delivery notification"));
    assert!(pf.mailq().contains("Mail queue is empty"), "{}", pf.mailq());
    assert!(pf.spooled("incoming_email").is_empty());
}

#[test]
fn valid_keys_auto_replies_and_service_desk_pass_unchanged() {
    let (pf, _policy) = start(Variant::Subaddress);
    let keys = [
        hex_key(),
        "rs-0000000000000000000000abc-rs".to_string(),
        "gitlab-org-gitlab-ce-20-Author_Token12345678-issue".to_string(),
        "gitlab-org-gitlab-ce-20-Author_Token12345678-issue-34".to_string(),
        "gitlab-org-gitlab-ce-20-Author_Token12345678-merge-request".to_string(),
        format!("{}-unsubscribe", hex_key()),
        "59D8DF8370B7E95C5A49FBF86AEB2C93".to_string(),
    ];
    let mut ids = Vec::new();
    for k in &keys {
        let to = incoming(k);
        let msg = message("alice@client.e2e.test", &to, "Re: x", "", "hi\n");
        ids.push(pf.send("alice@client.e2e.test", &[&to], &msg));
    }
    let sd = format!("contact+gitlab-org-gitlab-ce-20-issue-@{DOMAIN}");
    let msg = message("customer@client.e2e.test", &sd, "Help", "", "please\n");
    let sd_id = pf.send("customer@client.e2e.test", &[&sd], &msg);
    // An auto-reply to a valid key: accepted at RCPT, dropped by deliver.
    let to = incoming(&hex_key());
    let auto = message(
        "bot@client.e2e.test",
        &to,
        "Out of office",
        "Auto-Submitted: auto-replied\n",
        "away\n",
    );
    let auto_id = pf.send("", &[&to], &auto);
    for id in &ids {
        let d = pf.wait_status(id, "sent", SECS(60));
        assert_eq!(d.relay, "mailpipe", "{}", d.line);
    }
    pf.wait_status(&sd_id, "sent", SECS(60));
    pf.wait_status(&auto_id, "sent", SECS(60));
    wait_for("every message spooled", SECS(30), || {
        (pf.spooled("incoming_email").len() == keys.len()).then_some(())
    });
    assert_eq!(pf.spooled("service_desk_email").len(), 1);
    assert!(pf.bounces().is_empty());
    // explain shows what the policy answers.
    let v = explain(&pf, &incoming(&keys[0]));
    assert_eq!(v["policy"], "DUNNO", "{v}");
    let v = explain(&pf, &incoming("not-a-key"));
    assert!(
        v["policy"]
            .as_str()
            .unwrap()
            .starts_with("550 5.1.1 mailpipe: "),
        "{v}"
    );
}

#[test]
fn dedicated_address_replies_pass() {
    let (pf, _policy) = start(Variant::Dedicated);
    let key = hex_key();
    let to = format!("incoming@{DOMAIN}");
    let msg = message(
        "alice@client.e2e.test",
        &to,
        "Re: Fix it",
        // As mail clients send it: the thread's ids, GitLab's among them
        // (GitLab reads References only with two or more ids).
        &format!(
            "References: <thread-start@gitlab.example.com> <reply-{key}@gitlab.example.com>\n"
        ),
        "ok\n",
    );
    let id = pf.send("alice@client.e2e.test", &[&to], &msg);
    pf.wait_status(&id, "sent", SECS(60));
    let files = wait_for("spooled", SECS(30), || {
        let f = pf.spooled("incoming_email");
        (!f.is_empty()).then_some(f)
    });
    assert_eq!(files.len(), 1);
}

#[test]
fn size_over_the_limit_gets_552_at_rcpt() {
    let (pf, policy) = start(Variant::Subaddress);
    // Postfix's own message_size_limit (50000000) stays above mailpipe's.
    let text = fs::read_to_string(&pf.config_file)
        .unwrap()
        .replace("max_message_bytes = 52428800", "max_message_bytes = 100000");
    fs::write(&pf.config_file, text).unwrap();
    // The service re-reads a changed file within a second.
    wait_for("the new limit", SECS(10), || {
        (count(&policy.log(), "loaded") >= 2).then_some(())
    });
    let to = incoming(&hex_key());
    let reply = wait_for("a 552", SECS(10), || {
        let mut c = pf.smtp();
        let r = c.cmd("MAIL FROM:<alice@client.e2e.test> SIZE=200000");
        assert!(r.starts_with("250"), "{r}");
        let r = c.cmd(&format!("RCPT TO:<{to}>"));
        c.quit();
        r.starts_with("552").then_some(r)
    });
    assert!(reply.starts_with("552 5.3.4 "), "{reply}");
    assert!(reply.contains("mailpipe: "), "{reply}");
    // Below the limit, or without SIZE=, the same address is accepted.
    let mut c = pf.smtp();
    assert!(
        c.cmd("MAIL FROM:<alice@client.e2e.test> SIZE=1000")
            .starts_with("250")
    );
    assert!(c.cmd(&format!("RCPT TO:<{to}>")).starts_with("250"));
    c.quit();
    assert_eq!(mailpipe_runs(&pf), 0);
}

#[test]
fn a_loop_to_one_service_desk_key_is_braked_and_others_pass() {
    let (pf, _policy) = start(Variant::Subaddress);
    let sd = format!("contact+acme-helpdesk-7-issue-@{DOMAIN}");
    let mut accepted = Vec::new();
    let mut deferred = 0;
    for i in 0..100 {
        let msg = message(
            "autoresponder@client.e2e.test",
            &sd,
            &format!("Re: Thank you for your message {i}"),
            "",
            "We got your mail.\n",
        );
        let mut c = pf.smtp();
        let (r, replies) = c.send_detailed("autoresponder@client.e2e.test", &[&sd], &msg);
        c.quit();
        match r {
            SendResult::Queued(id) => {
                assert_eq!(deferred, 0, "accepted after a 450: {replies:?}");
                accepted.push(id);
            }
            SendResult::Refused(r) => {
                assert!(r.starts_with("450 4.7.1 "), "{r}");
                assert!(r.contains("mailpipe: too many messages"), "{r}");
                deferred += 1;
            }
        }
    }
    // The default burst per (sender, key) is 20 ([policy] sender_key_burst).
    assert_eq!(accepted.len(), 20, "accepted");
    assert_eq!(deferred, 80);
    // Another sender to the same key, and the same sender to another key.
    let msg = message("customer@client.e2e.test", &sd, "Help", "", "please\n");
    let other = pf.send("customer@client.e2e.test", &[&sd], &msg);
    let sd2 = format!("contact+acme-other-8-issue-@{DOMAIN}");
    let msg = message("autoresponder@client.e2e.test", &sd2, "Thanks", "", "x\n");
    let other_key = pf.send("autoresponder@client.e2e.test", &[&sd2], &msg);
    for id in accepted.iter().chain([&other, &other_key]) {
        pf.wait_status(id, "sent", SECS(60));
    }
    assert_eq!(pf.spooled("service_desk_email").len(), 22);
    assert!(pf.bounces().is_empty());
}

#[test]
fn fails_open_when_killed_stopped_or_misconfigured() {
    let (pf, mut policy) = start(Variant::Subaddress);
    let bad = incoming("not-a-key");
    let good = incoming(&hex_key());
    let send_both = |pf: &Instance| {
        let msg = message("alice@client.e2e.test", &bad, "x", "", "x\n");
        let bad_id = pf.send("alice@client.e2e.test", &[&bad], &msg);
        let msg = message("alice@client.e2e.test", &good, "x", "", "x\n");
        let good_id = pf.send("alice@client.e2e.test", &[&good], &msg);
        (bad_id, good_id)
    };
    // Running: the bad key is refused at RCPT.
    assert!(
        pf.smtp()
            .rcpt_reply("alice@client.e2e.test", &bad)
            .starts_with("550")
    );

    // Killed: mail is accepted and deliver decides (bounce / spool).
    policy.kill();
    let (bad_id, good_id) = send_both(&pf);
    let d = pf.wait_status(&bad_id, "bounced", SECS(60));
    assert_eq!(d.dsn, "5.1.1", "{}", d.line);
    pf.wait_status(&good_id, "sent", SECS(60));

    // Stopped (answers nothing): Postfix times out and goes on with DUNNO.
    let mut policy = Policy::start(&pf, &pf.config_file);
    policy.signal("STOP");
    let started = Instant::now();
    let msg = message("alice@client.e2e.test", &good, "x", "", "x\n");
    let id = pf.send("alice@client.e2e.test", &[&good], &msg);
    assert!(
        started.elapsed() >= SECS(5),
        "no timeout? {:?}",
        started.elapsed()
    );
    pf.wait_status(&id, "sent", SECS(60));
    policy.signal("CONT");
    policy.kill();

    // A config the service cannot read: DUNNO, logged once.
    let unreadable = pf.dir.join("etc/mailpipe/policy-only.toml");
    fs::copy(&pf.config_file, &unreadable).unwrap();
    fs::set_permissions(
        &unreadable,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let policy = Policy::start(&pf, &unreadable);
    let (bad_id, good_id) = send_both(&pf);
    let (bad2, _) = send_both(&pf);
    pf.wait_status(&bad_id, "bounced", SECS(60));
    pf.wait_status(&bad2, "bounced", SECS(60));
    pf.wait_status(&good_id, "sent", SECS(60));
    assert_eq!(
        count(&policy.log(), "config unusable"),
        1,
        "{}",
        policy.log()
    );
    drop(policy);

    // The shared config broken while running: the service answers DUNNO,
    // deliver defers (4.3.5) and Postfix keeps the message.
    let policy = Policy::start(&pf, &pf.config_file);
    let original = fs::read_to_string(&pf.config_file).unwrap();
    fs::write(&pf.config_file, original.replace("[spool]", "[spool\n")).unwrap();
    wait_for("the service to see the broken file", SECS(10), || {
        policy.log().contains("config unusable").then_some(())
    });
    let msg = message("alice@client.e2e.test", &bad, "x", "", "x\n");
    let id = pf.send("alice@client.e2e.test", &[&bad], &msg);
    let d = pf.wait_status(&id, "deferred", SECS(60));
    assert_eq!(d.dsn, "4.3.5", "{}", d.line);
    fs::write(&pf.config_file, original).unwrap();
    // postqueue -f again until the retry has run: one flush can be taken
    // while qmgr still holds the deferred message (seen on a loaded host).
    let start = std::time::Instant::now();
    while !pf.deliveries(&id).iter().any(|d| d.status == "bounced") {
        assert!(
            start.elapsed() < SECS(90),
            "no bounce after the fix:\n{}",
            pf.log()
        );
        pf.flush();
        std::thread::sleep(SECS(3));
    }
}

#[test]
fn check_verifies_the_policy_wiring() {
    let (pf, mut policy) = start(Variant::Subaddress);
    let check = |pf: &Instance| -> Vec<serde_json::Value> {
        let out = Command::new(pf.dir.join("bin/mailpipe"))
            .arg("check")
            .arg(format!("--config={}", pf.config_file.display()))
            .arg(format!("--postfix-config={}", pf.conf.display()))
            .arg("--format=json")
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["findings"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|f| f["check"] == "policy")
            .cloned()
            .collect()
    };
    let findings = check(&pf);
    assert!(findings.len() >= 5, "{findings:#?}");
    for f in &findings {
        assert_eq!(f["level"], "ok", "{findings:#?}");
    }
    policy.kill();
    let findings = check(&pf);
    let down = findings
        .iter()
        .find(|f| f["subject"].as_str().unwrap().starts_with("service "))
        .unwrap();
    assert_eq!(down["level"], "warning", "{findings:#?}");
    assert!(down["message"].as_str().unwrap().contains("not answering"));
    run(Command::new("postconf")
        .arg("-c")
        .arg(&pf.conf)
        .arg("-e")
        .arg("smtpd_policy_service_default_action=451 4.3.5 try later")
        .arg("smtpd_policy_service_timeout=100s"));
    let findings = check(&pf);
    let by = |s: &str| {
        findings
            .iter()
            .find(|f| f["subject"] == s)
            .unwrap_or_else(|| panic!("{s}: {findings:#?}"))
            .clone()
    };
    assert_eq!(by("smtpd_policy_service_default_action")["level"], "error");
    assert!(
        by("smtpd_policy_service_default_action")["hint"]
            .as_str()
            .unwrap()
            .contains("smtpd_policy_service_default_action=DUNNO")
    );
    assert_eq!(by("smtpd_policy_service_timeout")["level"], "warning");
}
