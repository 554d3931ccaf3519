#!/usr/bin/env bash
# bench/policy.sh: `mailpipe policy` on its own, and Postfix with the policy
# versus without it, in one run (GitLab issue 13). Not part of CI; it
# judges nothing, it measures. As root.
#
#   bench/policy.sh [--no-build] [--bin PATH] [--rounds N] [--msgs N] [--keep]
#
#  1. The policy service alone (release build, on a unix socket): the C
#     client bench/policy_client.c sends Postfix 3.7's RCPT TO request (31
#     attributes, ~700 bytes) and waits for each answer, as smtpd does; 1
#     connection, then 10 and 50 at once (like that many smtpd processes).
#     Recipients cycle through a valid key with a new sender each time (a
#     new rate bucket), a key no handler accepts (550) and another domain.
#     Requests/s and latency p50/p99/max.
#  2. A private Postfix built from the shipped postfix/ files the way
#     tests/postfix_support does: N x 4 KB over SMTP (smtp-source -s 5) to
#     one reply key, delivered by the mailpipe pipe(8) transport, with and
#     without the shipped main.policy.cf lines (postconf -e / -X and
#     postfix reload between rounds; rounds interleaved, the order
#     alternating). The rate limits
#     are raised for this run only, so every message is accepted: the
#     buckets are still looked up and charged for each one.
#  3. A table: medians, the ratio with/without, and the issue's targets.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD=yes
KEEP=no
ROUNDS=5
MSGS=1000
BIN="$REPO/target/release/mailpipe"
while (($#)); do
    case $1 in
        --no-build) BUILD=no ;;
        --bin) BIN=$(realpath "$2"); BUILD=no; shift ;;
        --rounds) ROUNDS=$2; shift ;;
        --msgs) MSGS=$2; shift ;;
        --keep) KEEP=yes ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "bench/policy.sh: unknown option $1" >&2; exit 2 ;;
    esac
    shift
done
die() { echo "bench/policy.sh: $*" >&2; exit 1; }
say() { echo "bench/policy.sh: $*" >&2; }
[[ $(id -u) == 0 ]] || die "run as root (it starts a private Postfix)"
for t in postfix smtp-source gcc; do command -v "$t" >/dev/null || die "$t missing (scripts/install-test-deps)"; done

if [[ $BUILD == yes ]]; then
    say "scripts/build-release (the static PIE the packages ship)"
    (cd "$REPO" && scripts/build-release >/dev/null)
fi
[[ -x $BIN ]] || die "$BIN missing"

W=$(mktemp -d /tmp/mailpipe-bench-policy.XXXXXX)
chmod 755 "$W"
P="$W/postfix"
PF_RUNNING=no
POLICY_PID=
cleanup() {
    [[ -n $POLICY_PID ]] && kill "$POLICY_PID" 2>/dev/null || true
    [[ $PF_RUNNING == yes ]] && postfix -c "$P/conf" stop >/dev/null 2>&1 || true
    if [[ $KEEP == no ]]; then rm -rf "$W"; else say "kept $W"; fi
}
trap cleanup EXIT

gcc -O2 -pthread -o "$W/policy_client" "$REPO/bench/policy_client.c"
KEY=0123456789abcdef0123456789abcdef
DOMAIN=incoming.gitlab.example.com
RCPT="incoming+$KEY@$DOMAIN"
USER_MP=$(sed -n 's/.*user=\([a-z_][a-z0-9_-]*\).*/\1/p' "$REPO/postfix/master.cf" | head -n1)
PORT=$((20000 + RANDOM % 30000))

pf_substitute() {
    sed -e "s#/usr/bin/mailpipe#$P/bin/mailpipe#g" \
        -e "s#/etc/mailpipe/#$P/etc/mailpipe/#g" \
        -e "s#/etc/postfix/#$P/conf/#g" \
        -e "s#/var/spool/mailpipe#$P/spool#g" "$@"
}

# ----- the instance (as tests/postfix_support builds it) -------------------
mkdir -p "$P"/{conf,queue,bin,etc/mailpipe}
chmod 755 "$P" "$P"/{conf,queue,bin,etc,etc/mailpipe}
install -d -o postfix -g postfix -m 0700 "$P/data"
install -d -o "$USER_MP" -g "$USER_MP" -m 0750 "$P/spool"
install -d -o nobody -m 0755 "$P/bounces"
install -m 0755 "$BIN" "$P/bin/mailpipe"
base=$(awk '/^const BASE_MASTER_CF: &str = "\\$/{f=1;next} f&&/^";/{exit} f{print}' \
    "$REPO/tests/postfix_support/mod.rs")
{
    echo "127.0.0.1:$PORT inet n - n - - smtpd"
    echo "$base"
    pf_substitute "$REPO/postfix/master.cf"
} >"$P/conf/master.cf"
cat >"$P/conf/main.cf" <<EOF
compatibility_level = 3.6
queue_directory = $P/queue
data_directory = $P/data
mail_owner = postfix
setgid_group = postdrop
myhostname = mx-bench-policy.bench.test
mydomain = bench.test
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mydestination = localhost
mynetworks =
default_transport = error:5.7.1 bench instance: nothing leaves this machine
relay_transport = error:5.7.1 bench instance: nothing leaves this machine
smtpd_peername_lookup = no
local_header_rewrite_clients =
maillog_file = $P/maillog
maillog_file_prefixes = $P
alias_maps = hash:$P/conf/aliases
alias_database = hash:$P/conf/aliases
biff = no
in_flow_delay = 0
queue_run_delay = 3600s
minimal_backoff_time = 3600s
maximal_backoff_time = 3600s
EOF
pf_substitute "$REPO/postfix/main.cf" >>"$P/conf/main.cf"
for f in mailpipe_transport recipients.subaddress.regexp; do
    pf_substitute "$REPO/postfix/$f" >"$P/conf/$f"
done
{
    pf_substitute "$REPO/postfix/mailpipe.toml"
    printf '\n[policy]\n# bench/policy.sh: every message accepted, buckets still charged\n'
    printf 'sender_key_burst = 100000000\nkey_burst = 100000000\n'
} >"$P/etc/mailpipe/mailpipe.toml"
chmod 644 "$P/conf"/* "$P/etc/mailpipe/mailpipe.toml"
postmap "$P/conf/mailpipe_transport"
printf 'postmaster: %s/bounces/\nroot: postmaster\nMAILER-DAEMON: postmaster\n' "$P" >"$P/conf/aliases"
postalias "$P/conf/aliases"
postfix -c "$P/conf" check || die "postfix check failed"
postfix -c "$P/conf" start >/dev/null 2>&1 || die "postfix start failed"
PF_RUNNING=yes
for _ in $(seq 100); do [[ -d $P/queue/private ]] && break; sleep 0.1; done

# The policy service, as the postfix user (the owner of private/; under
# systemd, mailpipe-policy.socket creates the socket there instead).
SOCK="$P/queue/private/mailpipe-policy"
setpriv --reuid=postfix --regid=postfix --init-groups \
    "$P/bin/mailpipe" policy --config="$P/etc/mailpipe/mailpipe.toml" --listen="unix:$SOCK" \
    2>"$W/policy.log" &
POLICY_PID=$!
for _ in $(seq 100); do [[ -S $SOCK ]] && break; sleep 0.1; done
[[ -S $SOCK ]] || die "policy service did not start: $(cat "$W/policy.log")"

# ----- 1. the policy service alone -----------------------------------------
declare -A RPS P50 P99 PMAX
for conns in 1 10 50; do
    per=$((60000 / conns))
    "$W/policy_client" "$SOCK" "$conns" 2000 >/dev/null # warm-up
    line=$("$W/policy_client" "$SOCK" "$conns" "$per")
    say "$conns connection(s): $line"
    get() { sed -n "s/.*\b$1=\([0-9.]*\).*/\1/p" <<<"$line"; }
    RPS[$conns]=$(get rps); P50[$conns]=$(get p50_us); P99[$conns]=$(get p99_us); PMAX[$conns]=$(get max_us)
done

# ----- 2. Postfix with and without the policy ------------------------------
printf 'From: Bench <sender@client.example>\nTo: <%s>\nSubject: Re: bench\nMessage-ID: <bench@client.example>\n\n' "$RCPT" >"$W/4k.eml"
head -c 3900 /dev/zero | tr '\0' 'x' | fold -w 76 >>"$W/4k.eml"
policy_lines=$(grep -vE '^[#[:space:]]' "$REPO/postfix/main.policy.cf" | grep '=')
mode_on() {
    local l
    while IFS= read -r l; do postconf -c "$P/conf" -e "$l"; done <<<"$policy_lines"
    postfix -c "$P/conf" reload >/dev/null 2>&1
}
mode_off() {
    postconf -c "$P/conf" -X $(sed 's/[ \t]*=.*//' <<<"$policy_lines" | paste -sd' ')
    postfix -c "$P/conf" reload >/dev/null 2>&1
}
sent() { grep -c 'status=sent' "$P/maillog" 2>/dev/null || true; }
round() { # prints messages per second
    local before start end deadline
    rm -f "$P/spool/incoming_email/new/"* 2>/dev/null || true
    sleep 1
    before=$(sent)
    start=$(date +%s.%N)
    smtp-source -s 5 -m "$MSGS" -F "$W/4k.eml" -f sender@client.example -t "$RCPT" \
        "127.0.0.1:$PORT" >/dev/null 2>"$W/smtp-source.err" || die "smtp-source: $(head -c 300 "$W/smtp-source.err")"
    deadline=$((SECONDS + 300))
    while (($(sent) < before + MSGS)); do
        ((SECONDS < deadline)) || die "only $(($(sent) - before)) of $MSGS delivered"
        sleep 0.05
    done
    end=$(date +%s.%N)
    awk -v n="$MSGS" -v a="$start" -v b="$end" 'BEGIN{printf "%.1f", n / (b - a)}'
}
OFF=() ON=()
# Interleaved, the order alternating per round, so a drift in the load of
# the machine does not favour one mode.
for r in $(seq "$ROUNDS"); do
    if ((r % 2)); then
        mode_off; OFF+=("$(round)"); say "round $r without policy: ${OFF[-1]} msg/s"
        mode_on; ON+=("$(round)"); say "round $r with policy: ${ON[-1]} msg/s"
    else
        mode_on; ON+=("$(round)"); say "round $r with policy: ${ON[-1]} msg/s"
        mode_off; OFF+=("$(round)"); say "round $r without policy: ${OFF[-1]} msg/s"
    fi
done
rejects=$(grep -c 'NOQUEUE: reject' "$P/maillog" || true)
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END{print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
m_off=$(median "${OFF[@]}")
m_on=$(median "${ON[@]}")
ratio=$(awk -v a="$m_on" -v b="$m_off" 'BEGIN{printf "%.3f", a / b}')
ok() { awk -v x="$1" -v t="$2" 'BEGIN{print (x >= t) ? "ok" : "missed"}'; }

# ----- 3. the table ----------------------------------------------------------
echo "## mailpipe policy ($(date -u +%Y-%m-%d), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg))"
echo
echo "| policy service alone (unix socket, ${BIN#"$REPO"/}) | requests/s | p50 µs | p99 µs | max µs |"
echo "|---|---:|---:|---:|---:|"
for conns in 1 10 50; do
    echo "| $conns connection(s), one request at a time each | ${RPS[$conns]} | ${P50[$conns]} | ${P99[$conns]} | ${PMAX[$conns]} |"
done
echo
echo "| Postfix, $MSGS × 4 KB, smtp-source -s 5, $ROUNDS rounds | messages/s (median) | rounds |"
echo "|---|---:|---|"
echo "| without the policy | $m_off | ${OFF[*]} |"
echo "| with main.policy.cf | $m_on | ${ON[*]} |"
echo
echo "| target | measured | |"
echo "|---|---:|---|"
echo "| policy ≥ 10,000 requests/s (1 connection) | ${RPS[1]} | $(ok "${RPS[1]}" 10000) |"
echo "| Postfix with / without ≥ 0.95 | $ratio | $(ok "$ratio" 0.95) |"
echo
echo "Refused at RCPT during the Postfix rounds: $rejects (expected 0). mailpipe $(git -C "$REPO" rev-parse --short HEAD), postfix $(postconf -h mail_version)."
