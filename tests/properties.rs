//! Property tests on stable Rust: the fuzz targets' properties (no panic,
//! keys obey the alphabet, exit codes and report lines agree, LF and CRLF
//! decide the same) over inputs from a small deterministic generator, plus
//! properties a generator can state and a fuzzer cannot: a planted key is
//! the key found, the envelope wins, a cut head that ends in LF decides as
//! the whole, auto-replies are dropped whatever the key, and hostile sizes
//! stay fast.
//!
//! The generator is a fixed-seed SplitMix64, so every run checks the same
//! cases; set MAILPIPE_PROPTEST_SEED=<n> and MAILPIPE_PROPTEST_CASES=<n> to
//! explore further. A failure prints the seed, the case number and the input.

// Test code: a failed unwrap is a failed test (clippy.toml allows it in
// #[test] functions; this covers the helpers too).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../fuzz/src/lib.rs"]
#[allow(dead_code)]
mod checks;

use std::time::{Duration, Instant};

use checks::{DecideInput, configs};
use mailpipe::decide::decide;
use mailpipe::gitlab::lookup::Envelope;
use mailpipe::status::Status;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

fn seed() -> u64 {
    std::env::var("MAILPIPE_PROPTEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x6d61_696c_7069_7065)
}

fn cases(default: usize) -> usize {
    std::env::var("MAILPIPE_PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

const NAMES: &[&str] = &[
    "To",
    "Cc",
    "References",
    "Delivered-To",
    "X-Delivered-To",
    "Envelope-To",
    "X-Envelope-To",
    "Received",
    "X-Original-To",
    "X-Forwarded-To",
    "Auto-Submitted",
    "X-Autoreply",
    "Message-ID",
    "Subject",
    "tO",
    "DELIVERED-TO",
    "To ",
    "X",
];

const TOKENS: &[&str] = &[
    "incoming+",
    "@incoming.example.com",
    "contact+",
    "@example.com",
    "@in.example.com",
    "gitlab-incoming@example.com",
    "<reply-",
    "@gitlab.example.com>",
    "@GITLAB.EXAMPLE.COM",
    "for <",
    "for",
    " by mx ",
    "=?utf-8?q?",
    "?=",
    "undisclosed-recipients:;",
    "no",
    "auto-replied",
    "yes",
    "\"",
    "(",
    ")",
    "<",
    ">",
    ",",
    ";",
    ":",
    "\\",
    "+",
    "@",
    "..",
    "/",
    " ",
    "\t",
    "\r",
    "\0",
    "\u{e9}",
    "\u{212a}",
    "59d8df8370b7e95c5a49fbf86aeb2c93",
    "gitlab-org-gitlab-ce-20-Tok-issue",
    "-issue-",
    "-unsubscribe",
    "+merge-request+",
    "a",
    "Bob",
];

const KEY_CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._+/-";

/// A key that obeys the alphabet.
fn valid_key(rng: &mut Rng) -> String {
    loop {
        let max = if rng.chance(5) { 255 } else { 40 };
        let len = 1 + rng.below(max);
        let k: String = (0..len).map(|_| char::from(*rng.pick(KEY_CHARS))).collect();
        if checks::key_obeys_alphabet(&k) {
            return k;
        }
    }
}

fn value(rng: &mut Rng, out: &mut Vec<u8>) {
    for _ in 0..rng.below(12) {
        match rng.below(10) {
            0 => out.push(rng.next() as u8),
            1 => out.extend_from_slice(valid_key(rng).as_bytes()),
            2 => {
                // A fold inside the value.
                out.extend_from_slice(if rng.chance(50) { b"\n " } else { b"\r\n\t" });
            }
            _ => out.extend_from_slice(rng.pick(TOKENS).as_bytes()),
        }
    }
}

/// A header section (and sometimes a body) built from the tokens that
/// matter, with random line endings, folds and junk lines.
fn head(rng: &mut Rng) -> Vec<u8> {
    let mut out = Vec::new();
    if rng.chance(5) {
        out.extend_from_slice(b"From sender@x Mon Jan  1 00:00:00 2024\n");
    }
    for _ in 0..rng.below(10) {
        match rng.below(20) {
            0 => out.extend_from_slice(b" continuation"),
            1 => out.extend_from_slice(b"not a field"),
            _ => {
                out.extend_from_slice(rng.pick(NAMES).as_bytes());
                out.push(b':');
                if rng.chance(80) {
                    out.push(b' ');
                }
                value(rng, &mut out);
            }
        }
        out.extend_from_slice(match rng.below(10) {
            0 => b"\r\n",
            1 => b"\r",
            2 => b"",
            _ => b"\n",
        });
    }
    if rng.chance(60) {
        out.extend_from_slice(if rng.chance(50) { b"\n" } else { b"\r\n" });
        out.extend_from_slice(b"To: incoming+bodykey@incoming.example.com\n");
    }
    out
}

fn envelope(rng: &mut Rng) -> Envelope {
    let addr = |rng: &mut Rng| -> String {
        let mut v = Vec::new();
        value(rng, &mut v);
        let s = String::from_utf8_lossy(&v).replace('\n', " ");
        match rng.below(4) {
            0 => format!("incoming+{}@incoming.example.com", valid_key(rng)),
            1 => format!("<{}@in.example.com>", valid_key(rng)),
            _ => s,
        }
    };
    let mut e = Envelope::default();
    if rng.chance(50) {
        e.recipients.push(addr(rng));
        if rng.chance(3) {
            e.recipients.push(addr(rng));
        }
    }
    if rng.chance(30) {
        e.original_recipients.push(addr(rng));
    }
    e
}

/// Runs `f` on every case; on a panic, names the seed, case and input.
fn for_cases(n: usize, salt: u64, mut f: impl FnMut(&mut Rng) -> Vec<u8>) {
    let seed = seed() ^ salt;
    for case in 0..n {
        let mut rng = Rng(seed.wrapping_add(case as u64));
        let mut shown = Vec::new();
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            shown = f(&mut rng);
        }));
        if outcome.is_err() {
            let mut rng = Rng(seed.wrapping_add(case as u64));
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                shown = f(&mut rng);
            }));
            panic!(
                "property failed: seed {seed:#x} case {case}; input {:?}",
                String::from_utf8_lossy(&shown)
            );
        }
    }
}

#[test]
fn decide_properties_on_generated_messages() {
    for_cases(cases(3000), 1, |rng| {
        let input = DecideInput {
            config: rng.below(3),
            complete: rng.chance(70),
            envelope: envelope(rng),
            head: head(rng),
        };
        let bytes = input.to_bytes();
        checks::check_decide(&bytes);
        bytes
    });
}

#[test]
fn address_list_properties_on_generated_values() {
    for_cases(cases(3000), 2, |rng| {
        let mut bytes = Vec::new();
        if rng.chance(50) {
            value(rng, &mut bytes);
        } else {
            bytes = head(rng);
        }
        checks::check_address_list(&bytes);
        bytes
    });
}

#[test]
fn planted_key_is_the_key_found() {
    let config = &configs()[0];
    for_cases(cases(1000), 3, |rng| {
        let key = valid_key(rng);
        let name = *rng.pick(&["To", "Cc", "Delivered-To", "X-Original-To", "to"]);
        let addr = format!("incoming+{key}@incoming.example.com");
        let field = match rng.below(4) {
            0 => format!("{name}: {addr}"),
            1 => format!("{name}: \"Bob, (the) <builder>\" <{addr}>"),
            2 => format!("{name}: other@example.org, (c) {addr} (comment)"),
            _ => format!("{name}: Team: {addr};"),
        };
        let eol = if rng.chance(50) { "\r\n" } else { "\n" };
        let msg = format!("Subject: x{eol}{field}{eol}{eol}body{eol}");
        let d = decide(config, &Envelope::default(), msg.as_bytes(), true);
        assert_eq!(d.key().map(|k| k.as_str()), Some(key.as_str()), "{msg:?}");
        assert_eq!(
            d.found_in().map(|f| f.as_str().to_ascii_lowercase()),
            Some(name.to_ascii_lowercase())
        );
        msg.into_bytes()
    });
}

#[test]
fn envelope_key_wins_over_headers() {
    let config = &configs()[0];
    for_cases(cases(1000), 4, |rng| {
        let key = valid_key(rng);
        let envelope = Envelope {
            recipients: vec![format!("incoming+{key}@incoming.example.com")],
            ..Envelope::default()
        };
        let msg = head(rng);
        let d = decide(config, &envelope, &msg, true);
        if !matches!(d.status(), Status::Discarded(_)) && !msg.iter().all(u8::is_ascii_whitespace) {
            assert_eq!(d.key().map(|k| k.as_str()), Some(key.as_str()));
            assert_eq!(d.found_in().map(|f| f.as_str()), Some("envelope"));
        }
        msg
    });
}

#[test]
fn cut_head_ending_in_lf_decides_as_the_whole() {
    for_cases(cases(1000), 5, |rng| {
        let mut msg = head(rng);
        msg.push(b'\n');
        if msg.iter().all(u8::is_ascii_whitespace) {
            return msg;
        }
        let config = &configs()[rng.below(3)];
        let envelope = envelope(rng);
        let whole = checks::Summary::of(&decide(config, &envelope, &msg, true));
        let cut = checks::Summary::of(&decide(config, &envelope, &msg, false));
        assert_eq!(whole, cut);
        msg
    });
}

#[test]
fn auto_replies_are_dropped_whatever_the_key() {
    let config = &configs()[0];
    for_cases(cases(500), 6, |rng| {
        let keyword = *rng.pick(&[
            "auto-replied",
            "Auto-Generated",
            "",
            "yes",
            "auto-notified; x=y",
        ]);
        let key = valid_key(rng);
        let mut msg = format!("Auto-Submitted: {keyword}\n").into_bytes();
        msg.extend_from_slice(&head(rng));
        let envelope = Envelope {
            recipients: vec![format!("incoming+{key}@incoming.example.com")],
            ..Envelope::default()
        };
        let d = decide(config, &envelope, &msg, true);
        assert!(
            matches!(d.status(), Status::Discarded(_)),
            "{:?}",
            d.status()
        );
        assert_eq!(d.status().exit_code(), 0);
        msg
    });
}

/// Hostile sizes (one huge line, thousands of Received lines or References
/// ids, nested comments, `for <<` runs, folds) at the default header
/// cap of 256 KiB: each decision must be far below the 2 s the fuzzer
/// allows, even in a debug build.
#[test]
fn hostile_sizes_decide_quickly() {
    const CAP: usize = 256 * 1024;
    let fill = |unit: &str, prefix: &str| -> Vec<u8> {
        let mut v = prefix.as_bytes().to_vec();
        while v.len() + unit.len() <= CAP {
            v.extend_from_slice(unit.as_bytes());
        }
        v
    };
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("one long To line", fill("a", "To: ")),
        (
            "X-Pad lines",
            fill("X-Pad: 0123456789012345678901234567890123456789\n", ""),
        ),
        (
            "Received lines",
            fill(
                "Received: from x by y for <incoming+k@incoming.example.com>;\n",
                "",
            ),
        ),
        ("References ids", fill(" <id@x>", "References:")),
        ("nested comments", fill("(", "To: ")),
        ("angle brackets", fill("<", "To: ")),
        ("quotes", fill("\"a\\", "To: ")),
        ("for clauses", fill("for <<", "Received: ")),
        ("commas", fill(",", "To: ")),
        ("folds", fill("\n ", "To: a")),
        ("group colons", fill("a:", "To: ")),
    ];
    let mut slowest = (Duration::ZERO, "");
    for (name, msg) in cases {
        for (config, complete) in [(0, true), (1, false), (2, true)] {
            let started = Instant::now();
            let d = decide(&configs()[config], &Envelope::default(), &msg, complete);
            let took = started.elapsed();
            assert!(matches!(d.status().exit_code(), 0 | 65 | 67 | 75), "{name}");
            slowest = slowest.max((took, name));
            assert!(
                took < Duration::from_secs(2),
                "{name}: {took:?} for {} bytes",
                msg.len()
            );
        }
        let started = Instant::now();
        checks::check_address_list(&msg);
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "{name}: address_list"
        );
    }
    eprintln!("slowest hostile decision: {:?} ({})", slowest.0, slowest.1);
}

/// The policy and deliver cannot disagree: for any recipient, the RCPT
/// answer of `mailpipe policy` is a 550 exactly when `decide` rejects a
/// message to it whose headers carry no key, and its text is deliver's
/// report line; an accepted recipient is never refused (no SIZE=, no rate
/// limit).
#[test]
fn policy_refuses_exactly_what_deliver_bounces_for_the_envelope() {
    use mailpipe::policy::answer;
    let now = Instant::now();
    let (mut refused, mut passed) = (0, 0);
    for_cases(cases(4000), 0x9011c4, |rng| {
        let e = envelope(rng);
        let Some(recipient) = e.recipients.first().cloned() else {
            return Vec::new();
        };
        let recipient = recipient.trim_matches(['<', '>']).to_string();
        for config in configs() {
            let a = answer::for_recipient(config, "s@x", &recipient, None, None, now);
            let envelope = Envelope {
                recipients: vec![recipient.clone()],
                ..Envelope::default()
            };
            let d = decide(config, &envelope, b"Subject: no key here\n\nbody\n", true);
            let dedicated = config
                .routes
                .iter()
                .any(|r| r.template.is_fixed_address(&recipient));
            let in_domain = config.routes.iter().any(|r| {
                recipient
                    .rsplit_once('@')
                    .is_some_and(|(_, dom)| dom.eq_ignore_ascii_case(r.template.domain()))
            });
            // A recipient with no key in it is left to deliver (it may find
            // one after DATA): the policy answers DUNNO.
            let keyed = config
                .routes
                .iter()
                .any(|r| r.template.raw_key_of(&recipient).is_some());
            match d.status() {
                Status::Rejected(..) if in_domain && !dedicated && keyed => {
                    refused += 1;
                    assert_eq!(
                        a.action,
                        format!("550 {}", d.status().report_line().unwrap()),
                        "{recipient:?}"
                    )
                }
                _ => {
                    passed += 1;
                    assert_eq!(a.action, answer::DUNNO, "{recipient:?}: {:?}", d.status())
                }
            }
        }
        recipient.into_bytes()
    });
    assert!(
        refused > 100 && passed > 100,
        "{refused} refused, {passed} passed"
    );
}
