#!/usr/bin/env bash
# Runs every fuzz target for a fixed time and reports executions and crashes.
#   bash fuzz/run.sh            # SECONDS_PER_TARGET=60
#   SECONDS_PER_TARGET=600 bash fuzz/run.sh smtp_data
# Needs cargo-fuzz (installed here if missing) and libFuzzer's C++ build
# (g++). cargo-fuzz passes unstable rustc flags, so RUSTC_BOOTSTRAP=1 lets
# the stable toolchain build it; the main build never needs this.
# Sanitizer: none by default (the code is safe Rust; we hunt panics, hangs
# and memory growth); SANITIZER=address for unsafe dependencies' C code.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
SECS=${SECONDS_PER_TARGET:-60}
SANITIZER=${SANITIZER:-none}
export RUSTC_BOOTSTRAP=1
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=(smtp_command smtp_data config cert_import http_front)
status=0
printf '| target | seconds | executions | exec/s | corpus | crashes |\n|---|---:|---:|---:|---:|---:|\n' > report.md
for t in "${TARGETS[@]}"; do
    mkdir -p "corpus/$t" "artifacts/$t"
    work=$(mktemp -d)   # new inputs go here; the committed corpus stays small
    log="artifacts/$t/last-run.log"
    set +e
    cargo fuzz run -s "$SANITIZER" "$t" "$work" "corpus/$t" -- \
        -max_total_time="$SECS" -max_len=65536 -timeout=10 -rss_limit_mb=2048 \
        -artifact_prefix="artifacts/$t/" -print_final_stats=1 >"$log" 2>&1
    rc=$?
    set -e
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo 0)
    rate=$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo 0)
    size=$(ls "$work" | wc -l)
    crashes=$(ls "artifacts/$t" | grep -cE '^(crash|timeout|oom|leak)-' || true)
    printf '| %s | %s | %s | %s | %s | %s |\n' "$t" "$SECS" "${execs:-0}" "${rate:-0}" "$size" "$crashes" >> report.md
    if [ "$rc" -ne 0 ] || [ "$crashes" -ne 0 ]; then
        echo "fuzz: $t FAILED (exit $rc); see $log and artifacts/$t/" >&2
        tail -n 30 "$log" >&2
        status=1
    fi
    rm -rf "$work"
done
cat report.md
exit $status
