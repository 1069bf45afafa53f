#!/usr/bin/env bash
# Proxy benchmark: wrk over TLS keep-alive through Gatehouse and through
# nginx configured as the equivalent TLS-terminating reverse proxy, same
# backend, same machine, one run.
#
#   backend:  nginx serving a small static file (1 KiB) over HTTPS with a
#             certificate from a test CA (backend.test);
#   gatehouse: one [[proxy]] listener, route /owa -> pool verified against
#             the CA (ca_file, tls_name = backend.test), HttpProxy log on;
#   nginx:    TLS front with Gatehouse's own default certificate (same key
#             type, ECDSA P-256), proxy_pass https with proxy_ssl_verify on,
#             the same CA and name, upstream keep-alive, X-Forwarded-For /
#             -Proto / -Host and Forwarded set, access log on (Gatehouse
#             writes its HttpProxy log), worker_processes auto;
#   wrk:      THREADS threads, CONNECTIONS keep-alive connections, DURATION
#             seconds, --latency; a WARMUP run first against each, then
#             ROUNDS rounds, each running both proxies back to back in
#             alternating order (on a shared 2-CPU machine one run varies
#             by +-10 %: one pair of runs cannot tell a 5 % difference).
#
# Prints the median req/s, p50, p99 and CPU per request of each proxy,
# the median of the rounds' Gatehouse/nginx ratios, and every round. Bar
# (SPEC 3): Gatehouse req/s >= nginx and p99 <= nginx, judged on the
# median of the per-round ratios (each round is a pair measured back to
# back; the machine's capacity drifts between rounds).
#
# Env (defaults in brackets): THREADS [2] CONNECTIONS [50] DURATION [10]
# WARMUP [3] ROUNDS [7] GATEHOUSE_BIN (else cargo build --release)
# KEEP_WORK=1.
# Needs: nginx, wrk, openssl, python3, cargo.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
# shellcheck source=tests/interop/lib.sh
. "$ROOT/tests/interop/lib.sh"

THREADS=${THREADS:-2}
CONNECTIONS=${CONNECTIONS:-50}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-3}
ROUNDS=${ROUNDS:-7}

say() { printf '[bench] %s\n' "$*" >&2; }
die() { printf '[bench] FATAL: %s\n' "$*" >&2; exit 1; }
for tool in nginx wrk openssl python3; do
    command -v "$tool" >/dev/null 2>&1 || die "'$tool' not found (apt-get install nginx wrk openssl)"
done
ulimit -n 65536 2>/dev/null || true

if [ -n "${GATEHOUSE_BIN:-}" ]; then
    GH_BIN=$GATEHOUSE_BIN
else
    say "building: cargo build --release --locked"
    cargo build --release --locked >&2
    GH_BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/gatehouse"
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/gatehouse-bench-proxy.XXXXXX")
chmod 755 "$WORK"
PIDS=()
cleanup() {
    set +e
    for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
    [ "${KEEP_WORK:-}" = 1 ] && say "work dir kept: $WORK" || rm -rf "$WORK"
}
trap cleanup EXIT
cd "$WORK"

# --- certificates -------------------------------------------------------------
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -subj "/CN=Bench CA" -keyout ca.key -out ca.pem \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -subj "/CN=backend.test" -keyout backend.key -out backend.csr 2>/dev/null
printf 'subjectAltName=DNS:backend.test\nextendedKeyUsage=serverAuth\n' > ext.cnf
openssl x509 -req -in backend.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 \
    -extfile ext.cnf -out backend.pem 2>/dev/null
chmod 644 ./*.pem ./*.key

read -r B_PORT GH_SMTP G_PORT N_PORT <<<"$(freeports 4)"
mkdir -p html/owa tmp logs
head -c 1024 /dev/zero | tr '\0' 'x' > html/owa/index.html
chmod -R a+rX html

# --- backend nginx --------------------------------------------------------------
cat > backend.conf <<EOF
worker_processes 1;
pid $WORK/backend.pid;
error_log $WORK/logs/backend-error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $WORK/tmp; proxy_temp_path $WORK/tmp; fastcgi_temp_path $WORK/tmp;
    uwsgi_temp_path $WORK/tmp; scgi_temp_path $WORK/tmp;
    keepalive_requests 1000000;
    server {
        listen 127.0.0.1:$B_PORT ssl;
        ssl_certificate $WORK/backend.pem;
        ssl_certificate_key $WORK/backend.key;
        root $WORK/html;
    }
}
EOF
nginx -p "$WORK" -c "$WORK/backend.conf" -g 'daemon off;' 2>logs/backend.stderr &
B_PID=$!
PIDS+=($B_PID)
wait_port "$B_PORT" 10 || die "backend nginx did not start"

# --- Gatehouse --------------------------------------------------------------------
cat > gatehouse.toml <<EOF
[server]
hostname = "mail.example.test"
data_dir = "$WORK/var"
[[receive_connector]]
name = "Default"
role = "smtp"
listen = ["127.0.0.1:$GH_SMTP"]
[[accepted_domain]]
domain = "example.test"
type = "authoritative"
[[proxy]]
name = "Front"
listen = ["127.0.0.1:$G_PORT"]
[[proxy.route]]
prefix = "/owa"
pool = "mbx"
[[backend_pool]]
name = "mbx"
ca_file = "$WORK/ca.pem"
[[backend_pool.server]]
address = "127.0.0.1:$B_PORT"
tls_name = "backend.test"
EOF
RUST_LOG=warn "$GH_BIN" serve --config gatehouse.toml >logs/gatehouse.out 2>logs/gatehouse.err &
GH_PID=$!
PIDS+=($GH_PID)
wait_port "$G_PORT" 30 "$GH_PID" || die "gatehouse did not start: $(cat logs/gatehouse.err)"
CERT_DIR=$(dirname "$(ls var/certs/*/chain.pem | head -n1)")

# --- nginx front (the equivalent proxy) ------------------------------------------------
cat > front.conf <<EOF
worker_processes auto;
pid $WORK/front.pid;
error_log $WORK/logs/front-error.log warn;
events { worker_connections 4096; }
http {
    access_log $WORK/logs/front-access.log;
    client_body_temp_path $WORK/tmp; proxy_temp_path $WORK/tmp; fastcgi_temp_path $WORK/tmp;
    uwsgi_temp_path $WORK/tmp; scgi_temp_path $WORK/tmp;
    keepalive_requests 1000000;
    upstream mbx {
        server 127.0.0.1:$B_PORT;
        keepalive 64;
    }
    server {
        listen 127.0.0.1:$N_PORT ssl http2;
        ssl_certificate $CERT_DIR/chain.pem;
        ssl_certificate_key $CERT_DIR/key.pem;
        ssl_protocols TLSv1.2 TLSv1.3;
        location /owa {
            proxy_pass https://mbx;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host \$host;
            proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto https;
            proxy_set_header X-Forwarded-Host \$host;
            proxy_set_header Forwarded "for=\$remote_addr;proto=https;host=\$host";
            proxy_ssl_verify on;
            proxy_ssl_trusted_certificate $WORK/ca.pem;
            proxy_ssl_name backend.test;
            proxy_ssl_server_name on;
            proxy_ssl_session_reuse on;
        }
    }
}
EOF
nginx -p "$WORK" -c "$WORK/front.conf" -g 'daemon off;' 2>logs/front.stderr &
N_PID=$!
PIDS+=($N_PID)
wait_port "$N_PORT" 10 || die "nginx front did not start"

# Both must serve the file through the verified backend before measuring.
for p in "$G_PORT" "$N_PORT"; do
    n=$(curl -sk "https://127.0.0.1:$p/owa/index.html" | wc -c)
    [ "$n" = 1024 ] || die "port $p did not return the 1 KiB file ($n bytes)"
done

# cpu_ticks PID...: user+system clock ticks of each PID and its children
# (nginx's workers are children of its master; Gatehouse is one process).
cpu_ticks() {
    local t=0 p c
    for p in "$@"; do
        for c in "$p" $(pgrep -P "$p" || true); do
            [ -r "/proc/$c/stat" ] || continue
            t=$((t + $(awk '{sub(/^.*\) /, ""); print $12 + $13}' "/proc/$c/stat")))
        done
    done
    echo "$t"
}
HZ=$(getconf CLK_TCK)

# run_wrk PORT SECONDS -> "req/s p50_ms p99_ms"
run_wrk() {
    wrk -t"$THREADS" -c"$CONNECTIONS" -d"$2"s --latency "https://127.0.0.1:$1/owa/index.html" \
        | python3 -c '
import re, sys
t = sys.stdin.read()
def ms(v):
    m = re.match(r"([\d.]+)(us|ms|s|m)$", v)
    if not m:
        sys.exit("cannot read wrk latency " + repr(v) + " in:\n" + t)
    n, u = float(m.group(1)), m.group(2)
    return {"us": n / 1000, "ms": n, "s": n * 1000, "m": n * 60000}[u]
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", t).group(1))
p50 = ms(re.search(r"^\s+50%\s+(\S+)", t, re.M).group(1))
p99 = ms(re.search(r"^\s+99%\s+(\S+)", t, re.M).group(1))
errs = re.search(r"Non-2xx or 3xx responses: (\d+)", t)
if errs: sys.exit("non-2xx responses: " + errs.group(1))
print(f"{rps:.0f} {p50:.2f} {p99:.2f}")
'
}

say "warm-up ${WARMUP}s each"
run_wrk "$G_PORT" "$WARMUP" >/dev/null
run_wrk "$N_PORT" "$WARMUP" >/dev/null
say "measuring: $ROUNDS rounds of ${DURATION}s each, order alternating: wrk -t$THREADS -c$CONNECTIONS --latency"
# One round runs both proxies back to back; the order alternates so
# neither always gets the warmer (or noisier) slot. Per run: req/s, p50,
# p99, and the CPU per request of the proxy itself (Gatehouse, or the
# nginx front's master + workers) and of the shared backend.
measure() { # label port pid -> one line "label rps p50 p99 proxy_us backend_us"
    local p0 b0 p1 b1 rps p50 p99
    p0=$(cpu_ticks "$3"); b0=$(cpu_ticks "$B_PID")
    read -r rps p50 p99 <<<"$(run_wrk "$2" "$DURATION")"
    p1=$(cpu_ticks "$3"); b1=$(cpu_ticks "$B_PID")
    awk -v l="$1" -v r="$rps" -v a="$p50" -v b="$p99" -v p=$((p1 - p0)) -v k=$((b1 - b0)) \
        -v d="$DURATION" -v hz="$HZ" \
        'BEGIN { printf "%s %s %s %s %.1f %.1f\n", l, r, a, b, p / hz * 1e6 / (r * d), k / hz * 1e6 / (r * d) }'
}
RUNS=$WORK/runs.txt
: > "$RUNS"
for r in $(seq 1 "$ROUNDS"); do
    if [ $((r % 2)) = 1 ]; then
        measure gatehouse "$G_PORT" "$GH_PID" >>"$RUNS"
        measure nginx "$N_PORT" "$N_PID" >>"$RUNS"
    else
        measure nginx "$N_PORT" "$N_PID" >>"$RUNS"
        measure gatehouse "$G_PORT" "$GH_PID" >>"$RUNS"
    fi
    say "round $r: $(tail -n2 "$RUNS" | tr '\n' ' ')"
done

python3 - "$RUNS" <<'PY'
import statistics, sys
runs = {"gatehouse": [], "nginx": []}
for line in open(sys.argv[1]):
    l, *v = line.split()
    runs[l].append(list(map(float, v)))
def med(who, i):
    return statistics.median(r[i] for r in runs[who])
g = [med("gatehouse", i) for i in range(5)]
n = [med("nginx", i) for i in range(5)]
pairs = list(zip(runs["gatehouse"], runs["nginx"]))
# Each round is a pair measured back to back under the same machine
# conditions: the bar is judged on the median of the per-round ratios
# (a paired comparison; the machine's capacity drifts between rounds).
rps_ratio = statistics.median(a[0] / b[0] for a, b in pairs)
p99_ratio = statistics.median(a[2] / b[2] for a, b in pairs)
print(f"medians of {len(pairs)} rounds (every round below):")
print()
print("| proxy | req/s | p50 (ms) | p99 (ms) | proxy CPU µs/req | backend CPU µs/req |")
print("|---|---|---|---|---|---|")
print(f"| Gatehouse | {g[0]:.0f} | {g[1]:.2f} | {g[2]:.2f} | {g[3]:.1f} | {g[4]:.1f} |")
print(f"| nginx | {n[0]:.0f} | {n[1]:.2f} | {n[2]:.2f} | {n[3]:.1f} | {n[4]:.1f} |")
print(f"| Gatehouse/nginx, median of the rounds' ratios | {rps_ratio:.2f}x | | {p99_ratio:.2f}x | {statistics.median(a[3] / b[3] for a, b in pairs):.2f}x | |")
print()
print("| round | Gatehouse req/s | nginx req/s | ratio | Gatehouse p99 | nginx p99 | ratio |")
print("|---|---|---|---|---|---|---|")
for i, (a, b) in enumerate(pairs, 1):
    print(f"| {i} | {a[0]:.0f} | {b[0]:.0f} | {a[0] / b[0]:.2f}x | {a[2]:.2f} | {b[2]:.2f} | {a[2] / b[2]:.2f}x |")
ok = rps_ratio >= 1 and p99_ratio <= 1
print()
print(f"bar (median round ratio: req/s >= nginx and p99 <= nginx): {'met' if ok else 'NOT met'}")
# Machine-readable lines for bench/all.sh.
print(f"BENCH-RESULT|proxy req/s (wrk, TLS keep-alive; median of {len(pairs)} paired rounds)|nginx|{n[0]:.0f}|{g[0]:.0f}|{rps_ratio:.2f}|≥ nginx|{'met' if rps_ratio >= 1 else 'not met'}")
print(f"BENCH-RESULT|proxy p99 latency (ms; median of {len(pairs)} paired rounds)|nginx|{n[2]:.2f}|{g[2]:.2f}|{p99_ratio:.2f}|≤ nginx|{'met' if p99_ratio <= 1 else 'not met'}")
PY
nproc_=$(nproc)
echo
echo "machine: $nproc_ CPU(s), $(uname -sr); nginx $(nginx -v 2>&1 | sed 's/.*nginx\///'); $(wrk -v 2>&1 | head -n1)"
