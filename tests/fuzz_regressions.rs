//! Replays every saved fuzz input through the fuzz targets' own checks, on
//! stable Rust under plain `cargo test`.
//!
//! `tests/fuzz-regressions/decide/` and `tests/fuzz-regressions/address_list/`
//! hold one input per file, in the byte layout of the matching target
//! (`fuzz/fuzz_targets/*.rs`; the decide layout is documented on
//! `DecideInput::from_bytes` in `fuzz/src/lib.rs`). Every crash, timeout
//! or out-of-memory input libFuzzer finds is copied here (see
//! tests/RELIABILITY.md), next to hand-made inputs from the hostile-input
//! table. Each must pass every property, and do it quickly.

// Test code: a failed unwrap is a failed test (clippy.toml allows it in
// #[test] functions; this covers the helpers too).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../fuzz/src/lib.rs"]
#[allow(dead_code)]
mod checks;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Generous for a debug build on a loaded 2-core machine; the fuzzer's own
/// limit (release build) is 2 s, and these inputs take milliseconds.
const SLOW: Duration = Duration::from_secs(10);

fn inputs(target: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fuzz-regressions")
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .filter(|p| {
            p.is_file()
                && !p
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("README"))
        })
        .collect();
    files.sort();
    files
}

fn replay(target: &str, check: fn(&[u8])) {
    let files = inputs(target);
    // An empty or missing folder must not pass silently.
    assert!(!files.is_empty(), "no regression inputs for {target}");
    for path in &files {
        let data = std::fs::read(path).expect("read regression input");
        let started = Instant::now();
        let outcome = std::panic::catch_unwind(|| check(&data));
        let took = started.elapsed();
        assert!(
            outcome.is_ok(),
            "{target}: {} violates a property (see the panic above)",
            path.display()
        );
        assert!(took < SLOW, "{target}: {} took {took:?}", path.display());
    }
    eprintln!("{target}: {} inputs replayed", files.len());
}

#[test]
fn decide_regressions() {
    replay("decide", checks::check_decide);
}

#[test]
fn address_list_regressions() {
    replay("address_list", checks::check_address_list);
}

/// The real-message corpus through both targets, when it is present (it
/// lives in shared/, next to the checkout, not in the repository).
#[test]
fn real_corpus_through_both_targets() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let Some(corpus) = [
        root.join("../shared/corpus/real"),
        PathBuf::from("/work/shared/corpus/real"),
    ]
    .into_iter()
    .find(|p| p.is_dir()) else {
        eprintln!("real corpus not found; skipped");
        return;
    };
    let mut stack = vec![corpus];
    let mut n = 0;
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read corpus dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "eml") {
                let msg = std::fs::read(&path).expect("read message");
                checks::check_address_list(&msg);
                for flags in [0x00u8, 0x04, 0x05, 0x06] {
                    let mut input = vec![flags];
                    input.extend_from_slice(&msg);
                    checks::check_decide(&input);
                }
                n += 1;
            }
        }
    }
    assert!(n > 0, "the real corpus holds no .eml file");
    eprintln!("{n} real messages checked");
}

#[test]
fn policy_request_regressions() {
    replay("policy_request", checks::check_policy_request);
}
