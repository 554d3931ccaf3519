#!/bin/sh
# Benchmark of `mailpipe drain`: N small messages (default 1,000, ~200
# bytes each) spooled into incoming_email/new/, then one timed
# `mailpipe drain --once` (release build) posting them to a stand-in for
# GitLab's mail_room API on 127.0.0.1 that verifies every JWT like GitLab.
# Prints messages per second. Only loopback is contacted.
#
# Usage: bench/drain.sh [MESSAGES] [CONCURRENCY] [RUNS]
# The test behind it: bench_drain_small_messages in tests/drain.rs.
set -eu
cd "$(dirname "$0")/.."
# Its own target folder: `cargo test --release` would otherwise replace
# target/release/mailpipe, the static build bench/run and the packages use,
# with a dynamically linked one.
CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target/bench}"
export CARGO_TARGET_DIR
messages="${1:-1000}"
concurrency="${2:-4}"
runs="${3:-3}"
cargo test --release --test drain --no-run -q
i=0
while [ "$i" -lt "$runs" ]; do
    MAILPIPE_BENCH_MESSAGES="$messages" MAILPIPE_BENCH_CONCURRENCY="$concurrency" \
        cargo test --release -q --test drain -- --ignored --nocapture --exact \
        bench_drain_small_messages 2>&1 | grep '^drain:' || {
            echo "bench/drain.sh: the benchmark failed; run it without the filter:" >&2
            echo "  MAILPIPE_BENCH_MESSAGES=$messages cargo test --release --test drain -- --ignored --nocapture bench_drain_small_messages" >&2
            exit 1
        }
    i=$((i + 1))
done
