#!/usr/bin/env bash
# STARTTLS handshake benchmark: Gatehouse vs a private Postfix instance, same
# box, same client (examples/tls_bench.rs), same certificate, same loopback.
#
# One run does everything:
#   1. builds Gatehouse and tls_bench (release);
#   2. starts Gatehouse (one `smtp` connector on a free loopback port) and
#      waits for it; its certificate store creates the default ECDSA P-256
#      certificate at first start;
#   3. copies that certificate's key.pem + chain.pem into ONE file (key first,
#      as smtpd_tls_chain_files wants) and starts a private Postfix (own
#      config_directory, queue_directory, data_directory, master.cf with
#      smtpd on another loopback port, smtpd_tls_security_level = may,
#      TLS >= 1.2, session tickets and a session cache so resumption works);
#      checks that both servers present the same certificate;
#   4. starts `tls_bench --serve-raw` (bare rustls server, rcgen ECDSA P-256,
#      no SMTP) for the ceiling;
#   5. runs tls_bench against each: full handshakes (resumption disabled),
#      TLS 1.3 resumed ones (shared ticket store, each ticket used once, as
#      rustls does) and TLS 1.2 resumed ones (session reused), same sessions
#      and duration, with CPU accounting for client, server and machine;
#   6. prints a markdown table and the machine info.
#
# A session (starttls mode) is: connect, 220, EHLO, 250, STARTTLS, 220,
# TLS handshake, QUIT over TLS, 221, close. "handshakes/s" = whole sessions
# completed per second inside the measurement window.
#
# Env (defaults in brackets):
#   SESSIONS [20] concurrent sessions   DURATION [10] seconds per run
#   WARMUP [1] seconds of uncounted load before each run
#   PREWARM [2] seconds of load on each server before the first run
#   KX [default] client key-exchange groups: default (aws-lc-rs order:
#      X25519MLKEM768 + X25519 shares), x25519 (X25519 share; P-256 also
#      listed, which TLS 1.2 with an ECDSA P-256 certificate needs), p256
#   BENCH_DIR [/var/tmp] parent of the work dir
#   GATEHOUSE_BIN / TLS_BENCH_BIN  use these binaries instead of building
#   KEEP_WORK=1 keep the work dir
#   PIN [0] 1 = run every server on CPU 0 and the client on CPU 1
#      (taskset), so each server gets one core to itself and the client
#      cannot steal it: sessions/s then measures handshakes per server
#      core, the figure seed 000 asks for. Postfix's master and every
#      child it forks (smtpd, tlsmgr, ...) inherit the affinity.
# Needs root (Postfix's master), postfix, openssl, python3, cargo.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

SESSIONS=${SESSIONS:-20}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-1}
PREWARM=${PREWARM:-2}
KX=${KX:-default}
BENCH_DIR=${BENCH_DIR:-/var/tmp}
BAR=3
BENCH_LINES=()
PIN=${PIN:-0}
PIN_LABEL=""; [ "$PIN" = 1 ] && PIN_LABEL=", server pinned to 1 core"
if [ "$PIN" = 1 ]; then
    command -v taskset >/dev/null 2>&1 || { echo "[bench] FATAL: taskset not found (apt-get install util-linux)" >&2; exit 1; }
    [ "$(nproc)" -ge 2 ] || { echo "[bench] FATAL: PIN=1 needs 2 CPUs" >&2; exit 1; }
    ON_SERVER_CPU=(taskset -c 0)
    ON_CLIENT_CPU=(taskset -c 1)
else
    ON_SERVER_CPU=()
    ON_CLIENT_CPU=()
fi

say() { printf '[bench] %s\n' "$*" >&2; }
die() { printf '[bench] FATAL: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "run as root (the private Postfix master must start as root)"
for tool in postfix postconf openssl python3 awk; do
    command -v "$tool" >/dev/null 2>&1 || die "'$tool' not found (apt-get install postfix openssl python3)"
done
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

# --- build -----------------------------------------------------------------------
T_START=$(date +%s)
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
if [ -n "${GATEHOUSE_BIN:-}" ]; then
    GH_BIN=$GATEHOUSE_BIN
else
    say "building: cargo build --release --locked"
    cargo build --release --locked >&2 || die "release build of gatehouse failed"
    GH_BIN="$TARGET_DIR/release/gatehouse"
fi
if [ -n "${TLS_BENCH_BIN:-}" ]; then
    TB_BIN=$TLS_BENCH_BIN
else
    say "building: cargo build --release --locked --example tls_bench"
    cargo build --release --locked --example tls_bench >&2 || die "release build of tls_bench failed"
    TB_BIN="$TARGET_DIR/release/examples/tls_bench"
fi
[ -x "$GH_BIN" ] || die "gatehouse binary not found at $GH_BIN"
[ -x "$TB_BIN" ] || die "tls_bench binary not found at $TB_BIN"

# --- work dir and cleanup -------------------------------------------------------------
mkdir -p "$BENCH_DIR"
WORK=$(mktemp -d "$BENCH_DIR/gatehouse-tls-bench.XXXXXX")
chmod 755 "$WORK"   # Postfix daemons (user postfix) must reach the queue below it
GH_PID=""
RAW_PID=""
PF_STARTED=0
stop_pid() { # pid
    local pid=$1
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
}
on_exit() {
    local rc=$?
    set +e
    stop_pid "$RAW_PID"
    stop_pid "$GH_PID"
    [ "$PF_STARTED" = 1 ] && postfix -c "$WORK/postfix/etc" stop >/dev/null 2>&1
    if [ "$rc" -ne 0 ]; then
        echo "---- gatehouse stderr (last 30 lines) ----" >&2; tail -n 30 "$WORK/gatehouse.stderr" >&2 2>/dev/null
        echo "---- postfix log (last 30 lines) ----" >&2; tail -n 30 "$WORK/postfix/maillog" >&2 2>/dev/null
        echo "(work dir kept: $WORK)" >&2
    elif [ "${KEEP_WORK:-0}" = 1 ]; then
        say "work dir kept: $WORK"
    else
        rm -rf "$WORK"
    fi
    exit "$rc"
}
trap on_exit EXIT
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/../tests/interop/lib.sh"
trap 'exit 130' INT
trap 'exit 143' TERM


# --- Gatehouse ----------------------------------------------------------------------------
GH_PORT=$(freeport)
GH_DATA="$WORK/gatehouse-data"
cat > "$WORK/gatehouse.toml" <<EOF
[server]
hostname = "gatehouse.bench.test"
data_dir = "$GH_DATA"

[[receive_connector]]
name = "Default"
role = "smtp"
listen = ["127.0.0.1:$GH_PORT"]
max_connections = 20000
max_connections_per_ip = 20000
relay_networks = []

[[accepted_domain]]
domain = "example.test"
type = "authoritative"

[[mailbox]]
name = "catchall"
addresses = ["@example.test"]
delivery = "discard"
EOF
"$GH_BIN" check-config --config "$WORK/gatehouse.toml" >&2 || die "gatehouse check-config failed"
say "starting gatehouse (127.0.0.1:$GH_PORT)"
"${ON_SERVER_CPU[@]}" "$GH_BIN" serve --config "$WORK/gatehouse.toml" >"$WORK/gatehouse.stdout" 2>"$WORK/gatehouse.stderr" &
GH_PID=$!
wait_port "$GH_PORT" 30 "$GH_PID" || die "gatehouse not accepting on 127.0.0.1:$GH_PORT"

# The default certificate: `gatehouse cert list` marks it; else the only one.
THUMB=$("$GH_BIN" cert list --config "$WORK/gatehouse.toml" 2>/dev/null \
    | awk 'NR > 1 && $3 == "yes" && $1 ~ /^[0-9A-F]{40}$/ {print $1; exit}') || true
if [ -z "$THUMB" ]; then
    THUMB=$(find "$GH_DATA/certs" -mindepth 2 -maxdepth 2 -name chain.pem -printf '%h\n' | head -n 1 | xargs -r basename)
fi
CERT_DIR="$GH_DATA/certs/$THUMB"
[ -n "$THUMB" ] && [ -s "$CERT_DIR/chain.pem" ] && [ -s "$CERT_DIR/key.pem" ] \
    || die "no default certificate with chain.pem and key.pem under $GH_DATA/certs"
say "gatehouse default certificate: $THUMB"

# --- private Postfix with the same certificate ------------------------------------------------
PF="$WORK/postfix"
PF_PORT=$(freeport "$GH_PORT")
mkdir -p "$PF/etc" "$PF/spool" "$PF/data"
chown postfix: "$PF/data"; chmod 700 "$PF/data"
# smtpd_tls_chain_files: key first, then the leaf and its issuers, one file.
cat "$CERT_DIR/key.pem" "$CERT_DIR/chain.pem" > "$PF/etc/gatehouse-cert.pem"
chmod 600 "$PF/etc/gatehouse-cert.pem"
PROCS=$(( SESSIONS * 2 > 100 ? SESSIONS * 2 : 100 ))
cat > "$PF/etc/main.cf" <<EOF
# Private Postfix instance for the TLS handshake benchmark. Not the system one.
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
mydestination = example.test
local_recipient_maps =
alias_maps =
alias_database =
local_transport = discard
default_transport = discard
relay_transport = discard
fast_flush_domains =
biff = no
default_process_limit = $PROCS
# No per-client limits in the way (all load comes from 127.0.0.1).
smtpd_client_connection_count_limit = 0
smtpd_client_connection_rate_limit = 0
# STARTTLS with the certificate Gatehouse created (key + chain in one file).
smtpd_tls_security_level = may
smtpd_tls_chain_files = $PF/etc/gatehouse-cert.pem
smtpd_tls_protocols = >=TLSv1.2
smtpd_tls_mandatory_protocols = >=TLSv1.2
smtpd_tls_loglevel = 0
smtpd_tls_received_header = no
# Resumption: TLS 1.3 stateless tickets (keys from tlsmgr, default
# tls_session_ticket_cipher) live as long as the cache timeout; the cache
# database serves TLS 1.2 session IDs.
smtpd_tls_session_cache_timeout = 3600s
smtpd_tls_session_cache_database = btree:\${data_directory}/smtpd_scache
smtp_tls_security_level = none
EOF
private_postfix_master_cf "$PF/etc/master.cf" "$PF_PORT" \
    "tlsmgr    unix  -       -       n       1000?   1       tlsmgr"
say "starting private postfix: postfix -c $PF/etc start (127.0.0.1:$PF_PORT)"
postfix -c "$PF/etc" check >&2 || die "postfix -c $PF/etc check failed"
"${ON_SERVER_CPU[@]}" postfix -c "$PF/etc" start >&2 || die "postfix -c $PF/etc start failed"
PF_STARTED=1
wait_port "$PF_PORT" 30 || die "private postfix not accepting on 127.0.0.1:$PF_PORT"

# --- raw rustls server (ceiling) -------------------------------------------------------------
RAW_PORT=$(freeport "$GH_PORT" "$PF_PORT")
"${ON_SERVER_CPU[@]}" "$TB_BIN" --serve-raw "$RAW_PORT" >"$WORK/raw.stdout" 2>"$WORK/raw.stderr" &
RAW_PID=$!
wait_port "$RAW_PORT" 30 "$RAW_PID" || die "raw rustls server not accepting on 127.0.0.1:$RAW_PORT"

# --- same certificate on both? ---------------------------------------------------------------
served_fp() { # port
    openssl s_client -connect "127.0.0.1:$1" -starttls smtp -showcerts </dev/null 2>/dev/null \
        | openssl x509 -noout -fingerprint -sha1 2>/dev/null | sed 's/.*=//; s/://g'
}
GH_FP=$(served_fp "$GH_PORT" || true)
PF_FP=$(served_fp "$PF_PORT" || true)
if [ "$GH_FP" = "$THUMB" ] && [ "$PF_FP" = "$THUMB" ]; then
    CERT_CHECK="same certificate on both (SHA-1 $THUMB, ECDSA P-256)"
else
    CERT_CHECK="MISMATCH: store $THUMB, gatehouse serves ${GH_FP:-?}, postfix serves ${PF_FP:-?}"
    say "WARNING: $CERT_CHECK"
fi
say "$CERT_CHECK"

# --- machine info ---------------------------------------------------------------------------
CPU_MODEL=$(awk -F': *' '/^model name/ {print $2; exit}' /proc/cpuinfo)
[ -n "$CPU_MODEL" ] || CPU_MODEL=$(lscpu 2>/dev/null | awk -F': *' '/Model name/ {print $2; exit}')
NPROC=$(nproc)
MACHINE_INFO=$(cat <<EOF
date:      $(date -u '+%Y-%m-%d %H:%M:%S UTC')
nproc:     $NPROC
cpu:       ${CPU_MODEL:-unknown}
memory:    $(awk '/^MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo)
kernel:    $(uname -srm)
os:        $(. /etc/os-release 2>/dev/null && echo "$PRETTY_NAME")
postfix:   $(postconf -d -h mail_version 2>/dev/null), $(openssl version)
gatehouse: $GH_BIN $(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo "(no commit)")
cert:      $CERT_CHECK
load:      tls_bench, SESSIONS=$SESSIONS concurrent, DURATION=${DURATION}s (+${WARMUP}s warm-up) per run, KX=$KX, PIN=$PIN, 127.0.0.1
EOF
)

# --- runs -------------------------------------------------------------------------------------
PF_MASTER=$(tr -d ' \n' < "$PF/spool/pid/master.pid" 2>/dev/null || true)
pid_of() { case $1 in postfix) echo "$PF_MASTER" ;; gatehouse) echo "$GH_PID" ;; raw) echo "$RAW_PID" ;; esac; }
declare -A R
FAILED=0
run() { # target kind(full|resumed|resumed12) mode port [extra tls_bench args...]
    local target=$1 kind=$2 mode=$3 port=$4 flags=() out line k v pid
    shift 4
    case $kind in
        resumed) flags=(--resume) ;;
        resumed12) flags=(--resume --tls12) ;;
    esac
    pid=$(pid_of "$target")
    [ -n "$pid" ] && flags+=(--server-pid "$pid")
    say "run: $target, $kind ($mode, 127.0.0.1:$port)"
    if ! out=$("${ON_CLIENT_CPU[@]}" "$TB_BIN" --addr "127.0.0.1:$port" --mode "$mode" --sessions "$SESSIONS" \
            --duration "$DURATION" --warmup "$WARMUP" --kx "$KX" --label "$target-$kind" \
            "${flags[@]}" "$@" 2>&1); then
        printf '%s\n' "$out" | sed 's/^/    /' >&2
        say "  $target $kind FAILED"
        FAILED=1
        return 0
    fi
    printf '%s\n' "$out" | grep -v '^RESULT ' | sed 's/^/    /' >&2
    line=$(printf '%s\n' "$out" | grep '^RESULT ' | tail -n 1)
    for kv in $line; do
        k=${kv%%=*}; v=${kv#*=}
        [ "$k" = "$kv" ] && continue
        R[$target.$kind.$k]=$v
    done
}
# Warm both servers up (process pools, caches, page cache) before measuring.
for target in postfix gatehouse; do
    port=$PF_PORT; [ "$target" = gatehouse ] && port=$GH_PORT
    say "warm-up: $target, ${PREWARM}s"
    "${ON_CLIENT_CPU[@]}" "$TB_BIN" --addr "127.0.0.1:$port" --mode starttls --sessions "$SESSIONS" --duration "$PREWARM" \
        --warmup 0 --kx "$KX" >/dev/null 2>&1 || say "  warm-up against $target reported errors"
done
for kind in full resumed resumed12; do
    run postfix "$kind" starttls "$PF_PORT"
    run gatehouse "$kind" starttls "$GH_PORT"
done
for kind in full resumed resumed12; do
    run raw "$kind" raw "$RAW_PORT"
done

# Postfix must not have complained (a TLS or tlsmgr problem shows up here).
PF_WARN=$(grep -cE 'warning|fatal|panic' "$PF/maillog" 2>/dev/null || true)
GH_WARN=$(grep -cE ' (WARN|ERROR) ' "$WORK/gatehouse.stderr" 2>/dev/null || true)

# --- table ------------------------------------------------------------------------------------
get() { echo "${R[$1]:-}"; }
num() { [[ "$1" =~ ^[0-9]+(\.[0-9]+)?$ ]]; }
pos() { num "$1" && awk -v b="$1" 'BEGIN {exit !(b > 0)}'; }
fmt_rate() { if num "$1"; then printf "%.0f" "$1"; else echo "FAILED"; fi; }
ratio() { if num "$1" && pos "$2"; then awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f×", a / b}'; else echo "-"; fi; }
verdict() { if num "$1" && pos "$2"; then
    awk -v a="$1" -v b="$2" -v bar="$BAR" 'BEGIN {if (a / b >= bar) print "met"; else print "**not met**"}'
    else echo "-"; fi; }
pct() { if num "$1"; then printf '%s %%' "$1"; else echo "-"; fi; }
lat() { if num "$1"; then printf '%s / %s' "$1" "$2"; else echo "-"; fi; }
per_core() { if num "$1"; then awk -v r="$1" -v n="$NPROC" 'BEGIN {printf "%.0f", r / n}'; else echo "-"; fi; }
of_ceiling() { if num "$1" && pos "$2"; then awk -v a="$1" -v b="$2" 'BEGIN {printf "%.0f %%", 100 * a / b}'; else echo "-"; fi; }
cpu3() { # target field -> "a / b / c" over the three kinds
    echo "$(get "$1.full.$2") / $(get "$1.resumed.$2") / $(get "$1.resumed12.$2")"; }
label_of() { case $1 in
    full) echo "full handshakes/s (TLS 1.3, no resumption)" ;;
    resumed) echo "resumed handshakes/s (TLS 1.3 tickets, each used once)" ;;
    resumed12) echo "resumed handshakes/s (TLS 1.2, session reused)" ;;
esac; }

{
echo
echo "================ STARTTLS handshakes ================"
echo "$MACHINE_INFO"
echo
echo "| | Postfix | Gatehouse | Gatehouse/Postfix | bar (≥ ${BAR}×) |"
echo "|---|---:|---:|---:|---|"
for kind in full resumed resumed12; do
    p=$(get "postfix.$kind.rate"); g=$(get "gatehouse.$kind.rate")
    echo "| $(label_of "$kind") | $(fmt_rate "$p") | $(fmt_rate "$g") | $(ratio "$g" "$p") | $(verdict "$g" "$p") |"
    # One machine-readable line per figure, for bench/all.sh.
    BENCH_LINES+=("BENCH-RESULT|STARTTLS $(label_of "$kind")${PIN_LABEL}|Postfix|$(fmt_rate "$p")|$(fmt_rate "$g")|$(ratio "$g" "$p" | tr -d '×')|≥ ${BAR}× Postfix|$(verdict "$g" "$p" | tr -d '*')")
done
echo "| resumed %: full / TLS 1.3 resumed / TLS 1.2 resumed run | $(get postfix.full.resumed_pct) / $(get postfix.resumed.resumed_pct) / $(get postfix.resumed12.resumed_pct) % | $(get gatehouse.full.resumed_pct) / $(get gatehouse.resumed.resumed_pct) / $(get gatehouse.resumed12.resumed_pct) % | | |"
echo "| session latency p50 / p99 (ms), full | $(lat "$(get postfix.full.p50_ms)" "$(get postfix.full.p99_ms)") | $(lat "$(get gatehouse.full.p50_ms)" "$(get gatehouse.full.p99_ms)") | | |"
echo "| session latency p50 / p99 (ms), TLS 1.3 resumed | $(lat "$(get postfix.resumed.p50_ms)" "$(get postfix.resumed.p99_ms)") | $(lat "$(get gatehouse.resumed.p50_ms)" "$(get gatehouse.resumed.p99_ms)") | | |"
echo "| session latency p50 / p99 (ms), TLS 1.2 resumed | $(lat "$(get postfix.resumed12.p50_ms)" "$(get postfix.resumed12.p99_ms)") | $(lat "$(get gatehouse.resumed12.p50_ms)" "$(get gatehouse.resumed12.p99_ms)") | | |"
echo "| server CPU µs per session: full / 1.3 resumed / 1.2 resumed | $(cpu3 postfix server_us_per_hs) | $(cpu3 gatehouse server_us_per_hs) | $(ratio "$(get postfix.full.server_us_per_hs)" "$(get gatehouse.full.server_us_per_hs)") less CPU (full) | |"
echo "| client CPU µs per session: full / 1.3 resumed / 1.2 resumed | $(cpu3 postfix client_us_per_hs) | $(cpu3 gatehouse client_us_per_hs) | | |"
echo "| machine busy s (of $(awk -v d="$DURATION" -v n="$NPROC" 'BEGIN {print d * n}')): full / 1.3 res / 1.2 res | $(cpu3 postfix machine_cpu_s) | $(cpu3 gatehouse machine_cpu_s) | | |"
echo "| other CPU s (neither client nor server) | $(cpu3 postfix other_cpu_s) | $(cpu3 gatehouse other_cpu_s) | | |"
echo "| errors: full / 1.3 res / 1.2 res | $(cpu3 postfix errors) | $(cpu3 gatehouse errors) | | |"
echo "| negotiated (full / TLS 1.2 runs) | $(get postfix.full.params | sed 's/:[0-9]*//g') / $(get postfix.resumed12.params | sed 's/:[0-9]*//g') | $(get gatehouse.full.params | sed 's/:[0-9]*//g') / $(get gatehouse.resumed12.params | sed 's/:[0-9]*//g') | | |"
echo
echo "Ceiling: bare rustls server (tls_bench --serve-raw: rcgen ECDSA P-256, Gatehouse's ServerConfig settings, no SMTP; same client; handshake + close_notify only):"
echo
echo "| | raw rustls handshakes/s | per core (÷ $NPROC) | resumed % | server CPU µs per handshake | Gatehouse as % of ceiling |"
echo "|---|---:|---:|---:|---:|---:|"
for kind in full resumed resumed12; do
    r=$(get "raw.$kind.rate")
    echo "| $(label_of "$kind" | sed 's/ handshakes\/s//') | $(fmt_rate "$r") | $(per_core "$r") | $(pct "$(get raw.$kind.resumed_pct)") | $(get raw.$kind.server_us_per_hs) | $(of_ceiling "$(get gatehouse.$kind.rate)" "$r") |"
done
echo
echo "Notes: a session is connect, 220, EHLO, STARTTLS, 220, handshake, QUIT/221 over TLS, close (raw: handshake and close_notify)."
echo "Client, servers and ceiling share the $NPROC CPUs; 'other CPU' is busy time not charged to the client or the server process tree (kernel work, anything else running)."
if num "$(get postfix.resumed.resumed_pct)" && awk -v r="$(get postfix.resumed.resumed_pct)" 'BEGIN {exit !(r < 60)}'; then
    echo "Postfix resumed only $(get postfix.resumed.resumed_pct) % with TLS 1.3: it sends a ticket after a full handshake but none after a resumed one (openssl s_client -sess_in shows no new ticket), and rustls uses each ticket once, so every other session is full. The TLS 1.2 row compares pure resumptions."
fi
echo "Log check: postfix maillog warnings/fatal: ${PF_WARN:-?}; gatehouse WARN/ERROR lines: ${GH_WARN:-?}. Total script time: $(( $(date +%s) - T_START )) s."
}
printf '%s\n' "${BENCH_LINES[@]}"
[ "$FAILED" -eq 0 ] || { say "some runs failed (see above)"; exit 1; }
