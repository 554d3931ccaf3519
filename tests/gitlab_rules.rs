//! GitLab's key rules end to end: every key generation any GitLab version
//! issued, on both routes, by the envelope and by the headers, in LF and
//! CRLF form; and for every message stored, proof that GitLab's receiver
//! reads the same key from the stored bytes — both the newest and GitLab
//! 16.0 — by running the Ruby `mail` library GitLab uses
//! (tests/gitlab_receiver/mail_key.rb, Debian's ruby-mail). For messages
//! mailpipe refuses because GitLab could not route them, the same script
//! shows that GitLab finds no key either.
//!
//! Must not: mock anything; the real binary, a real spool, the real mail gem.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Mutex;

use support::*;

const IE: &str = "incoming_email";
const SD: &str = "service_desk_email";
const CUSTOM: &str = "support@customer.example";
const SCRIPT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/gitlab_receiver/mail_key.rb"
);
const NEWEST: &str = "newest";
const OLDEST: &str = "oldest";
const BOTH: [&str; 2] = [NEWEST, OLDEST];

// ---- GitLab's side: the mail gem on the stored bytes -----------------------

/// What GitLab's receiver reads from a message.
#[derive(Debug)]
struct Gitlab {
    key: Option<String>,
    source: Option<String>,
    from: Option<String>,
    subject: Option<String>,
}

/// One ruby process for the whole test binary: the mail gem takes a third
/// of a second to load, and there are hundreds of stored copies to read.
struct Ruby {
    _child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

static RUBY: Mutex<Option<Ruby>> = Mutex::new(None);

/// Runs the Ruby emulation of GitLab's mail-key lookup on `bytes`.
fn gitlab_reads(bytes: &[u8], template: &str, custom: &str, version: &str) -> Gitlab {
    let dir = scratch_dir("gitlab-reads");
    let file = dir.join("stored.eml");
    std::fs::write(&file, bytes).unwrap();
    let job = serde_json::json!({
        "file": file, "template": template, "host": HOST, "custom": custom, "version": version,
    });
    let mut guard = RUBY.lock().unwrap_or_else(|e| e.into_inner());
    let ruby = guard.get_or_insert_with(|| {
        let mut child = Command::new("ruby")
            .arg(SCRIPT)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("ruby runs (scripts/install-test-deps installs ruby-mail)");
        Ruby {
            stdin: child.stdin.take().unwrap(),
            stdout: BufReader::new(child.stdout.take().unwrap()),
            _child: child,
        }
    });
    writeln!(ruby.stdin, "{job}").unwrap();
    ruby.stdin.flush().unwrap();
    let mut line = String::new();
    ruby.stdout.read_line(&mut line).unwrap();
    drop(guard);
    let _ = std::fs::remove_dir_all(&dir);
    let v: serde_json::Value = serde_json::from_str(&line)
        .unwrap_or_else(|e| panic!("mail_key.rb answered {line:?}: {e}"));
    let s = |name: &str| v[name].as_str().map(str::to_string);
    Gitlab {
        key: s("key"),
        source: s("source"),
        from: s("from"),
        subject: s("subject"),
    }
}

fn template_of(route: &str, dedicated: bool) -> String {
    match (route, dedicated) {
        (_, true) => format!("gitlab-incoming@{DOMAIN}"),
        (SD, false) => format!("contact+%{{key}}@{DOMAIN}"),
        _ => format!("incoming+%{{key}}@{DOMAIN}"),
    }
}

// ---- mailpipe's side -------------------------------------------------------

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    /// `incoming+%{key}@…` and `contact+%{key}@…`, plus a custom address.
    Keyed,
    /// `gitlab-incoming@…`: no `%{key}`, replies by References only.
    Dedicated,
}

fn spool(tag: &str, mode: Mode) -> TestSpool {
    // The tag names a directory that the config quotes: keep it plain.
    let tag: String = tag
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .take(40)
        .collect();
    let s = TestSpool::with_extra(
        &tag,
        &format!("[service_desk_custom_email]\naddresses = [\"{CUSTOM}\"]\n"),
    );
    if mode == Mode::Dedicated {
        let text = format!(
            "[incoming_email]\naddress = \"gitlab-incoming@{DOMAIN}\"\n\
             [gitlab]\nhost = \"{HOST}\"\n[spool]\ndir = \"{}\"\n",
            s.root.display()
        );
        std::fs::write(&s.config, text).unwrap();
    }
    s
}

/// The two line-ending forms of a message written with `\n`.
fn forms(msg: &str) -> [(&'static str, Vec<u8>); 2] {
    [("LF", lf(msg.as_bytes())), ("CRLF", crlf(msg.as_bytes()))]
}

/// A reply from Jake with `headers` (each ending in `\n`) on top.
fn reply(headers: &str) -> String {
    format!(
        "{headers}From: Jake the Dog <jake@example.com>\n\
         Subject: Re: Fix the frobnicator\n\
         Message-ID: <CADkmRc+1@mail.example.com>\n\
         Date: Thu, 13 Jun 2024 17:03:48 +0200\n\
         \n\
         I could not disagree more.\n"
    )
}

/// What one accepted case must look like.
struct Accept<'a> {
    tag: &'a str,
    mode: Mode,
    args: &'a [&'a str],
    msg: &'a str,
    route: &'a str,
    /// The key mailpipe routes by and GitLab must read back (for a custom
    /// address, `<custom addr>`, and mailpipe reports no key).
    key: &'a str,
    kind: &'a str,
    /// The GitLab versions that must read it (custom addresses in To need
    /// the newer receivers).
    versions: &'a [&'a str],
    /// Whether mailpipe must add its Delivered-To line.
    prepends: bool,
}

fn accepts(c: &Accept) {
    for (form, input) in forms(c.msg) {
        let what = format!("{} ({form})", c.tag);
        let s = spool(c.tag, c.mode);
        let e = s.explain(c.args, &input);
        assert_eq!(e["action"], "accept", "{what}: {e}");
        assert_eq!(e["route"], c.route, "{what}: {e}");
        assert_eq!(e["kind"], c.kind, "{what}: {e}");
        let custom = c.key.starts_with("<custom ");
        if custom {
            assert!(e["key"].is_null(), "{what}: {e}");
        } else {
            assert_eq!(e["key"], c.key, "{what}: {e}");
        }
        assert_eq!(e["prepend"].is_string(), c.prepends, "{what}: {e}");

        let run = s.deliver(c.args, &input);
        // Spooled: nothing on stdout, or (no syslog daemon on this host) the
        // one 2.0.0 line for Postfix's log.
        let quiet = run.stdout.is_empty()
            || (run.stdout.starts_with("2.0.0 mailpipe: route=")
                && run.stdout.lines().count() == 1);
        assert!(
            run.code == 0 && quiet && run.stderr.is_empty(),
            "{what}: {} {:?} {:?}",
            run.code,
            run.stdout,
            run.stderr
        );
        let stored = s.only(c.route);
        // The input survives byte for byte, with at most our one line.
        if let Some(line) = e["prepend"].as_str() {
            let eol = if form == "CRLF" { "\r\n" } else { "\n" };
            let line = format!("{line}{eol}");
            let at = input.iter().take_while(|b| b" \t\r\n".contains(b)).count();
            let mut want = input[..at].to_vec();
            want.extend_from_slice(line.as_bytes());
            want.extend_from_slice(&input[at..]);
            assert_eq!(
                String::from_utf8_lossy(&stored),
                String::from_utf8_lossy(&want),
                "{what}"
            );
        } else {
            assert_eq!(stored, input, "{what}: stored bytes differ");
        }
        let template = template_of(c.route, c.mode == Mode::Dedicated);
        for version in c.versions {
            let g = gitlab_reads(&stored, &template, CUSTOM, version);
            assert_eq!(
                g.key.as_deref(),
                Some(c.key),
                "{what}: GitLab {version} reads {g:?}"
            );
            assert!(g.source.is_some(), "{what}: {g:?}");
            // The header section GitLab reads is whole: From and Subject too.
            assert_eq!(g.from.as_deref(), Some("jake@example.com"), "{what}");
            assert!(g.subject.is_some(), "{what}: {g:?}");
        }
    }
}

/// A case mailpipe refuses with 67 and a text containing `words`; with
/// `gitlab_rejects`, the mail gem shows GitLab would find no key either.
fn refuses(tag: &str, mode: Mode, args: &[&str], msg: &str, words: &str, gitlab_rejects: bool) {
    for (form, input) in forms(msg) {
        let what = format!("{tag} ({form})");
        let s = spool(tag, mode);
        let run = s.deliver(args, &input);
        assert_eq!(run.code, 67, "{what}: {run:?}");
        assert!(
            run.stdout.starts_with("5.1.1 mailpipe: "),
            "{what}: {run:?}"
        );
        assert!(run.stdout.contains(words), "{what}: {}", run.stdout);
        assert!(
            !run.stdout.contains("%{key}") && !run.stdout.contains(" )"),
            "{what}: {}",
            run.stdout
        );
        assert_eq!(run.stdout.lines().count(), 1, "{what}");
        assert!(s.files(IE).is_empty() && s.files(SD).is_empty(), "{what}");
        if gitlab_rejects {
            let template = template_of(IE, mode == Mode::Dedicated);
            for version in BOTH {
                let g = gitlab_reads(&input, &template, CUSTOM, version);
                assert_eq!(g.key, None, "{what}: GitLab {version} would read {g:?}");
            }
        }
    }
}

fn rcpt(addr: &str) -> String {
    format!("--recipient={addr}")
}

// ---- 1. Every reply-key generation and handler key, incoming route ---------

/// (key, kind, GitLab file the form comes from)
const INCOMING_KEYS: [(&str, &str, &str); 16] = [
    (
        "59d8df8370b7e95c5a49fbf86aeb2c93",
        "create_note",
        "app/models/sent_notification.rb LEGACY_REPLY_KEY_REGEX",
    ),
    (
        "i_42-k_59d8df8370b7e95c5a49fbf86aeb2c93-t_1746000000123456",
        "create_note",
        "app/models/sent_notification.rb (18.x) PARTITIONED_REPLY_KEY_REGEX",
    ),
    (
        "rs-0000000000000000000000abc-rs",
        "create_note",
        "gems/gitlab-email_handler/.../reply_key.rb PARTITIONED_REPLY_KEY_REGEX",
    ),
    (
        "1-0123456789abcdefghijklmno",
        "create_note",
        "reply_key.rb, no namespace id",
    ),
    (
        "59D8DF8370B7E95C5A49FBF86AEB2C93",
        "create_note",
        "lib/gitlab/email/handler/create_note_handler.rb (11-17: \\w+)",
    ),
    (
        "59d8df8370b7e95c5a49fbf86aeb2c93-unsubscribe",
        "unsubscribe",
        "matchers/unsubscribe.rb UNSUBSCRIBE_SUFFIX",
    ),
    (
        "59d8df8370b7e95c5a49fbf86aeb2c93+unsubscribe",
        "unsubscribe",
        "matchers/unsubscribe.rb UNSUBSCRIBE_SUFFIX_LEGACY",
    ),
    (
        "i_42-k_59d8df8370b7e95c5a49fbf86aeb2c93-t_1746000000123456-unsubscribe",
        "unsubscribe",
        "sent_notification.rb (18.x) + unsubscribe_handler.rb",
    ),
    (
        "rs-0000000000000000000000abc-rs-unsubscribe",
        "unsubscribe",
        "reply_key.rb + matchers/unsubscribe.rb",
    ),
    (
        "gitlab-org-gitlab-ce-20-Author_Token12345678-issue",
        "create_issue",
        "matchers/create_issue.rb",
    ),
    (
        "gitlab-org/gitlab-ce+Author_Token12345678",
        "create_issue",
        "matchers/create_issue.rb legacy",
    ),
    (
        "gitlab-org-gitlab-ce-20-Author_Token12345678-issue-34",
        "create_note_on_issuable",
        "matchers/create_note_on_issuable.rb",
    ),
    (
        "gitlab-org-gitlab-ce-20-Author_Token12345678-merge-request",
        "create_merge_request",
        "matchers/create_merge_request.rb",
    ),
    (
        "h5bp/html5-boilerplate+merge-request+Author_Token12345678",
        "create_merge_request",
        "matchers/create_merge_request.rb legacy",
    ),
    (
        "gitlab-org-gitlab-ce-20-issue-",
        "service_desk",
        "matchers/service_desk.rb",
    ),
    (
        "gitlab-org/gitlab-ce",
        "service_desk",
        "matchers/service_desk.rb legacy",
    ),
];

#[test]
fn every_key_generation_by_the_envelope_and_by_to() {
    for (key, kind, from) in INCOMING_KEYS {
        let addr = incoming(key);
        // By the envelope: To names a person, so GitLab needs our line.
        let msg = reply("To: Alice <alice@example.com>\n");
        accepts(&Accept {
            tag: &format!("envelope {key} [{from}]"),
            mode: Mode::Keyed,
            args: &[&rcpt(&addr)],
            msg: &msg,
            route: IE,
            key,
            kind,
            versions: &BOTH,
            prepends: true,
        });
        // By To: every version reads it; nothing added.
        let msg = reply(&format!("To: \"GitLab\" <{addr}>\n"));
        accepts(&Accept {
            tag: &format!("To {key} [{from}]"),
            mode: Mode::Keyed,
            args: &[],
            msg: &msg,
            route: IE,
            key,
            kind,
            versions: &BOTH,
            prepends: false,
        });
    }
}

// ---- 2. The Service Desk route ---------------------------------------------

#[test]
fn service_desk_route_keys_by_the_envelope_to_and_cc() {
    for key in [
        "gitlab-org-gitlab-ce-20-issue-",
        "gitlab-org/gitlab-ce",
        "gitlab-org-gitlab-ce-support_team",
    ] {
        let addr = contact(key);
        let msg = reply("To: Support <support@example.com>\n");
        accepts(&Accept {
            tag: &format!("SD envelope {key}"),
            mode: Mode::Keyed,
            args: &[&rcpt(&addr)],
            msg: &msg,
            route: SD,
            key,
            kind: "service_desk",
            versions: &BOTH,
            prepends: true,
        });
        let msg = reply(&format!("To: {addr}\n"));
        accepts(&Accept {
            tag: &format!("SD To {key}"),
            mode: Mode::Keyed,
            args: &[],
            msg: &msg,
            route: SD,
            key,
            kind: "service_desk",
            versions: &BOTH,
            prepends: false,
        });
        // Cc: read since 16.5 only, so the line is added for 16.0.
        let msg = reply(&format!("To: someone@example.com\nCc: {addr}\n"));
        accepts(&Accept {
            tag: &format!("SD Cc {key}"),
            mode: Mode::Keyed,
            args: &[],
            msg: &msg,
            route: SD,
            key,
            kind: "service_desk",
            versions: &BOTH,
            prepends: true,
        });
    }
}

// ---- 3. Which headers each GitLab version reads; raw values in brackets ----

#[test]
fn raw_valued_headers_by_version_with_and_without_brackets() {
    let key = REPLY_KEY;
    let addr = incoming(key);
    // (header line, must mailpipe add Delivered-To?)
    let cases = [
        // Read by 16.0 and the newest alike, brackets allowed (\A<?…>?\z).
        (format!("Delivered-To: {addr}\n"), false),
        (format!("Delivered-To: <{addr}>\n"), false),
        (format!("Envelope-To: <{addr}>\n"), false),
        (format!("X-Envelope-To: {addr}\n"), false),
        // A display name or a list: no version reads a key from it.
        (format!("Delivered-To: Bot <{addr}>\n"), true),
        (format!("Envelope-To: {addr}, other@example.com\n"), true),
        // Newest only: X-Delivered-To (17.6), X-Original-To (17.0),
        // X-Forwarded-To (17.6), Received (flag in 16.x), Cc (16.5).
        (format!("X-Delivered-To: <{addr}>\n"), true),
        (format!("X-Original-To: {addr}\n"), true),
        (format!("X-Forwarded-To: <{addr}>\n"), true),
        (
            format!(
                "Received: from mx.example.com by in.example.com for <{addr}>; Thu, 13 Jun 2024 17:03:50 +0200\n"
            ),
            true,
        ),
        (format!("Cc: {addr}\n"), true),
        // Domain in other case: GitLab's match is case-sensitive.
        (
            format!("Delivered-To: incoming+{key}@INCOMING.gitlab.example.com\n"),
            true,
        ),
    ];
    for (header, prepends) in cases {
        let msg = reply(&format!("To: Alice <alice@example.com>\n{header}"));
        accepts(&Accept {
            tag: header.trim(),
            mode: Mode::Keyed,
            args: &[],
            msg: &msg,
            route: IE,
            key,
            kind: "create_note",
            versions: &BOTH,
            prepends,
        });
    }
}

// ---- 4. Leading blank lines (mail gem: raw_source.lstrip) ------------------

#[test]
fn leading_blank_lines_are_skipped_as_gitlab_skips_them() {
    // Key in To: nothing to add, bytes kept.
    let msg = format!("\n\n{}", reply(&format!("To: {}\n", incoming(REPLY_KEY))));
    accepts(&Accept {
        tag: "blank lines, key in To",
        mode: Mode::Keyed,
        args: &[],
        msg: &msg,
        route: IE,
        key: REPLY_KEY,
        kind: "create_note",
        versions: &BOTH,
        prepends: false,
    });
    // Key by the envelope: our line goes after the blank lines, inside the
    // header section GitLab reads (From and Subject still headers).
    let msg = format!("\n \n{}", reply("To: Alice <alice@example.com>\n"));
    accepts(&Accept {
        tag: "blank lines, key by the envelope",
        mode: Mode::Keyed,
        args: &[&rcpt(&incoming(REPLY_KEY))],
        msg: &msg,
        route: IE,
        key: REPLY_KEY,
        kind: "create_note",
        versions: &BOTH,
        prepends: true,
    });
    // Service Desk route too.
    let msg = format!("\n\n{}", reply("To: Alice <alice@example.com>\n"));
    accepts(&Accept {
        tag: "blank lines, SD by the envelope",
        mode: Mode::Keyed,
        args: &[&rcpt(&contact("gitlab-org-gitlab-ce-20-issue-"))],
        msg: &msg,
        route: SD,
        key: "gitlab-org-gitlab-ce-20-issue-",
        kind: "service_desk",
        versions: &BOTH,
        prepends: true,
    });
}

// ---- 5. References: keyed mode fixes what GitLab misses --------------------

#[test]
fn references_gitlab_cannot_read_get_a_delivered_to_in_keyed_mode() {
    for refs in [
        format!("References: <reply-{REPLY_KEY}@{HOST}>\n"),
        format!("References: <a@b.example> <reply-{REPLY_KEY}@GitLab.Example.com>\n"),
    ] {
        let msg = reply(&format!("To: incoming@{DOMAIN}\n{refs}"));
        accepts(&Accept {
            tag: refs.trim(),
            mode: Mode::Keyed,
            args: &[],
            msg: &msg,
            route: IE,
            key: REPLY_KEY,
            kind: "create_note",
            versions: &BOTH,
            prepends: true,
        });
    }
}

// ---- 6. The dedicated address: accept what GitLab reads, refuse the rest ---

#[test]
fn dedicated_address_accepts_references_gitlab_reads() {
    let to = format!("To: gitlab-incoming@{DOMAIN}\n");
    let partitioned = "i_42-k_59d8df8370b7e95c5a49fbf86aeb2c93-t_1746000000123456";
    for (refs, key) in [
        (
            format!("References: <reply-{REPLY_KEY}@{HOST}> <issue_1@{HOST}>\n"),
            REPLY_KEY,
        ),
        (
            format!("References: <issue_1@{HOST}>\n <reply-{partitioned}@{HOST}>\n"),
            partitioned,
        ),
        // Comma-joined (Exchange) and quoted (iOS): the gem scans for <…>.
        (
            format!("References: <issue_1@{HOST}> <reply-{REPLY_KEY}@{HOST}>,<x@microsoft.com>\n"),
            REPLY_KEY,
        ),
        (
            format!("References: \"<reply-{REPLY_KEY}@{HOST}>,<issue_1@{HOST}>\"\n"),
            REPLY_KEY,
        ),
    ] {
        let msg = reply(&format!("{to}{refs}"));
        accepts(&Accept {
            tag: refs.trim(),
            mode: Mode::Dedicated,
            args: &[&rcpt(&format!("gitlab-incoming@{DOMAIN}"))],
            msg: &msg,
            route: IE,
            key,
            kind: "create_note",
            versions: &BOTH,
            prepends: false,
        });
    }
}

#[test]
fn dedicated_address_refuses_with_the_reason_what_gitlab_would_reject() {
    let to = format!("To: gitlab-incoming@{DOMAIN}\n");
    let args = [rcpt(&format!("gitlab-incoming@{DOMAIN}"))];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    for (refs, words) in [
        (
            format!("References: <reply-{REPLY_KEY}@{HOST}>\n"),
            "holds the GitLab reply id alone",
        ),
        (
            format!("References: <issue_1@{HOST}> <reply-{REPLY_KEY}@GITLAB.example.com>\n"),
            "other letter case",
        ),
        (
            format!(
                "References: <issue_1@{HOST}> <reply-{REPLY_KEY}@{HOST}>\n\
                 References: <issue_2@{HOST}> <issue_3@{HOST}>\n"
            ),
            "not in the last References header",
        ),
    ] {
        let msg = reply(&format!("{to}{refs}"));
        refuses(refs.trim(), Mode::Dedicated, &args, &msg, words, true);
        let whole = "is GitLab's dedicated reply address, but GitLab could not tell";
        refuses(refs.trim(), Mode::Dedicated, &args, &msg, whole, false);
    }
}

// ---- 7. Custom Service Desk email (GitLab 16.3+) ---------------------------

#[test]
fn custom_service_desk_addresses() {
    // Microsoft 365 forwards to the bare address: no key anywhere but the
    // custom address in To, which GitLab looks up in its database.
    for to in [CUSTOM, "support+verify@customer.example"] {
        let msg = reply(&format!("To: Support <{to}>\n"));
        accepts(&Accept {
            tag: &format!("custom {to}"),
            mode: Mode::Keyed,
            args: &[&rcpt(&format!("incoming@{DOMAIN}"))],
            msg: &msg,
            route: SD,
            key: &format!("<custom {CUSTOM}>"),
            kind: "service_desk",
            versions: &[NEWEST],
            prepends: false,
        });
    }
    // A reply to the custom address: support+<reply key>@customer.example.
    // The newest GitLab reads it from To; 16.0 needs our Delivered-To.
    for key in [
        REPLY_KEY,
        "i_42-k_59d8df8370b7e95c5a49fbf86aeb2c93-t_1746000000123456",
    ] {
        let msg = reply(&format!("To: support+{key}@customer.example\n"));
        accepts(&Accept {
            tag: &format!("custom reply {key}"),
            mode: Mode::Keyed,
            args: &[&rcpt(&format!("incoming@{DOMAIN}"))],
            msg: &msg,
            route: IE,
            key,
            kind: "create_note",
            versions: &BOTH,
            prepends: true,
        });
    }
    // Only in the envelope, or in another letter case: GitLab's To lookup
    // would miss it, so refuse with the reason.
    let msg = reply("To: someone@example.com\n");
    refuses(
        "custom only in the envelope",
        Mode::Keyed,
        &[&rcpt(CUSTOM)],
        &msg,
        "GitLab finds the project of a custom address only in To",
        true,
    );
    let msg = reply("To: Support@Customer.Example\n");
    refuses(
        "custom in other case",
        Mode::Keyed,
        &[&rcpt(&format!("incoming@{DOMAIN}"))],
        &msg,
        "is not a GitLab reply address",
        true,
    );
}

// ---- 8. The words of a bounce ----------------------------------------------

#[test]
fn bounce_texts_say_what_the_addresses_are_for() {
    let s = spool("texts", Mode::Keyed);
    let run = s.deliver(
        &[&rcpt("nobody@example.com")],
        &message("nobody@example.com", ""),
    );
    assert_eq!(run.code, 67);
    assert_eq!(
        run.stdout,
        format!(
            "5.1.1 mailpipe: <nobody@example.com> is not a GitLab reply address, and no header \
             of the message names one; GitLab takes mail here at incoming+<key>@{DOMAIN} for \
             replies and new issues, contact+<key>@{DOMAIN} for Service Desk, {CUSTOM} for \
             Service Desk\n"
        )
    );
}
