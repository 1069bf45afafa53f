#!/usr/bin/env bash
# Every benchmark, each side by side with its peer, in one run; then one
# table of the figures against the bars of SPEC section 3.
#
#   bash bench/all.sh                 # writes bench/results/<UTC stamp>/
#   ONLY="accept tls" bash bench/all.sh
#
# Each bench script prints, besides its own detailed table, one line per
# figure:  BENCH-RESULT|metric|peer|peer value|gatehouse value|ratio|bar|met
# and this script gathers those lines. A benchmark whose script is missing
# (not built yet) or fails is listed as such, never silently left out.
# Benchmarks (name: script [env]):
#   accept:     bench/smtp-accept.sh PIN=1          (Postfix, private instance; server on 1 core)
#   accept-shared: bench/smtp-accept.sh PIN=0       (smtp-source and server share the CPUs)
#   tls:        bench/tls-handshake.sh PIN=1        (Postfix; server on 1 core)
#   tls-shared: bench/tls-handshake.sh PIN=0        (client and server share the CPUs)
#   relay:      bench/relay.sh                      (Postfix -> smtp-sink)
#   idle:       bench/idle-sessions.sh              (absolute bar)
#   proxy:      bench/proxy.sh                      (nginx)
# Needs root and what each script needs (postfix, nginx, wrk, python3).
set -uo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
ONLY=${ONLY:-accept accept-shared tls tls-shared relay idle proxy}
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
OUT=${OUT:-$ROOT/bench/results/$STAMP}
mkdir -p "$OUT"

say() { printf '[all] %s\n' "$*" >&2; }

# Build once; every script reuses the binaries.
say "building release binaries"
cargo build --release --locked --bin gatehouse --example tls_bench >&2 || { say "build failed"; exit 1; }
export GATEHOUSE_BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/gatehouse"
export TLS_BENCH_BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/examples/tls_bench"

declare -A STATUS
run() { # name script [VAR=value ...]
    local name=$1 script=$2; shift 2
    case " $ONLY " in *" $name "*) ;; *) return ;; esac
    if [ ! -f "$script" ]; then
        STATUS[$name]="missing ($script)"; say "$name: $script missing"; return
    fi
    say "$name: $* bash $script  (log: $OUT/$name.log)"
    local t0=$SECONDS
    if env "$@" bash "$script" >"$OUT/$name.log" 2>"$OUT/$name.stderr"; then
        STATUS[$name]="ok ($((SECONDS - t0)) s)"
    else
        STATUS[$name]="FAILED (exit $?, $((SECONDS - t0)) s; see $name.log / $name.stderr)"
    fi
}

run accept bench/smtp-accept.sh PIN=1
run accept-shared bench/smtp-accept.sh PIN=0
run tls bench/tls-handshake.sh PIN=1
run tls-shared bench/tls-handshake.sh PIN=0
run relay bench/relay.sh
run idle bench/idle-sessions.sh
run proxy bench/proxy.sh

{
echo "# Gatehouse benchmark report, $STAMP"
echo
echo "- machine: $(nproc) CPU ($(awk -F': *' '/^model name/ {print $2; exit}' /proc/cpuinfo)), $(awk '/^MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo), $(uname -sr)"
echo "- gatehouse: $(git describe --always --dirty 2>/dev/null || echo '?'); postfix: $(postconf -d -h mail_version 2>/dev/null || echo 'not installed'); nginx: $(nginx -v 2>&1 | sed 's/.*nginx\///' || echo 'not installed')"
echo "- command: \`bash bench/all.sh\` (ONLY=\"$ONLY\"); logs in \`${OUT#"$ROOT"/}\`"
echo
echo "| figure | peer | peer value | Gatehouse | ratio | bar (SPEC 3) | met |"
echo "|---|---|---:|---:|---:|---|---|"
for name in accept accept-shared tls tls-shared relay idle proxy; do
    [ -n "${STATUS[$name]:-}" ] || continue
    if [ -f "$OUT/$name.log" ] && grep -q '^BENCH-RESULT|' "$OUT/$name.log"; then
        grep '^BENCH-RESULT|' "$OUT/$name.log" | while IFS='|' read -r _ metric peer pv gv ratio bar met; do
            [ "$ratio" = "-" ] || ratio="${ratio}×"
            echo "| $metric | $peer | $pv | $gv | $ratio | $bar | $met |"
        done
    else
        echo "| $name | | | | | | ${STATUS[$name]} |"
    fi
done
echo
echo "Runs:"
for name in accept accept-shared tls tls-shared relay idle proxy; do
    [ -n "${STATUS[$name]:-}" ] && echo "- $name: ${STATUS[$name]}"
done
} | tee "$OUT/report.md"
