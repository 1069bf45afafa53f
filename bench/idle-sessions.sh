#!/usr/bin/env bash
# Idle-session memory benchmark: hold N SMTP sessions open against Gatehouse
# (each past the banner and EHLO, then idle) and read Gatehouse's resident
# memory from /proc/<pid>/status, against the bar of 200 MiB at 10,000 sessions.
#
# Env (defaults in brackets):
#   CONNECTIONS [10000]  sessions to hold
#   RSS_BAR_MB  [200]    bar for VmRSS with all sessions open, in MiB
#   SETTLE      [5]      seconds to wait after the last EHLO before reading RSS
#   PARALLEL    [200]    connection attempts in flight at once
#   BENCH_DIR   [/var/tmp]  parent of the work dir
#   GATEHOUSE_BIN  use this binary instead of `cargo build --release --locked`
#   KEEP_WORK=1    keep the work dir
# Exit status: 0 if all sessions were established, stayed open, and VmRSS <= bar.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

CONNECTIONS=${CONNECTIONS:-10000}
RSS_BAR_MB=${RSS_BAR_MB:-200}
SETTLE=${SETTLE:-5}
PARALLEL=${PARALLEL:-200}
BENCH_DIR=${BENCH_DIR:-/var/tmp}

say() { printf '[idle] %s\n' "$*"; }
die() { printf '[idle] FATAL: %s\n' "$*" >&2; exit 1; }
command -v python3 >/dev/null || die "python3 not found"

# --- file descriptors: both Gatehouse and the client need CONNECTIONS + slack ----
NEED_FDS=$((CONNECTIONS + 1024))
if [ "$(ulimit -Hn)" != unlimited ] && [ "$(ulimit -Hn)" -lt "$NEED_FDS" ]; then
    ulimit -Hn "$NEED_FDS" 2>/dev/null || true    # only root can raise the hard limit
fi
ulimit -n "$NEED_FDS" 2>/dev/null || ulimit -n "$(ulimit -Hn)"
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt "$NEED_FDS" ]; then
    die "open-file limit $(ulimit -n) < $NEED_FDS needed for $CONNECTIONS sessions (run as root or raise the hard limit)"
fi
say "ulimit -n = $(ulimit -n)"
PORTS=$(awk '{print $2 - $1 + 1}' /proc/sys/net/ipv4/ip_local_port_range)
[ "$PORTS" -ge "$CONNECTIONS" ] || say "warning: only $PORTS local ports for $CONNECTIONS connections to one address"

# --- build -------------------------------------------------------------------------
if [ -n "${GATEHOUSE_BIN:-}" ]; then
    GH_BIN=$GATEHOUSE_BIN
else
    say "building: cargo build --release --locked"
    cargo build --release --locked
    GH_BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/gatehouse"
fi
[ -x "$GH_BIN" ] || die "gatehouse binary not found at $GH_BIN"

mkdir -p "$BENCH_DIR"
WORK=$(mktemp -d "$BENCH_DIR/gatehouse-idle.XXXXXX")
GH_PID=""
CL_PID=""
on_exit() {
    local rc=$?
    set +e
    [ -n "$CL_PID" ] && kill -TERM "$CL_PID" 2>/dev/null && wait "$CL_PID" 2>/dev/null
    if [ -n "$GH_PID" ] && kill -0 "$GH_PID" 2>/dev/null; then
        kill -TERM "$GH_PID"
        for _ in $(seq 1 150); do kill -0 "$GH_PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$GH_PID" 2>/dev/null
        wait "$GH_PID" 2>/dev/null
    fi
    if [ "$rc" -ne 0 ]; then
        echo "---- gatehouse stderr (last 40 lines) ----"; tail -n 40 "$WORK/gatehouse.stderr" 2>/dev/null
        echo "---- client stderr (last 20 lines) ----"; tail -n 20 "$WORK/client.stderr" 2>/dev/null
        echo "(work dir kept: $WORK)"
    elif [ "${KEEP_WORK:-0}" = 1 ]; then
        say "work dir kept: $WORK"
    else
        rm -rf "$WORK"
    fi
    exit "$rc"
}
trap on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
MAXC=$(( CONNECTIONS * 2 > 20000 ? CONNECTIONS * 2 : 20000 ))
cat > "$WORK/gatehouse.toml" <<EOF
[server]
hostname = "gatehouse.bench.test"
data_dir = "$WORK/gatehouse-data"

[[receive_connector]]
name = "Default"
role = "smtp"
listen = ["127.0.0.1:$PORT"]
max_connections = $MAXC
max_connections_per_ip = $MAXC
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

"$GH_BIN" serve --config "$WORK/gatehouse.toml" >"$WORK/gatehouse.stdout" 2>"$WORK/gatehouse.stderr" &
GH_PID=$!
for i in $(seq 1 300); do
    (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break
    kill -0 "$GH_PID" 2>/dev/null || die "gatehouse exited during start-up"
    [ "$i" -lt 300 ] || die "gatehouse not accepting on 127.0.0.1:$PORT after 30 s"
    sleep 0.1
done
sleep 1

status_kb() { awk -v k="$1:" '$1 == k {print $2}' "/proc/$GH_PID/status"; }
fds() { ls "/proc/$GH_PID/fd" 2>/dev/null | wc -l; }
mib() { awk -v kb="$1" 'BEGIN {printf "%.1f MiB", kb / 1024}'; }

BASE_RSS=$(status_kb VmRSS)
BASE_FDS=$(fds)
say "gatehouse pid $GH_PID on 127.0.0.1:$PORT, idle: VmRSS $(mib "$BASE_RSS"), $BASE_FDS fds"

say "opening $CONNECTIONS sessions (banner + EHLO each, $PARALLEL in flight)"
python3 "$ROOT/bench/idle_client.py" --port "$PORT" -n "$CONNECTIONS" --parallel "$PARALLEL" \
    >"$WORK/client.stdout" 2>"$WORK/client.stderr" &
CL_PID=$!
for i in $(seq 1 1200); do
    grep -q '^READY' "$WORK/client.stdout" 2>/dev/null && break
    kill -0 "$CL_PID" 2>/dev/null || die "client exited early: $(tail -n 5 "$WORK/client.stderr")"
    kill -0 "$GH_PID" 2>/dev/null || die "gatehouse exited while sessions were being opened"
    [ "$i" -lt 1200 ] || die "client not ready after 600 s"
    sleep 0.5
done
READY=$(grep '^READY' "$WORK/client.stdout")
say "client: $READY"
grep '^error' "$WORK/client.stderr" | head -n 5 | sed 's/^/[idle]   /' || true

sleep "$SETTLE"
kill -0 "$GH_PID" 2>/dev/null || die "gatehouse exited while holding sessions"
RSS=$(status_kb VmRSS)
HWM=$(status_kb VmHWM)
THREADS=$(status_kb Threads)
FDS=$(fds)

kill -TERM "$CL_PID"
wait "$CL_PID" && CL_RC=0 || CL_RC=$?
CL_PID=""
CLOSING=$(grep '^CLOSING' "$WORK/client.stdout" || echo "CLOSING (no report)")

ESTABLISHED=$(sed -n 's/.*established=\([0-9]*\).*/\1/p' <<<"$READY")
BAR_KB=$((RSS_BAR_MB * 1024))
PER_SESSION=$(awk -v a="$RSS" -v b="$BASE_RSS" -v n="$ESTABLISHED" \
    'BEGIN {if (n > 0) printf "%.1f KiB", (a - b) / n; else print "n/a"}')

echo
echo "================ idle sessions: Gatehouse memory ================"
echo "machine:            $(nproc) CPU, $(awk -F': *' '/^model name/ {print $2; exit}' /proc/cpuinfo), $(uname -sr)"
echo "sessions requested: $CONNECTIONS"
echo "client:             $READY"
echo "                    $CLOSING"
echo "gatehouse idle:     VmRSS $(mib "$BASE_RSS") ($BASE_RSS kB), $BASE_FDS fds"
echo "gatehouse loaded:   VmRSS $(mib "$RSS") ($RSS kB), VmHWM $(mib "$HWM"), $THREADS threads, $FDS fds"
echo "per session:        $PER_SESSION (RSS delta / established sessions)"
echo "bar:                VmRSS <= $RSS_BAR_MB MiB with $CONNECTIONS sessions"

RESULT=PASS
[ "$RSS" -le "$BAR_KB" ] || { RESULT=FAIL; echo "-> VmRSS above the bar"; }
[ "${ESTABLISHED:-0}" -eq "$CONNECTIONS" ] || { RESULT=FAIL; echo "-> not all sessions were established"; }
[ "$CL_RC" -eq 0 ] || { RESULT=FAIL; echo "-> client reported failures or server-closed sessions"; }
echo "result:             $RESULT"
echo "BENCH-RESULT|RSS with $CONNECTIONS idle SMTP sessions (MiB)|-|-|$(awk -v k="$RSS" 'BEGIN {printf "%.1f", k / 1024}')|-|< $RSS_BAR_MB MiB|$([ "$RESULT" = PASS ] && echo met || echo "not met")"
[ "$RESULT" = PASS ]
