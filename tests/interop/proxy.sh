#!/usr/bin/env bash
# Proxy interop: curl (HTTP/2 and HTTP/1.1) through Gatehouse's HTTPS proxy
# to nginx as a real TLS backend.
#
#   1. a test CA (openssl) signs nginx's backend certificate for
#      backend.test; a second nginx server uses a self-signed certificate;
#   2. Gatehouse: one [[proxy]] listener, pool `mbx` verified against the
#      CA (ca_file, tls_name = backend.test), pool `selfsigned` verified
#      too (must fail), pool `lax` with allow_internal_untrusted_certs;
#   3. curl --http2 and curl --http1.1: a static page, the negotiated HTTP
#      version, the X-Forwarded-* / Forwarded headers nginx received, a
#      20 MB file byte-identical through both protocols, the 502 page with
#      the reason and X-Gatehouse-Error for the self-signed backend, the
#      opt-out pool reaching it, the HttpProxy log holding the requests.
#
# Needs: nginx (Debian nginx or nginx-light), curl with HTTP/2 (Debian curl),
# openssl, python3, cargo. Everything on 127.0.0.1, free high ports.
#
# Env:
#   GATEHOUSE_BIN  use this binary instead of building target/debug/gatehouse
#   KEEP_WORK=1    keep the work dir even on success
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
# shellcheck source=tests/interop/lib.sh
. "$ROOT/tests/interop/lib.sh"

say() { printf '[proxy] %s\n' "$*"; }
die() { printf '[proxy] FATAL: %s\n' "$*" >&2; exit 1; }

for tool in nginx curl openssl python3 timeout; do
    command -v "$tool" >/dev/null 2>&1 || die "'$tool' not found (apt-get install nginx curl openssl)"
done
curl --version | grep -qw HTTP2 || die "curl lacks HTTP/2 support"

if [ -n "${GATEHOUSE_BIN:-}" ]; then
    GH_BIN=$GATEHOUSE_BIN
else
    say "building: cargo build --locked"
    cargo build --locked
    GH_BIN="${CARGO_TARGET_DIR:-$ROOT/target}/debug/gatehouse"
fi
[ -x "$GH_BIN" ] || die "gatehouse binary not found at $GH_BIN"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/gatehouse-proxy.XXXXXX")
chmod 755 "$WORK"
say "work dir: $WORK"
GH_PID=""
NGINX_PID=""
FAILED=0

on_exit() {
    local rc=$?
    set +e
    [ -n "$GH_PID" ] && kill -TERM "$GH_PID" 2>/dev/null && wait "$GH_PID" 2>/dev/null
    [ -n "$NGINX_PID" ] && kill -TERM "$NGINX_PID" 2>/dev/null && wait "$NGINX_PID" 2>/dev/null
    if [ $rc -ne 0 ] || [ $FAILED -ne 0 ]; then
        say "FAILED; logs kept in $WORK"
        tail -n 30 "$WORK/gatehouse.err" 2>/dev/null
        tail -n 20 "$WORK/nginx/error.log" 2>/dev/null
        exit 1
    fi
    [ "${KEEP_WORK:-}" = 1 ] || rm -rf "$WORK"
    say "PASS"
}
trap on_exit EXIT

check() { # check NAME COMMAND...: runs the command, records PASS/FAIL
    local name=$1
    shift
    if "$@"; then say "ok   $name"; else say "FAIL $name"; FAILED=1; fi
}

# --- certificates -----------------------------------------------------------
cd "$WORK"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -subj "/CN=Gatehouse Interop CA" -keyout ca.key -out ca.pem \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -subj "/CN=backend.test" -keyout backend.key -out backend.csr 2>/dev/null
printf 'subjectAltName=DNS:backend.test\nextendedKeyUsage=serverAuth\n' > ext.cnf
openssl x509 -req -in backend.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 \
    -extfile ext.cnf -out backend.pem 2>/dev/null
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -subj "/CN=backend.test" -addext "subjectAltName=DNS:backend.test" \
    -keyout self.key -out self.pem 2>/dev/null
chmod 644 ./*.pem ./*.key

# --- nginx backends -----------------------------------------------------------
read -r B_PORT S_PORT GH_PORT P_PORT <<<"$(freeports 4)"
# Routes match case-insensitively and keep the path: /OWA reaches nginx as
# /OWA (a link), /lax/owa as /lax/owa.
mkdir -p nginx/html/owa nginx/html/lax
echo "hello from nginx" > nginx/html/owa/index.html
head -c 20000000 /dev/urandom > nginx/html/owa/big.bin
ln -s owa nginx/html/OWA
ln -s ../owa nginx/html/lax/owa
chmod -R a+rX nginx
cat > nginx/nginx.conf <<EOF
worker_processes 1;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log warn;
events { worker_connections 1024; }
http {
    access_log off;
    client_body_temp_path $WORK/nginx/tmp;
    proxy_temp_path $WORK/nginx/tmp;
    fastcgi_temp_path $WORK/nginx/tmp;
    uwsgi_temp_path $WORK/nginx/tmp;
    scgi_temp_path $WORK/nginx/tmp;
    server {
        listen 127.0.0.1:$B_PORT ssl;
        ssl_certificate $WORK/backend.pem;
        ssl_certificate_key $WORK/backend.key;
        root $WORK/nginx/html;
        location /ews/ {
            default_type text/plain;
            return 200 "xff=\$http_x_forwarded_for proto=\$http_x_forwarded_proto xhost=\$http_x_forwarded_host host=\$host fwd=\$http_forwarded\n";
        }
    }
    server {
        listen 127.0.0.1:$S_PORT ssl;
        ssl_certificate $WORK/self.pem;
        ssl_certificate_key $WORK/self.key;
        root $WORK/nginx/html;
    }
}
EOF
mkdir -p nginx/tmp
nginx -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" -g 'daemon off;' 2>"$WORK/nginx/stderr" &
NGINX_PID=$!
wait_port "$B_PORT" 10 "$NGINX_PID" || die "nginx did not start: $(cat "$WORK/nginx/stderr")"

# --- Gatehouse ----------------------------------------------------------------
cat > gatehouse.toml <<EOF
[server]
hostname = "mail.example.test"
data_dir = "$WORK/var"
shutdown_grace = "5s"

[[receive_connector]]
name = "Default"
role = "smtp"
listen = ["127.0.0.1:$GH_PORT"]

[[accepted_domain]]
domain = "example.test"
type = "authoritative"

[[mailbox]]
name = "catchall"
addresses = ["@example.test"]

[[proxy]]
name = "Front"
listen = ["127.0.0.1:$P_PORT"]

[[proxy.route]]
prefix = "/owa"
pool = "mbx"

[[proxy.route]]
prefix = "/ews"
pool = "mbx"

[[proxy.route]]
prefix = "/selfsigned"
pool = "selfsigned"

[[proxy.route]]
prefix = "/lax"
pool = "lax"

[[backend_pool]]
name = "mbx"
ca_file = "$WORK/ca.pem"
[[backend_pool.server]]
address = "127.0.0.1:$B_PORT"
tls_name = "backend.test"

[[backend_pool]]
name = "selfsigned"
ca_file = "$WORK/ca.pem"
[[backend_pool.server]]
address = "127.0.0.1:$S_PORT"
tls_name = "backend.test"

[[backend_pool]]
name = "lax"
allow_internal_untrusted_certs = true
[[backend_pool.server]]
address = "127.0.0.1:$S_PORT"
tls_name = "backend.test"
EOF
"$GH_BIN" serve --config gatehouse.toml >gatehouse.out 2>gatehouse.err &
GH_PID=$!
wait_port "$P_PORT" 30 "$GH_PID" || die "gatehouse did not start"
grep -q "listening: https 127.0.0.1:$P_PORT" gatehouse.out || die "no 'listening: https' line: $(cat gatehouse.out)"

URL="https://127.0.0.1:$P_PORT"
CURL=(curl -sS -k --max-time 60 -H "Host: mail.example.test")

for proto in --http2 --http1.1; do
    want=$([ "$proto" = --http2 ] && echo 2 || echo 1.1)
    out=$("${CURL[@]}" "$proto" -w '%{http_code} %{http_version}' "$URL/OWA/index.html")
    check "$proto static page" test "$out" = "hello from nginx
200 $want"
    echo=$("${CURL[@]}" "$proto" -H "X-Forwarded-For: 192.0.2.1" "$URL/ews/x")
    check "$proto forwarding headers" test "$echo" = "xff=192.0.2.1, 127.0.0.1 proto=https xhost=mail.example.test host=mail.example.test fwd=for=127.0.0.1;proto=https;host=mail.example.test"
    "${CURL[@]}" "$proto" -o "big$want.bin" "$URL/owa/big.bin"
    check "$proto 20 MB file identical" cmp -s "big$want.bin" nginx/html/owa/big.bin
    code=$("${CURL[@]}" "$proto" -D headers.txt -o page.html -w '%{http_code}' "$URL/selfsigned/owa/index.html")
    check "$proto self-signed backend: 502" test "$code" = 502
    check "$proto self-signed backend: reason on the page" grep -q "untrusted issuer" page.html
    check "$proto self-signed backend: error header" grep -qi "^x-gatehouse-error: BackendCertificateUntrusted" headers.txt
    out=$("${CURL[@]}" "$proto" "$URL/lax/owa/index.html")
    check "$proto opt-out pool reaches the self-signed backend" test "$out" = "hello from nginx"
done

grep -q '"event":"ProxyBackendTrustFailure"\|event="ProxyBackendTrustFailure"\|ProxyBackendTrustFailure' gatehouse.err \
    && say "ok   trust failure event logged" || { say "FAIL trust failure event"; FAILED=1; }

kill -TERM "$GH_PID"
wait "$GH_PID" || true
GH_PID=""
LOG=$(ls var/log/protocol/HttpProxy/HttpProxy_*.LOG | head -n1)
check "HttpProxy log has its header" grep -q "^#Log-type: HttpProxy Logs" "$LOG"
n=$(grep -vc '^#' "$LOG" || true)
check "HttpProxy log has the 10 requests ($n)" test "$n" -eq 10
