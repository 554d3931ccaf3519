#!/bin/sh
# Benchmark of the drain's circuit breaker: 1,000 small messages through a
# daemon `mailpipe drain` (release build) to the loopback stand-in for
# GitLab's mail_room API (tests/drain_support), which verifies every JWT
# and fails a given share of requests at random (500/502/503, 429 without
# Retry-After, dropped connections, hangs past the request timeout), or
# answers 503 to everything for 20 s (an outage). Prints, per retry
# schedule, one table: time to 95 % and 100 % of the messages healthy,
# 5 % and 20 % failing, with ratios against the healthy run of the same
# invocation; requests and probes during the outage, the time to drain
# after it, duplicates. Only 127.0.0.1 is contacted.
#
# Usage: bench/breaker.sh [SCHEDULES...]
#   a schedule is INITIAL:MAX retry seconds; default "30:3600 1:8" (the
#   defaults, then short delays). MAILPIPE_BENCH_MESSAGES,
#   MAILPIPE_BENCH_CONCURRENCY, MAILPIPE_BENCH_LATENCY_MS (the stand-in takes
#   50 ms to accept, as GitLab does its own work), MAILPIPE_BENCH_TIMEOUT (request timeout,
#   default 5 s), MAILPIPE_BENCH_CAP and MAILPIPE_BENCH_OUTAGE override.
# The code behind it: bench_drain_breaker in tests/drain_breaker.rs.
set -eu
cd "$(dirname "$0")/.."
# Its own target folder: `cargo test --release` would otherwise replace
# target/release/mailpipe, the static build bench/run and the packages use,
# with a dynamically linked one.
CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target/bench}"
export CARGO_TARGET_DIR
[ "$#" -gt 0 ] || set -- 30:3600 1:8
cargo test --release --test drain_breaker --no-run -q
for schedule in "$@"; do
    initial="${schedule%%:*}"
    max="${schedule##*:}"
    MAILPIPE_BENCH_INITIAL="$initial" MAILPIPE_BENCH_MAX="$max" \
        cargo test --release -q --test drain_breaker -- --ignored --nocapture --exact \
        bench_drain_breaker 2>&1 | grep -E '^(breaker:|\||$)' || {
            echo "bench/breaker.sh: the benchmark failed; run it without the filter:" >&2
            echo "  MAILPIPE_BENCH_INITIAL=$initial MAILPIPE_BENCH_MAX=$max cargo test --release --test drain_breaker -- --ignored --nocapture bench_drain_breaker" >&2
            exit 1
        }
    echo
done
