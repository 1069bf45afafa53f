#!/usr/bin/env bash
# Relay throughput benchmark: Gatehouse vs a private Postfix instance, each
# relaying MESSAGES messages of SIZE bytes received from Postfix's
# smtp-source to Postfix's smtp-sink, all on 127.0.0.1, in the same run.
#
#   smtp-source -s SESSIONS -m MESSAGES -l SIZE ──▶ server ──▶ smtp-sink (its own per target)
#
# End-to-end time: from starting smtp-source until the target's smtp-sink
# has counted MESSAGES completed transactions (smtp-sink -c). Both servers
# fsync every accepted message before their 250 and relay through one
# smart host with up to 20 connections and connection reuse:
#   * Postfix: relayhost = [127.0.0.1]:SINK, TLS off, default concurrency 20.
#   * Gatehouse: [[send_connector]] smart_hosts = ["[127.0.0.1]:SINK"],
#     tls = "none", max_connections_per_destination = 20.
#
# Env (defaults in brackets): MESSAGES [20000] SESSIONS [20] SIZE [1024]
#   WARMUP [500]  TARGETS ["postfix gatehouse"]  BENCH_DIR [/var/tmp]
#   GATEHOUSE_BIN (else cargo build --release --locked)  KEEP_WORK=1
# Needs root (Postfix's master), postfix (smtp-source, smtp-sink), cargo.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
source "$ROOT/tests/interop/lib.sh"

MESSAGES=${MESSAGES:-20000}
SESSIONS=${SESSIONS:-20}
SIZE=${SIZE:-1024}
WARMUP=${WARMUP:-500}
TARGETS=${TARGETS:-postfix gatehouse}
BENCH_DIR=${BENCH_DIR:-/var/tmp}
RUN_TIMEOUT=${RUN_TIMEOUT:-900}

say() { printf '[relay-bench] %s\n' "$*"; }
die() { printf '[relay-bench] FATAL: %s\n' "$*" >&2; exit 1; }
has_target() { case " $TARGETS " in *" $1 "*) return 0 ;; esac; return 1; }

[ "$(id -u)" -eq 0 ] || die "run as root (the private Postfix master must start as root)"
for tool in smtp-source smtp-sink postfix python3 awk; do
    command -v "$tool" >/dev/null 2>&1 || die "'$tool' not found (apt-get install postfix)"
done
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

GH_BIN=""
if has_target gatehouse; then
    if [ -n "${GATEHOUSE_BIN:-}" ]; then GH_BIN=$GATEHOUSE_BIN
    else
        say "building: cargo build --release --locked"
        cargo build --release --locked || die "release build failed"
        GH_BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/gatehouse"
    fi
    [ -x "$GH_BIN" ] || die "no gatehouse binary at $GH_BIN"
fi

WORK=$(mktemp -d "$BENCH_DIR/gatehouse-relay-bench.XXXXXX")
chmod 755 "$WORK"
GH_PID=""; PF_STARTED=0; SINK_PIDS=()
on_exit() {
    local rc=$?
    set +e
    [ -n "$GH_PID" ] && kill -TERM "$GH_PID" 2>/dev/null && wait "$GH_PID" 2>/dev/null
    [ "$PF_STARTED" = 1 ] && postfix -c "$WORK/postfix/etc" stop >/dev/null 2>&1
    for p in "${SINK_PIDS[@]}"; do kill -TERM "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
    if [ "$rc" -ne 0 ] || [ "${KEEP_WORK:-0}" = 1 ]; then say "work dir kept: $WORK"; else rm -rf "$WORK"; fi
    exit "$rc"
}
trap on_exit EXIT

read -r PF_PORT GH_PORT PF_SINK GH_SINK <<<"$(freeports 4)"
start_sink() { # port counter-file
    smtp-sink -u nobody -c "127.0.0.1:$1" 1024 >"$2" 2>&1 &
    SINK_PIDS+=($!)
    wait_port "$1" 10 || die "smtp-sink on $1 did not start"
}
sink_count() { tr '\r' '\n' <"$1" | awk -F'mesg=' 'NF > 1 {n = $2 + 0} END {print n + 0}'; }

echo "date:      $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
echo "nproc:     $(nproc); cpu: $(awk -F': *' '/^model name/ {print $2; exit}' /proc/cpuinfo)"
echo "postfix:   $(postconf -d -h mail_version)"
echo "gatehouse: ${GH_BIN:-not run} $(git -C "$ROOT" describe --always --dirty 2>/dev/null)"
echo "load:      $MESSAGES x $SIZE B, $SESSIONS smtp-source sessions, relay to smtp-sink, $WORK"

PF="$WORK/postfix"
if has_target postfix; then
    start_sink "$PF_SINK" "$WORK/sink-postfix.count"
    mkdir -p "$PF/etc" "$PF/spool" "$PF/data"
    chown postfix: "$PF/data"; chmod 700 "$PF/data"
    PROCS=$(( SESSIONS * 2 > 100 ? SESSIONS * 2 : 100 ))
    cat > "$PF/etc/main.cf" <<EOF
compatibility_level = 3.6
config_directory = $PF/etc
queue_directory = $PF/spool
data_directory = $PF/data
maillog_file = $PF/maillog
maillog_file_prefixes = $WORK
myhostname = postfix.bench.test
mydomain = bench.test
myorigin = \$myhostname
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
mydestination =
local_recipient_maps =
alias_maps =
alias_database =
relayhost = [127.0.0.1]:$PF_SINK
smtpd_tls_security_level = none
smtp_tls_security_level = none
fast_flush_domains =
biff = no
default_process_limit = $PROCS
EOF
    private_postfix_master_cf "$PF/etc/master.cf" "$PF_PORT" \
        "smtp      unix  -       -       n       -       -       smtp" \
        "relay     unix  -       -       n       -       -       smtp"
    postfix -c "$PF/etc" start || die "postfix start failed"
    PF_STARTED=1
    wait_port "$PF_PORT" 30 || die "postfix not accepting"
fi

if has_target gatehouse; then
    start_sink "$GH_SINK" "$WORK/sink-gatehouse.count"
    cat > "$WORK/gatehouse.toml" <<EOF
[server]
hostname = "gatehouse.bench.test"
data_dir = "$WORK/gatehouse-data"

[[receive_connector]]
name = "Default"
role = "smtp"
listen = ["127.0.0.1:$GH_PORT"]
max_connections = 20000
max_connections_per_ip = 20000
relay_networks = ["127.0.0.1/32"]

[[send_connector]]
name = "Sink"
address_spaces = ["*"]
smart_hosts = ["[127.0.0.1]:$GH_SINK"]
tls = "none"
max_connections_per_destination = 20
protocol_log = true
EOF
    "$GH_BIN" check-config --config "$WORK/gatehouse.toml" || die "check-config failed"
    "$GH_BIN" serve --config "$WORK/gatehouse.toml" >"$WORK/gatehouse.stdout" 2>"$WORK/gatehouse.stderr" &
    GH_PID=$!
    wait_port "$GH_PORT" 30 "$GH_PID" || die "gatehouse not accepting"
fi

port_of() { if [ "$1" = postfix ]; then echo "$PF_PORT"; else echo "$GH_PORT"; fi; }
count_of() { sink_count "$WORK/sink-$1.count"; }

# run TARGET N: sends N messages, waits until the sink has N more; prints seconds.
run() {
    local target=$1 n=$2 base want t0 t1 got i
    base=$(count_of "$target"); want=$((base + n))
    t0=$(date +%s.%N)
    timeout "$RUN_TIMEOUT" smtp-source -d -s "$SESSIONS" -m "$n" -l "$SIZE" \
        -f bench@example.test -t rcpt@relay.bench.test "127.0.0.1:$(port_of "$target")" 2>"$WORK/smtp-source.err" \
        || { head -n 5 "$WORK/smtp-source.err" >&2; return 1; }
    for i in $(seq 1 $((RUN_TIMEOUT * 20))); do
        got=$(count_of "$target")
        [ "$got" -ge "$want" ] && break
        sleep 0.05
    done
    t1=$(date +%s.%N)
    got=$(count_of "$target")
    [ "$got" -ge "$want" ] || { say "$target: only $((got - base)) of $n relayed within ${RUN_TIMEOUT}s" >&2; return 1; }
    awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.3f\n", b - a}'
}

declare -A SECS RATE
for t in $TARGETS; do
    [ "$WARMUP" -gt 0 ] && { say "warm-up: $t, $WARMUP messages"; run "$t" "$WARMUP" >/dev/null; }
done
for t in $TARGETS; do
    sync; sleep 2
    say "run: $t, $MESSAGES messages end to end"
    SECS[$t]=$(run "$t" "$MESSAGES") || die "$t run failed"
    RATE[$t]=$(awk -v n="$MESSAGES" -v s="${SECS[$t]}" 'BEGIN {printf "%.0f", n / s}')
    say "$t: ${SECS[$t]} s, ${RATE[$t]} messages/s"
done

echo
echo "| target | messages | seconds | messages/s end to end |"
echo "|---|---|---|---|"
for t in $TARGETS; do echo "| $t | $MESSAGES | ${SECS[$t]} | ${RATE[$t]} |"; done
if has_target postfix && has_target gatehouse; then
    RATIO=$(awk -v g="${RATE[gatehouse]}" -v p="${RATE[postfix]}" 'BEGIN {printf "%.2f", g / p}')
    echo
    echo "ratio gatehouse/postfix: ${RATIO}x (bar: 3x)"
    echo "BENCH-RESULT|relay msg/s end to end (smtp-source -> server -> smtp-sink)|Postfix|${RATE[postfix]}|${RATE[gatehouse]}|$RATIO|≥ 3× Postfix|$(awk -v r="$RATIO" 'BEGIN {print (r >= 3 ? "met" : "not met")}')"
fi
