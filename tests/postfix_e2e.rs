//! End to end through a real Postfix (3.7 on Debian 12): the shipped
//! `postfix/` snippets, the real mailpipe binary, real SMTP on 127.0.0.1.
//!
//! Needs root and Postfix: run `scripts/install-test-deps` once, then
//! `cargo test --test postfix_e2e`. Every test starts its own private
//! Postfix instance (own folder, own loopback port) built from the shipped
//! files, so tests run in parallel and never touch the system Postfix.
//!
//! What "byte-identical" means here: SMTP carries lines ending in CRLF, and
//! Postfix stores lines, so it hands a pipe(8) command every line ending in
//! LF (pipe's `eol` default). What a sender wrote as CRLF therefore reaches
//! mailpipe as LF; that is the message, and mailpipe must store exactly it.
//! Everything else (8-bit bytes, long lines, lines starting with "." or
//! "From ", trailing white space) must survive unchanged. The stored copy may
//! only have header lines added IN FRONT of it: Postfix's own `Received:`,
//! `Return-Path:` and `Delivered-To:` (flags R and D), `X-Original-To:` from
//! local(8), and mailpipe's one `Delivered-To:` when the key would otherwise
//! be only in the envelope. Postfix 3.7.10+ also replaces a stray CR (one not
//! followed by LF) with a space (cleanup_replace_stray_cr_lf); the tests do
//! not send such bytes.

// Test code: a failed unwrap is a failed test (clippy.toml allows it in
// #[test] functions; this covers the helpers too).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod postfix_support;

use postfix_support::*;
use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::time::{Duration, Instant};

const SECS: fn(u64) -> Duration = Duration::from_secs;

fn names(p: &[Prepended]) -> Vec<&str> {
    p.iter().map(|h| h.name.as_str()).collect()
}

fn uid_of(user: &str) -> u32 {
    let out = std::process::Command::new("id")
        .arg("-u")
        .arg(user)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

/// The single file spooled for `route`, waiting for it if need be.
fn one_spooled(pf: &Instance, route: &str) -> Vec<u8> {
    let files = wait_for(&format!("a file in {route}/new"), SECS(30), || {
        let f = pf.spooled(route);
        (!f.is_empty()).then_some(f)
    });
    assert_eq!(
        files.len(),
        1,
        "expected one spooled file in {route}, got {:?}",
        files.iter().map(|f| &f.0).collect::<Vec<_>>()
    );
    let (path, data) = files.into_iter().next().unwrap();
    let meta = fs::metadata(&path).unwrap();
    assert_eq!(
        meta.uid(),
        uid_of(MAILPIPE_USER),
        "{} not written by the mailpipe user",
        path.display()
    );
    data
}

fn assert_nothing_spooled(pf: &Instance) {
    for route in ["incoming_email", "service_desk_email"] {
        let f = pf.spooled(route);
        assert!(
            f.is_empty(),
            "unexpected files in {route}: {:?}",
            f.iter().map(|f| &f.0).collect::<Vec<_>>()
        );
        assert!(
            pf.spool_tmp(route).is_empty(),
            "leftovers in {route}/tmp: {:?}",
            pf.spool_tmp(route)
        );
    }
}

/// pipe(8) takes the status from an output that starts with an RFC 3463 code
/// and logs the rest of the output; without such a code it logs "Command died
/// with status N" (bounce) or "temporary failure. Command output: ..." (defer).
fn assert_mailpipe_text(d: &Delivery) {
    assert!(
        !d.text.is_empty()
            && !d.text.contains("Command died with status")
            && !d.text.starts_with("temporary failure."),
        "mailpipe's output should start with its own enhanced status code: {}",
        d.line
    );
}

fn reply_to(key: &str, to: &str) -> Vec<u8> {
    message(
        "Alice Example <alice@client.e2e.test>",
        to,
        "Re: Fix the frobnicator (#42)",
        &format!(
            "In-Reply-To: <note_7@gitlab.example.com>\n\
             References: <reply-{key}@gitlab.example.com> <issue_42@gitlab.example.com>\n"
        ),
        "I agree, let's ship it.\n\n> quoted text\n",
    )
}

// ---------------------------------------------------------------------------
// 0. The shipped snippets load cleanly and agree with each other.

#[test]
fn shipped_snippets_pass_postfix_check_and_agree() {
    let pf = Instance::start(Variant::Subaddress);
    // postfix check / postconf would complain about unknown or unused
    // parameters and bad master.cf entries.
    let out = std::process::Command::new("postconf")
        .arg("-c")
        .arg(&pf.conf)
        .arg("-n")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && err.trim().is_empty(),
        "postconf -n warnings: {err}"
    );
    let get = |p: &str| {
        let o = std::process::Command::new("postconf")
            .arg("-c")
            .arg(&pf.conf)
            .arg("-h")
            .arg(p)
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    };
    assert_eq!(get("mailpipe_destination_recipient_limit"), "1");
    assert_eq!(get("recipient_delimiter"), "+");
    let time_limit: u64 = get("mailpipe_time_limit")
        .trim_end_matches('s')
        .parse()
        .unwrap();
    let toml = shipped("mailpipe.toml");
    let toml_num = |key: &str| -> u64 {
        toml.lines()
            .find_map(|l| l.strip_prefix(key).and_then(|r| r.trim().strip_prefix('=')))
            .unwrap_or_else(|| panic!("{key} missing in mailpipe.toml"))
            .trim()
            .parse()
            .unwrap()
    };
    let deadline = toml_num("deadline_secs");
    assert!(
        time_limit > deadline,
        "mailpipe_time_limit {time_limit}s must exceed mailpipe's deadline {deadline}s"
    );
    let size: u64 = get("message_size_limit").parse().unwrap();
    assert!(
        size < toml_num("max_message_bytes"),
        "message_size_limit must stay below max_message_bytes"
    );
    // The pipe entry, as Postfix reads it.
    let o = std::process::Command::new("postconf")
        .arg("-c")
        .arg(&pf.conf)
        .arg("-M")
        .arg("mailpipe/unix")
        .output()
        .unwrap();
    let entry = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        entry.contains("flags=DRX ") && entry.contains(" null_sender= "),
        "{entry}"
    );
    assert!(entry.contains("user=mailpipe"), "{entry}");
    for arg in [
        "--sender=${sender}",
        "--recipient=${recipient}",
        "--original-recipient=${original_recipient}",
        "--queue-id=${queue_id}",
    ] {
        assert!(entry.contains(arg), "{arg} missing from {entry}");
    }
}

// ---------------------------------------------------------------------------
// 1. A reply is spooled byte-identical; Postfix logs status=sent.

#[test]
fn reply_is_spooled_byte_identical() {
    let pf = Instance::start(Variant::Subaddress);
    let key = hex_key();
    let to = incoming(&key);
    let msg = reply_to(&key, &format!("Project <{to}>"));
    let qid = pf.send("alice@client.e2e.test", &[&to], &msg);

    let d = pf.wait_delivery(&qid);
    assert_eq!(
        (d.status.as_str(), d.relay.as_str(), d.dsn.as_str()),
        ("sent", "mailpipe", "2.0.0"),
        "{}",
        d.line
    );
    assert_eq!(d.to, to);

    let stored = one_spooled(&pf, "incoming_email");
    let pre = split_prepended(&stored, &as_delivered(&msg));
    // Postfix's Received (smtpd), Return-Path (R) and Delivered-To (D), in the
    // order pipe(8) writes them; nothing from mailpipe, since To has the key.
    assert_eq!(
        names(&pre),
        ["Return-Path", "Delivered-To", "Received"],
        "{pre:?}"
    );
    assert_eq!(pre[0].value, "<alice@client.e2e.test>");
    assert_eq!(pre[1].value, to);
    assert!(
        pre[2].value.contains(&format!("with ESMTP id {qid}"))
            && pre[2].value.contains(&format!("for <{to}>")),
        "{pre:?}"
    );
    assert!(pf.mailq().contains("Mail queue is empty"));
    assert!(pf.bounces().is_empty());

    // The null sender (as in a DSN) reaches mailpipe as "--sender=" and is no
    // reason to refuse a message that is not an auto-reply.
    let key2 = hex_key();
    let to2 = incoming(&key2);
    let msg2 = reply_to(&key2, &to2);
    let qid2 = pf.send("", &[&to2], &msg2);
    let d2 = pf.wait_delivery(&qid2);
    assert_eq!(d2.status, "sent", "{}", d2.line);
    let files = pf.spooled("incoming_email");
    assert_eq!(files.len(), 2);
    let stored2 = files
        .iter()
        .find(|(_, b)| b.ends_with(&as_delivered(&msg2)))
        .expect("second message stored");
    let pre2 = split_prepended(&stored2.1, &as_delivered(&msg2));
    assert_eq!(
        pre2[0],
        Prepended {
            name: "Return-Path".into(),
            value: "<>".into()
        }
    );
}

// ---------------------------------------------------------------------------
// 2. Bcc: the key is only in the envelope.

#[test]
fn bcc_reply_gets_delivered_to_with_the_key() {
    let pf = Instance::start(Variant::Subaddress);
    let key = hex_key();
    let to = incoming(&key);
    // To names someone else; no References either: only the envelope has the key.
    let msg = message(
        "alice@client.e2e.test",
        "Bob <bob@elsewhere.example>",
        "FYI",
        "",
        "see above\n",
    );
    let qid = pf.send("alice@client.e2e.test", &[&to], &msg);
    assert_eq!(pf.wait_delivery(&qid).status, "sent");

    let stored = one_spooled(&pf, "incoming_email");
    let pre = split_prepended(&stored, &as_delivered(&msg));
    let delivered_to: Vec<&Prepended> = pre
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("Delivered-To"))
        .collect();
    assert_eq!(
        delivered_to.len(),
        1,
        "exactly one Delivered-To with the key expected: {pre:?}"
    );
    assert_eq!(delivered_to[0].value, to);
    assert_eq!(header_values(&stored, "Delivered-To"), [to.as_str()]);

    // One message to two keys: recipient limit 1 means one mailpipe run per
    // key, each copy with its own Delivered-To.
    let (k1, k2) = (hex_key(), hex_key());
    let (t1, t2) = (incoming(&k1), incoming(&k2));
    let msg = message(
        "alice@client.e2e.test",
        "undisclosed-recipients:;",
        "two keys",
        "",
        "body\n",
    );
    let qid = pf.send("alice@client.e2e.test", &[&t1, &t2], &msg);
    let ds = pf.wait_deliveries(&qid, 2, SECS(60));
    assert!(ds.iter().all(|d| d.status == "sent"), "{ds:?}");
    let files = wait_for("3 spooled files", SECS(30), || {
        let f = pf.spooled("incoming_email");
        (f.len() >= 3).then_some(f)
    });
    assert_eq!(files.len(), 3);
    let mut seen = BTreeSet::new();
    for (_, data) in files
        .iter()
        .filter(|(_, d)| d.ends_with(&as_delivered(&msg)))
    {
        let dt = header_values(data, "Delivered-To");
        assert_eq!(dt.len(), 1, "{dt:?}");
        seen.insert(dt[0].clone());
    }
    assert_eq!(seen, BTreeSet::from([t1, t2]));
}

// ---------------------------------------------------------------------------
// 3. Unknown or malformed keys.

#[test]
fn unknown_or_malformed_key_bounces_with_5_1_1() {
    let pf = Instance::start(Variant::Subaddress);

    // Refused while the sender is connected, by the shipped recipients table
    // or by Postfix itself; such mail is never accepted, so never bounced.
    let mut s = pf.smtp();
    let r = s.rcpt_reply(TESTER, &format!("no-such-user@{DOMAIN}"));
    assert!(
        r.starts_with("550 5.1.1") && r.contains("User unknown in relay recipient table"),
        "{r}"
    );
    let r = s.rcpt_reply(TESTER, &format!("postmaster@{DOMAIN}"));
    assert!(r.starts_with("550 5.1.1"), "{r}");
    // Addresses starting with "-" never get near a command line.
    let r = s.rcpt_reply(TESTER, &format!("-incoming+{}@{DOMAIN}", hex_key()));
    assert!(r.starts_with('5'), "{r}");
    let r = s.cmd("MAIL FROM:<-oops@client.e2e.test>");
    assert!(r.starts_with('5'), "{r}");
    s.cmd("RSET");
    let r = s.rcpt_reply(TESTER, &format!("incoming+@{DOMAIN}"));
    assert!(r.starts_with("550 5.1.1"), "{r}");
    // "!" and "%" in the local part are sender-specified routing to Postfix:
    // refused for any client outside mynetworks.
    for bad in ["incoming+!!bad", "incoming+a%b"] {
        let r = s.rcpt_reply(TESTER, &format!("{bad}@{DOMAIN}"));
        assert!(
            r.starts_with("454 4.7.1") && r.contains("Relay access denied"),
            "{bad}: {r}"
        );
    }
    s.quit();

    // Accepted by Postfix, refused by mailpipe: a bounce with mailpipe's 5.1.1.
    // Keys that no GitLab handler, current or legacy, accepts. (mailpipe
    // takes any \w+ key, e.g. "foo", because GitLab 11-17 did: see
    // src/gitlab/kind.rs.)
    for local in [
        "incoming+not-a-key",
        "incoming+a.b",
        "incoming+gitlab-org/gitlab-ce+Author_Token+extra",
    ] {
        let to = format!("{local}@{DOMAIN}");
        let msg = message(TESTER, &to, "hello", "", "Is this the right address?\n");
        let qid = pf.send(TESTER, &[&to], &msg);
        let d = pf.wait_delivery(&qid);
        assert_eq!(
            (d.status.as_str(), d.dsn.as_str()),
            ("bounced", "5.1.1"),
            "{}",
            d.line
        );
        assert_mailpipe_text(&d);
        // Words a stranger reads: what the address is not, no template jargon.
        assert!(
            d.text.contains(&format!(
                "<{to}> (from the recipient) is not a GitLab reply address"
            )) && !d.text.contains("%{key}")
                && !d.text.contains(" )"),
            "{}",
            d.line
        );

        let bounce = pf.wait_bounce(&qid);
        assert!(bounce.contains("Status: 5.1.1"), "{bounce}");
        assert!(
            bounce.contains(&format!("Final-Recipient: rfc822; {to}")),
            "{bounce}"
        );
        // The human-readable part and Diagnostic-Code carry mailpipe's words.
        // (Postfix folds long lines there, so compare with white space squashed.)
        let squash = |t: &str| t.split_whitespace().collect::<Vec<_>>().join(" ");
        let probe = squash(d.text.trim());
        let diag = bounce
            .split("Diagnostic-Code: x-unix; ")
            .nth(1)
            .map(|rest| rest.split("\n\n").next().unwrap_or(rest))
            .unwrap_or_default();
        assert_eq!(
            squash(diag),
            probe,
            "Diagnostic-Code is not mailpipe's text:\n{bounce}"
        );
        assert!(
            squash(&bounce).contains(&format!("<{to}>: {probe}")),
            "{bounce}"
        );
    }
    assert_nothing_spooled(&pf);
    assert!(pf.mailq().contains("Mail queue is empty"));
}

// ---------------------------------------------------------------------------
// 4. Auto-replies are dropped quietly.

#[test]
fn auto_replies_are_dropped_without_bounce() {
    let pf = Instance::start(Variant::Subaddress);
    let valid = incoming(&hex_key());
    let invalid = format!("incoming+not-a-key@{DOMAIN}");
    let cases = [
        (valid.as_str(), TESTER, "Auto-Submitted: auto-replied\n"),
        (invalid.as_str(), TESTER, "Auto-Submitted: auto-replied\n"),
        (valid.as_str(), "", "X-Autoreply: yes\n"),
        (invalid.as_str(), "", "Auto-Submitted: auto-generated\n"),
    ];
    let mut qids = vec![];
    for (to, from, hdr) in cases {
        let msg = message(
            "Vacation <tester@localhost>",
            to,
            "Out of office",
            hdr,
            "I am away.\n",
        );
        qids.push(pf.send(from, &[to], &msg));
    }
    for qid in &qids {
        let d = pf.wait_delivery(qid);
        assert_eq!(d.status, "sent", "{}", d.line);
        pf.wait_removed(qid, SECS(30));
        assert!(
            !pf.log()
                .contains(&format!(" {qid}: sender non-delivery notification"))
        );
    }
    assert_nothing_spooled(&pf);
    assert!(
        pf.bounces().is_empty(),
        "bounces: {:?}",
        pf.bounces().iter().map(|b| &b.0).collect::<Vec<_>>()
    );
    assert!(pf.mailq().contains("Mail queue is empty"));
}

// ---------------------------------------------------------------------------
// 5. Trouble on mailpipe's side defers; after the fix nothing is lost.

#[test]
fn unwritable_spool_defers_then_flush_delivers() {
    let pf = Instance::start(Variant::Subaddress);
    // Two cases: the spool root cannot be written before mailpipe has created
    // its Maildir, and the Maildir itself cannot be written later on.
    let mut pending = vec![];
    for round in 0..2 {
        if round == 1 {
            // Create the Maildir with one good delivery first.
            let k = hex_key();
            let qid = pf.send(
                "alice@client.e2e.test",
                &[&incoming(&k)],
                &reply_to(&k, &incoming(&k)),
            );
            assert_eq!(pf.wait_delivery(&qid).status, "sent");
        }
        pf.spool_writable(false);
        let key = hex_key();
        let to = incoming(&key);
        let msg = reply_to(&key, &to);
        let qid = pf.send("alice@client.e2e.test", &[&to], &msg);

        let d = pf.wait_status(&qid, "deferred", SECS(60));
        assert!(d.dsn.starts_with("4."), "{}", d.line);
        assert_mailpipe_text(&d);
        let q = pf.mailq();
        assert!(q.contains(&qid) && q.contains(&to), "mailq:\n{q}");
        let reason: String = d.text.trim().chars().take(20).collect();
        assert!(q.contains(&reason), "mailq shows no reason:\n{q}");
        assert_eq!(
            pf.spooled("incoming_email").len(),
            round,
            "nothing new may be spooled"
        );
        assert!(pf.spool_tmp("incoming_email").is_empty());
        assert!(pf.bounces().is_empty());
        pf.spool_writable(true);
        pending.push((qid, msg));
    }

    pf.flush();
    for (qid, msg) in &pending {
        let d = pf.wait_status(qid, "sent", SECS(60));
        assert_eq!(d.relay, "mailpipe");
        pf.wait_removed(qid, SECS(30));
        let files = pf.spooled("incoming_email");
        let copies = files
            .iter()
            .filter(|(_, d)| d.ends_with(&as_delivered(msg)))
            .count();
        assert_eq!(copies, 1, "{qid} must be stored exactly once");
    }
    assert_eq!(pf.spooled("incoming_email").len(), 3);
    assert!(pf.mailq().contains("Mail queue is empty"));
    assert!(pf.bounces().is_empty());
}

#[test]
fn broken_config_defers_then_flush_delivers() {
    let pf = Instance::start(Variant::Subaddress);
    let good = fs::read(&pf.config_file).unwrap();
    fs::write(
        &pf.config_file,
        b"[incoming_email\naddress = \"incoming+%{key}@",
    )
    .unwrap();
    let key = hex_key();
    let to = incoming(&key);
    let msg = reply_to(&key, &to);
    let qid = pf.send("alice@client.e2e.test", &[&to], &msg);

    let d = pf.wait_status(&qid, "deferred", SECS(60));
    assert!(d.dsn.starts_with("4."), "{}", d.line);
    assert_mailpipe_text(&d);
    assert!(pf.mailq().contains(&qid));
    assert_nothing_spooled(&pf);

    fs::write(&pf.config_file, &good).unwrap();
    pf.flush();
    pf.wait_status(&qid, "sent", SECS(60));
    let stored = one_spooled(&pf, "incoming_email");
    split_prepended(&stored, &as_delivered(&msg));
    pf.wait_removed(&qid, SECS(30));
    assert!(pf.bounces().is_empty());
}

// ---------------------------------------------------------------------------
// 6. The other shipped variants.

#[test]
fn service_desk_address_spools_under_service_desk_email() {
    let pf = Instance::start(Variant::Subaddress);
    let to = format!("contact+h5bp-html5-boilerplate-20-issue-@{DOMAIN}");
    let msg = message(
        "Customer <customer@client.e2e.test>",
        &to,
        "Printer on fire",
        "",
        "Help!\n",
    );
    let qid = pf.send("customer@client.e2e.test", &[&to], &msg);
    assert_eq!(pf.wait_delivery(&qid).status, "sent");
    let stored = one_spooled(&pf, "service_desk_email");
    split_prepended(&stored, &as_delivered(&msg));
    assert!(pf.spooled("incoming_email").is_empty());
}

/// Custom Service Desk email (issue 14): a forward that dropped the
/// sub-address delivers to the bare `incoming@`; the custom address in To
/// is what GitLab routes by. Set up as postfix/README.md says: the address in
/// `[service_desk_custom_email]`, the bare address in the recipients map.
#[test]
fn custom_service_desk_address_via_a_forward_without_sub_address() {
    let pf = Instance::start(Variant::Subaddress);
    let mut config = fs::read_to_string(&pf.config_file).unwrap();
    config.push_str("\n[service_desk_custom_email]\naddresses = [\"support@customer.example\"]\n");
    fs::write(&pf.config_file, config).unwrap();
    let map = pf.conf.join("recipients.subaddress.regexp");
    let mut text = fs::read_to_string(&map).unwrap();
    text.push_str(&format!(
        "/^incoming@{}$/    OK\n",
        DOMAIN.replace('.', "\\.")
    ));
    fs::write(&map, text).unwrap();
    let reload = std::process::Command::new("postfix")
        .arg("-c")
        .arg(&pf.conf)
        .arg("reload")
        .output()
        .unwrap();
    assert!(reload.status.success(), "{reload:?}");

    let bare = format!("incoming@{DOMAIN}");
    let msg = message(
        "Customer <customer@client.e2e.test>",
        "Support <support@customer.example>",
        "Printer on fire",
        "",
        "Help!\n",
    );
    // smtpd processes of before the reload may still answer once: retry.
    let qid = wait_for("the bare address accepted", SECS(30), || {
        let mut s = pf.smtp();
        let r = s.rcpt_reply(TESTER, &bare);
        s.quit();
        r.starts_with("250")
            .then(|| pf.send(TESTER, &[&bare], &msg))
    });
    assert_eq!(pf.wait_delivery(&qid).status, "sent");
    let stored = one_spooled(&pf, "service_desk_email");
    let pre = split_prepended(&stored, &as_delivered(&msg));
    assert!(
        !pre.iter()
            .any(|h| h.name.eq_ignore_ascii_case("Delivered-To") && h.value.contains("incoming+")),
        "nothing to add for a custom address: {pre:?}"
    );

    // Named only in Cc: GitLab would not find the project; bounced with why.
    let msg = message(
        TESTER,
        "someone@client.e2e.test",
        "Printer on fire",
        "Cc: support@customer.example\n",
        "Help!\n",
    );
    let qid = pf.send(TESTER, &[&bare], &msg);
    let d = pf.wait_delivery(&qid);
    assert_eq!(
        (d.status.as_str(), d.dsn.as_str()),
        ("bounced", "5.1.1"),
        "{}",
        d.line
    );
    assert!(
        d.text.contains("is not a GitLab reply address"),
        "{}",
        d.line
    );
    assert!(pf.wait_bounce(&qid).contains("Status: 5.1.1"));
}

#[test]
fn catch_all_variant() {
    let pf = Instance::start(Variant::CatchAll);
    let key = hex_key();
    let to = format!("incoming-{key}@{DOMAIN}");
    let msg = reply_to(&key, &to);
    let qid = pf.send("alice@client.e2e.test", &[&to], &msg);
    assert_eq!(pf.wait_delivery(&qid).status, "sent");
    let stored = one_spooled(&pf, "incoming_email");
    split_prepended(&stored, &as_delivered(&msg));

    let sd = format!("contact-h5bp-html5-boilerplate-20-issue-@{DOMAIN}");
    let msg = message("customer@client.e2e.test", &sd, "Help", "", "Help!\n");
    let qid = pf.send("customer@client.e2e.test", &[&sd], &msg);
    assert_eq!(pf.wait_delivery(&qid).status, "sent");
    one_spooled(&pf, "service_desk_email");

    // The sub-address form does not exist in this variant.
    let mut s = pf.smtp();
    let r = s.rcpt_reply(TESTER, &incoming(&key));
    assert!(r.starts_with("550 5.1.1"), "{r}");
    s.quit();
}

#[test]
fn dedicated_address_variant() {
    let pf = Instance::start(Variant::Dedicated);
    let key = hex_key();
    let to = format!("incoming@{DOMAIN}");
    // The key is only in References.
    let msg = reply_to(&key, &to);
    let qid = pf.send("alice@client.e2e.test", &[&to], &msg);
    assert_eq!(pf.wait_delivery(&qid).status, "sent");
    let stored = one_spooled(&pf, "incoming_email");
    split_prepended(&stored, &as_delivered(&msg));

    // No References, no key: bounced.
    let msg = message(TESTER, &to, "new thread", "", "hello\n");
    let qid = pf.send(TESTER, &[&to], &msg);
    let d = pf.wait_delivery(&qid);
    assert_eq!(
        (d.status.as_str(), d.dsn.as_str()),
        ("bounced", "5.1.1"),
        "{}",
        d.line
    );
    assert!(pf.wait_bounce(&qid).contains("Status: 5.1.1"));
    assert!(
        d.text.contains("is not a GitLab reply address"),
        "{}",
        d.line
    );

    // A reply whose References holds GitLab's id alone: GitLab's mail
    // library hands that back without brackets and GitLab finds no key, so
    // mailpipe bounces at once and says why (issue 14).
    let msg = message(
        TESTER,
        &to,
        "Re: Fix the frobnicator (#42)",
        &format!("References: <reply-{key}@gitlab.example.com>\n"),
        "I agree.\n",
    );
    let qid = pf.send(TESTER, &[&to], &msg);
    let d = pf.wait_delivery(&qid);
    assert_eq!(
        (d.status.as_str(), d.dsn.as_str()),
        ("bounced", "5.1.1"),
        "{}",
        d.line
    );
    assert!(
        d.text.contains("is GitLab's dedicated reply address")
            && d.text.contains("holds the GitLab reply id alone"),
        "{}",
        d.line
    );
    assert!(pf.wait_bounce(&qid).contains("Status: 5.1.1"));
    assert_eq!(
        pf.spooled("incoming_email").len(),
        1,
        "only the first reply"
    );

    let mut s = pf.smtp();
    let r = s.rcpt_reply(TESTER, &incoming(&key));
    assert!(r.starts_with("550 5.1.1"), "{r}");
    s.quit();
}

/// The message as local(8) hands it over must be stored without local(8)'s
/// "From " line; the header lines local(8) prepends are allowed.
fn check_local_copy(stored: &[u8], msg: &[u8], rcpt: &str) {
    check_local_copy_of(stored, &as_delivered(msg), rcpt)
}

/// Through procmail: procmail ends a message that does not end in an empty
/// line with one more "\n" (it writes mbox-style). That is its only change.
fn check_procmail_copy(stored: &[u8], msg: &[u8], rcpt: &str) {
    let mut expected = as_delivered(msg);
    if !expected.ends_with(b"\n\n") {
        expected.push(b'\n');
    }
    check_local_copy_of(stored, &expected, rcpt)
}

fn check_local_copy_of(stored: &[u8], expected: &[u8], rcpt: &str) {
    assert!(
        !stored.starts_with(b"From "),
        "mbox From_ line not stripped"
    );
    let pre = split_prepended(stored, expected);
    for h in &pre {
        assert!(
            ["Return-Path", "Delivered-To", "X-Original-To", "Received"].contains(&h.name.as_str()),
            "unexpected prepended field {h:?}"
        );
    }
    assert_eq!(
        header_values(stored, "Delivered-To"),
        [rcpt.to_string()],
        "{pre:?}"
    );
}

#[test]
fn local_alias_variant() {
    let pf = Instance::start(Variant::LocalAlias);
    let key = hex_key();
    let to = incoming(&key);
    let msg = message(
        "alice@client.e2e.test",
        "Bob <bob@elsewhere.example>",
        "bcc'd",
        "",
        "via an alias\n",
    );
    let qid = pf.send("alice@client.e2e.test", &[&to], &msg);
    let d = pf.wait_delivery(&qid);
    assert_eq!(
        (d.status.as_str(), d.relay.as_str()),
        ("sent", "local"),
        "{}",
        d.line
    );
    assert!(d.text.contains("delivered to command"), "{}", d.line);
    // one_spooled also checks that the alias command ran as the mailpipe user.
    check_local_copy(&one_spooled(&pf, "incoming_email"), &msg, &to);

    let sd = format!("contact+h5bp-html5-boilerplate-20-issue-@{DOMAIN}");
    let msg = message("customer@client.e2e.test", &sd, "Help", "", "Help!\n");
    let qid = pf.send("customer@client.e2e.test", &[&sd], &msg);
    assert_eq!(pf.wait_delivery(&qid).status, "sent");
    check_local_copy(&one_spooled(&pf, "service_desk_email"), &msg, &sd);

    let bad = format!("incoming+not-a-key@{DOMAIN}");
    let msg = message(TESTER, &bad, "hello", "", "hello\n");
    let qid = pf.send(TESTER, &[&bad], &msg);
    let d = pf.wait_delivery(&qid);
    assert_eq!(
        (d.status.as_str(), d.dsn.as_str()),
        ("bounced", "5.1.1"),
        "{}",
        d.line
    );
    assert!(pf.wait_bounce(&qid).contains("Status: 5.1.1"));

    // Unknown local parts are refused at RCPT (local_recipient_maps).
    let mut s = pf.smtp();
    // (System accounts such as nobody@ ARE deliverable here: README.md.)
    let r = s.rcpt_reply(TESTER, &format!("no-such-user@{DOMAIN}"));
    assert!(r.starts_with("550 5.1.1"), "{r}");
    s.quit();
}

#[test]
fn local_forward_variant() {
    let pf = Instance::start(Variant::LocalForward);
    let key = hex_key();
    let to = format!("{MAILPIPE_USER}+{key}@{DOMAIN}");
    let msg = reply_to(&key, &to);
    let qid = pf.send("alice@client.e2e.test", &[&to], &msg);
    let d = pf.wait_delivery(&qid);
    assert_eq!(
        (d.status.as_str(), d.relay.as_str()),
        ("sent", "local"),
        "{}",
        d.line
    );
    check_local_copy(&one_spooled(&pf, "incoming_email"), &msg, &to);
}

#[test]
fn local_procmail_variant_passes_exit_codes() {
    let pf = Instance::start(Variant::LocalProcmail);
    // procmail's own fallback mailbox ($DEFAULT), which must stay untouched.
    let fallback = std::path::Path::new("/var/mail").join(MAILPIPE_USER);
    let fallback_len = || fs::metadata(&fallback).map(|m| m.len()).ok();
    let before = fallback_len();
    let key = hex_key();
    let to = format!("{MAILPIPE_USER}+{key}@{DOMAIN}");
    let msg = reply_to(&key, &to);
    let qid = pf.send("alice@client.e2e.test", &[&to], &msg);
    let d = pf.wait_delivery(&qid);
    assert_eq!(
        (d.status.as_str(), d.relay.as_str()),
        ("sent", "local"),
        "{}",
        d.line
    );
    check_procmail_copy(&one_spooled(&pf, "incoming_email"), &msg, &to);

    // mailpipe's 67 comes out of procmail as a bounce ...
    let bad = format!("{MAILPIPE_USER}+not-a-key@{DOMAIN}");
    let m = message(TESTER, &bad, "hello", "", "hello\n");
    let qid = pf.send(TESTER, &[&bad], &m);
    let d = pf.wait_delivery(&qid);
    assert_eq!(d.status, "bounced", "{}", d.line);
    assert!(d.dsn.starts_with("5."), "{}", d.line);
    pf.wait_bounce(&qid);

    // ... and its 75 as a deferral; nothing ends up in a mailbox.
    pf.spool_writable(false);
    let key = hex_key();
    let to = format!("{MAILPIPE_USER}+{key}@{DOMAIN}");
    let m = reply_to(&key, &to);
    let qid = pf.send("alice@client.e2e.test", &[&to], &m);
    let d = pf.wait_status(&qid, "deferred", SECS(60));
    assert!(d.dsn.starts_with("4."), "{}", d.line);
    pf.spool_writable(true);
    pf.flush();
    pf.wait_status(&qid, "sent", SECS(60));
    assert_eq!(pf.spooled("incoming_email").len(), 2);
    assert_eq!(
        fallback_len(),
        before,
        "procmail fell through to {}",
        fallback.display()
    );
}

// ---------------------------------------------------------------------------
// Keys are case-sensitive (no `u` flag) and sizes are mailpipe's to refuse.

#[test]
fn mixed_case_key_is_passed_unchanged() {
    let pf = Instance::start(Variant::Subaddress);
    // A "new issue by email" key: the user's incoming-email token has capitals.
    let to = format!("incoming+gitlab-org-gitlab-ce-20-Author_Token12345678-issue@{DOMAIN}");
    let msg = message(
        "alice@client.e2e.test",
        &to,
        "New issue",
        "",
        "Steps to reproduce\n",
    );
    let qid = pf.send("alice@client.e2e.test", &[&to], &msg);
    let d = pf.wait_delivery(&qid);
    assert_eq!(
        (d.status.as_str(), d.to.as_str()),
        ("sent", to.as_str()),
        "{}",
        d.line
    );
    let stored = one_spooled(&pf, "incoming_email");
    split_prepended(&stored, &as_delivered(&msg));
    assert_eq!(header_values(&stored, "Delivered-To"), [to.as_str()]);

    // The fixed parts in another case (no `h` flag either): accepted, and the
    // stored copy gets the configured spelling, which GitLab matches.
    let key = hex_key();
    let odd = format!("INCOMING+{key}@Incoming.GitLab.Example.COM");
    // (No References: GitLab could find the key there without help.)
    let msg = message("alice@client.e2e.test", &odd, "Re: shouting", "", "HELLO\n");
    let qid = pf.send("alice@client.e2e.test", &[&odd], &msg);
    assert_eq!(pf.wait_delivery(&qid).status, "sent");
    let files = pf.spooled("incoming_email");
    let (_, stored) = files
        .iter()
        .find(|(_, d)| d.ends_with(&as_delivered(&msg)))
        .expect("stored");
    let dt = header_values(stored, "Delivered-To");
    assert!(dt.contains(&incoming(&key)), "{dt:?}");
}

#[test]
fn too_large_for_mailpipe_bounces_with_5_3_4() {
    let pf = Instance::start(Variant::Subaddress);
    let cfg = fs::read_to_string(&pf.config_file).unwrap();
    assert!(cfg.contains("max_message_bytes = 52428800"), "{cfg}");
    fs::write(
        &pf.config_file,
        cfg.replace("max_message_bytes = 52428800", "max_message_bytes = 100000"),
    )
    .unwrap();
    let to = incoming(&hex_key());
    let body = "0123456789abcdef ".repeat(4) + "\n";
    let msg = message(
        TESTER,
        &to,
        "big attachment",
        "",
        &body.repeat(300_000 / body.len()),
    );
    let qid = pf.send(TESTER, &[&to], &msg);
    let d = pf.wait_delivery(&qid);
    assert_eq!(
        (d.status.as_str(), d.dsn.as_str()),
        ("bounced", "5.3.4"),
        "{}",
        d.line
    );
    assert_mailpipe_text(&d);
    assert!(pf.wait_bounce(&qid).contains("Status: 5.3.4"));
    // The partial copy is gone, too.
    assert_nothing_spooled(&pf);
}

// ---------------------------------------------------------------------------
// 7. A 20 MB message with 8-bit and CRLF content.

#[test]
fn large_8bit_crlf_message_arrives_intact() {
    let pf = Instance::start(Variant::Subaddress);
    let key = hex_key();
    let to = incoming(&key);
    let mut msg: Vec<u8> = format!(
        "From: Alice <alice@client.e2e.test>\r\nTo: <{to}>\r\nSubject: big one\r\nDate: Wed, 25 Nov 2026 10:00:00 +0000\r\n\
         Message-ID: <big-{key}@client.e2e.test>\r\nMIME-Version: 1.0\r\n\
         Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
    )
    .into_bytes();
    // Deterministic pseudo-random 8-bit lines (no NUL, CR or LF inside a line),
    // of varied length up to well past Postfix's line_length_limit (2048),
    // plus lines Postfix or mailpipe might be tempted to touch.
    let mut x: u32 = 0x1234_5678;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        x
    };
    let specials: [&[u8]; 6] = [
        b".",
        b".leading dot",
        b"From the start of a line",
        b">From quoted",
        b"trailing space \t ",
        b"",
    ];
    let mut i = 0usize;
    while msg.len() < 20 * 1024 * 1024 {
        i += 1;
        if i.is_multiple_of(97) {
            msg.extend_from_slice(specials[(i / 97) % specials.len()]);
        } else {
            let len = if i.is_multiple_of(501) {
                5000 + (next() % 3000) as usize
            } else {
                (next() % 200) as usize
            };
            for _ in 0..len {
                let b = (next() % 254 + 1) as u8; // 1..=254
                msg.push(if b == b'\r' || b == b'\n' { b'~' } else { b });
            }
        }
        msg.extend_from_slice(b"\r\n");
    }
    assert!(msg.iter().any(|&b| b >= 0x80));

    let t = Instant::now();
    let qid = pf.send("alice@client.e2e.test", &[&to], &msg);
    let sent = t.elapsed();
    let d = pf.wait_deliveries(&qid, 1, SECS(120)).remove(0);
    assert_eq!(d.status, "sent", "{}", d.line);
    let stored = one_spooled(&pf, "incoming_email");
    eprintln!(
        "20 MB message: SMTP {:.2}s, spooled after {:.2}s, {} bytes stored",
        sent.as_secs_f64(),
        t.elapsed().as_secs_f64(),
        stored.len()
    );
    let pre = split_prepended(&stored, &as_delivered(&msg));
    assert_eq!(names(&pre), ["Return-Path", "Delivered-To", "Received"]);
}

// ---------------------------------------------------------------------------
// 8. 200 messages at once.

#[test]
fn two_hundred_concurrent_messages() {
    const N: usize = 200;
    const SENDERS: usize = N; // one SMTP session per message, all at once
    let pf = Instance::start(Variant::Subaddress);
    let port = pf.port;
    // Half of them reply to one busy thread (one recipient: Postfix queues
    // them behind mailpipe_destination_concurrency_limit), half to their own.
    let busy = hex_key();
    let t = Instant::now();
    let handles: Vec<_> = (0..SENDERS)
        .map(|s| {
            let busy = busy.clone();
            std::thread::spawn(move || {
                let mut out = vec![];
                for j in (s..N).step_by(SENDERS) {
                    let key = if j % 2 == 0 { busy.clone() } else { hex_key() };
                    let to = incoming(&key);
                    let msg = message(
                        "alice@client.e2e.test",
                        &to,
                        "load",
                        &format!("X-Seq: {j}\n"),
                        "body\n",
                    );
                    // One connection per message, like independent MTAs.
                    let mut c = Smtp::connect(port);
                    let r = c.send("alice@client.e2e.test", &[&to], &msg);
                    c.quit();
                    match r {
                        SendResult::Queued(id) => out.push((j, id)),
                        other => panic!("message {j}: {other:?}"),
                    }
                }
                out
            })
        })
        .collect();
    let mut qids = vec![];
    for h in handles {
        qids.extend(h.join().expect("sender thread"));
    }
    let injected = t.elapsed();
    assert_eq!(qids.len(), N);

    let files = wait_for("200 spooled files", SECS(120), || {
        let f = pf.spooled("incoming_email");
        (f.len() >= N).then_some(f)
    });
    let done = t.elapsed();
    for (_, qid) in &qids {
        pf.wait_removed(qid, SECS(30));
    }
    let log = pf.log();
    let sent = log.lines().filter(|l| l.contains(" status=sent ")).count();
    let deferred = log
        .lines()
        .filter(|l| l.contains(" status=deferred "))
        .count();
    let bounced = log
        .lines()
        .filter(|l| l.contains(" status=bounced "))
        .count();
    assert_eq!((sent, deferred, bounced), (N, 0, 0));
    assert_eq!(files.len(), N, "duplicates or extra files");
    let seqs: Vec<String> = files
        .iter()
        .map(|(_, d)| header_values(d, "X-Seq").join(","))
        .collect();
    let c = counts(&seqs);
    assert_eq!(c.len(), N, "every message exactly once");
    assert!(c.values().all(|&n| n == 1));
    assert!(pf.spool_tmp("incoming_email").is_empty());
    assert!(pf.mailq().contains("Mail queue is empty"));
    eprintln!(
        "{N} messages: injected in {:.2}s, all spooled after {:.2}s",
        injected.as_secs_f64(),
        done.as_secs_f64()
    );
}
