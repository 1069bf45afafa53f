#!/usr/bin/env bash
# SMTP accept-rate benchmark: Gatehouse vs a private Postfix instance, same box,
# same client (Postfix's smtp-source), same loopback, same file system.
#
# Both servers acknowledge a message only after it is durable:
#   * Postfix: cleanup fsyncs the queue file before smtpd sends 250; every
#     message then goes to the `discard` transport (default_transport,
#     local_transport), so nothing is relayed or stored afterwards.
#   * Gatehouse: mailbox `delivery = "discard"` (accepted durably, then dropped).
# Both log (Postfix via postlogd to a file, Gatehouse to <data_dir>/log).
#
# Modes: "new"   = one connection per message (smtp-source default)
#        "reuse" = connection reuse (smtp-source -d)
#
# Env (defaults in brackets):
#   MESSAGES [20000]  SESSIONS [20]  SIZE [1024] body bytes
#   MODES ["new reuse"]  TARGETS ["postfix gatehouse"] (TARGETS=postfix runs Postfix alone)
#   WARMUP [500] messages per target before measuring
#   BENCH_DIR [/var/tmp] parent of the work dir (queues live here: use a real
#             disk, not tmpfs, or fsync costs nothing)
#   GATEHOUSE_BIN  use this binary instead of `cargo build --release --locked`
#   KEEP_WORK=1    keep the work dir
#   PIN [0]        1 = every server on CPU 0, smtp-source on CPU 1 (taskset):
#                  each server gets one core to itself and the client cannot
#                  take it, so msg/s measures the server (per core) rather
#                  than the server plus smtp-source sharing two cores.
#                  Postfix's master and all its children inherit CPU 0.
# Needs root (Postfix's master), postfix (for smtp-source), cargo.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

MESSAGES=${MESSAGES:-20000}
SESSIONS=${SESSIONS:-20}
SIZE=${SIZE:-1024}
MODES=${MODES:-new reuse}
TARGETS=${TARGETS:-postfix gatehouse}
WARMUP=${WARMUP:-500}
BENCH_DIR=${BENCH_DIR:-/var/tmp}
RUN_TIMEOUT=${RUN_TIMEOUT:-900}
BENCH_LINES=()
PIN=${PIN:-0}
if [ "$PIN" = 1 ]; then
    ON_SERVER_CPU=(taskset -c 0); ON_CLIENT_CPU=(taskset -c 1); PIN_LABEL=", server pinned to 1 core"
else
    ON_SERVER_CPU=(); ON_CLIENT_CPU=(); PIN_LABEL=""
fi

say() { printf '[bench] %s\n' "$*"; }
die() { printf '[bench] FATAL: %s\n' "$*" >&2; exit 1; }
has_target() { case " $TARGETS " in *" $1 "*) return 0 ;; esac; return 1; }

[ "$(id -u)" -eq 0 ] || die "run as root (the private Postfix master must start as root)"
for tool in smtp-source postfix python3 awk; do
    command -v "$tool" >/dev/null 2>&1 || die "'$tool' not found (apt-get install postfix)"
done
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

# --- build -----------------------------------------------------------------------
GH_BIN=""
if has_target gatehouse; then
    if [ -n "${GATEHOUSE_BIN:-}" ]; then
        GH_BIN=$GATEHOUSE_BIN
    else
        say "building: cargo build --release --locked"
        cargo build --release --locked || die "release build failed (TARGETS=postfix runs Postfix alone)"
        GH_BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/gatehouse"
    fi
    [ -x "$GH_BIN" ] || die "gatehouse binary not found at $GH_BIN"
fi

# --- work dir ----------------------------------------------------------------------
mkdir -p "$BENCH_DIR"
WORK=$(mktemp -d "$BENCH_DIR/gatehouse-bench.XXXXXX")
chmod 755 "$WORK"   # Postfix daemons (user postfix) must reach the queue below it
GH_PID=""
PF_STARTED=0
on_exit() {
    local rc=$?
    set +e
    if [ -n "$GH_PID" ] && kill -0 "$GH_PID" 2>/dev/null; then
        kill -TERM "$GH_PID"
        for _ in $(seq 1 150); do kill -0 "$GH_PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$GH_PID" 2>/dev/null
        wait "$GH_PID" 2>/dev/null
    fi
    [ "$PF_STARTED" = 1 ] && postfix -c "$WORK/postfix/etc" stop >/dev/null 2>&1
    if [ "$rc" -ne 0 ]; then
        echo "---- gatehouse stderr (last 50 lines) ----"; tail -n 50 "$WORK/gatehouse.stderr" 2>/dev/null
        echo "---- postfix log (last 50 lines) ----"; tail -n 50 "$WORK/postfix/maillog" 2>/dev/null
        echo "(work dir kept: $WORK)"
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


# --- machine info ---------------------------------------------------------------------
fs_info() {
    if command -v findmnt >/dev/null; then
        findmnt -n -o FSTYPE,SOURCE,OPTIONS --target "$1"
    else
        df -T "$1" | awk 'NR==2 {print $2, $1}'
    fi
}
CPU_MODEL=$(awk -F': *' '/^model name/ {print $2; exit}' /proc/cpuinfo)
[ -n "$CPU_MODEL" ] || CPU_MODEL=$(lscpu 2>/dev/null | awk -F': *' '/Model name/ {print $2; exit}')
MACHINE_INFO=$(cat <<EOF
date:        $(date -u '+%Y-%m-%d %H:%M:%S UTC')
nproc:       $(nproc)
cpu:         ${CPU_MODEL:-unknown}
memory:      $(awk '/^MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo)
kernel:      $(uname -srm)
os:          $(. /etc/os-release 2>/dev/null && echo "$PRETTY_NAME")
data dir fs: $(fs_info "$WORK")   ($WORK)
postfix:     $(postconf -d -h mail_version 2>/dev/null)
gatehouse:   ${GH_BIN:-not run} $(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo "(no commit)")
load:        MESSAGES=$MESSAGES SESSIONS=$SESSIONS SIZE=$SIZE bytes, smtp-source, PIN=$PIN, 127.0.0.1
EOF
)
echo "$MACHINE_INFO"
case "$(fs_info "$WORK" | awk '{print $1}')" in
    tmpfs|ramfs) say "WARNING: $WORK is on $(fs_info "$WORK" | awk '{print $1}'): fsync is free there, numbers are not representative" ;;
esac

# --- private Postfix --------------------------------------------------------------------
PF="$WORK/postfix"
PF_PORT=""
if has_target postfix; then
    PF_PORT=$(freeport)
    mkdir -p "$PF/etc" "$PF/spool" "$PF/data"
    chown postfix: "$PF/data"; chmod 700 "$PF/data"
    PROCS=$(( SESSIONS * 2 > 100 ? SESSIONS * 2 : 100 ))
    cat > "$PF/etc/main.cf" <<EOF
# Private Postfix instance for the accept-rate benchmark. Not the system one.
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
# Every accepted message is discarded after cleanup's fsync-before-250.
mydestination = example.test
local_recipient_maps =
alias_maps =
alias_database =
local_transport = discard
default_transport = discard
relay_transport = discard
smtpd_tls_security_level = none
smtp_tls_security_level = none
fast_flush_domains =
biff = no
default_process_limit = $PROCS
EOF
    private_postfix_master_cf "$PF/etc/master.cf" "$PF_PORT"
    say "starting private postfix: postfix -c $PF/etc start (127.0.0.1:$PF_PORT)"
    "${ON_SERVER_CPU[@]}" postfix -c "$PF/etc" start || die "postfix -c $PF/etc start failed"
    PF_STARTED=1
    wait_port "$PF_PORT" 30 || die "private postfix not accepting on 127.0.0.1:$PF_PORT"
fi

# --- Gatehouse ----------------------------------------------------------------------------
GH_PORT=""
GH_DATA="$WORK/gatehouse-data"
if has_target gatehouse; then
    GH_PORT=$(freeport "$PF_PORT")
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
    "$GH_BIN" check-config --config "$WORK/gatehouse.toml" || die "gatehouse check-config failed"
    say "starting gatehouse (127.0.0.1:$GH_PORT)"
    "${ON_SERVER_CPU[@]}" "$GH_BIN" serve --config "$WORK/gatehouse.toml" >"$WORK/gatehouse.stdout" 2>"$WORK/gatehouse.stderr" &
    GH_PID=$!
    wait_port "$GH_PORT" 30 "$GH_PID" || die "gatehouse not accepting on 127.0.0.1:$GH_PORT"
fi

port_of() { if [ "$1" = postfix ]; then echo "$PF_PORT"; else echo "$GH_PORT"; fi; }

# Wait (bounded) until the server's queue is empty or no longer changing, so a
# run does not pay for the previous run's background work.
queue_files() {
    if [ "$1" = postfix ]; then
        find "$PF/spool/incoming" "$PF/spool/active" "$PF/spool/deferred" "$PF/spool/maildrop" -type f 2>/dev/null | wc -l
    else
        find "$GH_DATA/queue" -type f 2>/dev/null | wc -l
    fi
}
drain() {
    local n prev=-1 stable=0 i
    for i in $(seq 1 240); do
        n=$(queue_files "$1")
        [ "$n" -eq 0 ] && return 0
        if [ "$n" -eq "$prev" ]; then stable=$((stable + 1)); else stable=0; fi
        [ "$stable" -ge 10 ] && return 0   # 5 s unchanged: a persistent file, not a backlog
        prev=$n
        sleep 0.5
    done
    say "warning: $1 queue still has $n files after 120 s"
}
discarded_by_postfix() { grep -c 'postfix/discard\[.*status=sent' "$PF/maillog" 2>/dev/null || true; }

declare -A RATE SECS
run_source() { # target mode messages -> prints elapsed seconds; fails on client errors
    local target=$1 mode=$2 n=$3 port flags=() t0 t1 rc
    port=$(port_of "$target")
    [ "$mode" = reuse ] && flags=(-d)
    t0=$(date +%s.%N)
    set +e
    timeout "$RUN_TIMEOUT" "${ON_CLIENT_CPU[@]}" smtp-source "${flags[@]}" -s "$SESSIONS" -m "$n" -l "$SIZE" \
        -f bench@example.test -t rcpt@example.test "127.0.0.1:$port" 2>"$WORK/smtp-source.err"
    rc=$?
    set -e
    t1=$(date +%s.%N)
    if [ "$rc" -ne 0 ] || [ -s "$WORK/smtp-source.err" ]; then
        say "smtp-source against $target ($mode) exited $rc; stderr:" >&2
        head -n 20 "$WORK/smtp-source.err" >&2
        [ "$rc" -ne 0 ] && return 1
    fi
    awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.3f\n", b - a}'
}

FAILED=0
for target in $TARGETS; do
    if [ "$WARMUP" -gt 0 ]; then
        say "warm-up: $target, $WARMUP messages"
        run_source "$target" new "$WARMUP" >/dev/null || FAILED=1
        drain "$target"
    fi
done

for mode in $MODES; do
    for target in $TARGETS; do
        drain "$target"
        before=""
        [ "$target" = postfix ] && before=$(discarded_by_postfix)
        label="new connection per message"; [ "$mode" = reuse ] && label="connection reuse (-d)"
        say "run: $target, $label, $MESSAGES x $SIZE B, $SESSIONS sessions"
        if ! secs=$(run_source "$target" "$mode" "$MESSAGES"); then
            FAILED=1; RATE[$target.$mode]="FAILED"; SECS[$target.$mode]="-"; continue
        fi
        rate=$(awk -v n="$MESSAGES" -v s="$secs" 'BEGIN {printf "%.0f", n / s}')
        RATE[$target.$mode]=$rate; SECS[$target.$mode]=$secs
        say "  $target $mode: $secs s, $rate msg/s"
        if [ "$target" = postfix ]; then
            drain postfix
            for _ in $(seq 1 60); do   # postlogd writes asynchronously
                [ $(( $(discarded_by_postfix) - before )) -ge "$MESSAGES" ] && break; sleep 0.5
            done
            say "  postfix log: $(( $(discarded_by_postfix) - before )) of $MESSAGES messages accepted and discarded"
        fi
    done
done

echo
echo "================ SMTP accept rate ================"
echo "$MACHINE_INFO"
echo
printf '| %-28s | %-9s | %10s | %10s |\n' "mode" "server" "seconds" "msg/s"
printf '|%s|%s|%s|%s|\n' "------------------------------" "-----------" "------------" "------------"
for mode in $MODES; do
    label="new connection per message"; [ "$mode" = reuse ] && label="connection reuse (-d)"
    for target in $TARGETS; do
        printf '| %-28s | %-9s | %10s | %10s |\n' "$label" "$target" "${SECS[$target.$mode]:-}" "${RATE[$target.$mode]:-}"
    done
    if has_target postfix && has_target gatehouse; then
        g=${RATE[gatehouse.$mode]:-}; p=${RATE[postfix.$mode]:-}
        if [[ "$g" =~ ^[0-9]+$ ]] && [[ "$p" =~ ^[0-9]+$ ]] && [ "$p" -gt 0 ]; then
            printf '| %-28s | %-9s | %10s | %10s |\n' "$label" "G/P ratio" "" \
                "$(awk -v g="$g" -v p="$p" 'BEGIN {printf "%.2fx", g / p}')"
            BENCH_LINES+=("BENCH-RESULT|durable accept msg/s, $label$PIN_LABEL|Postfix|$p|$g|$(awk -v g="$g" -v p="$p" 'BEGIN {printf "%.2f", g / p}')|≥ 5× Postfix|$(awk -v g="$g" -v p="$p" 'BEGIN {print (g / p >= 5 ? "met" : "not met")}')")
        fi
    fi
done
printf '%s\n' "${BENCH_LINES[@]}"
[ "$FAILED" -eq 0 ] || { say "some runs failed (see above)"; exit 1; }
