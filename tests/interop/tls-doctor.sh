#!/usr/bin/env bash
# TLS doctor interop: `gatehouse tls probe` against real servers that still
# speak TLS 1.0/1.1 (nginx, and a private Postfix over STARTTLS), and
# against Gatehouse's own listeners.
#
#   0. openssl s_client proves each legacy server really completes a TLS 1.0
#      and TLS 1.1 handshake (so a "not offered" from the probe would be a
#      probe bug, not a server that cannot).
#   1. nginx, ssl_protocols TLSv1 TLSv1.1 (legacy only), https://: the probe
#      reports tls1.0 and tls1.1 OFFERED, no TLS 1.2/1.3, and exits 1.
#   2. nginx, ssl_protocols TLSv1 TLSv1.1 TLSv1.2, https://: tls1.0/tls1.1
#      OFFERED (FAIL), tls1.2 OK, trust/name OK with --ca-file, resumption,
#      exit 1.
#   2b. nginx, TLS 1.2 with only AES128-SHA256 (CBC, RSA key exchange):
#      reported as TLS 1.2 with a weak suite, not as "no TLS 1.2".
#   3. private Postfix, smtpd_tls_protocols allowing TLSv1/TLSv1.1, smtp://
#      (STARTTLS): tls1.0/tls1.1 OFFERED, exit 1.
#   4. Gatehouse smtp (STARTTLS) and smtps: TLS 1.2 and 1.3 offered, 1.0/1.1
#      and SSL 3.0 refused, trust/name/msstd OK with --ca-file, resumption
#      OK, exit 0; openssl s_client -tls1 is refused too.
#
# Needs (Debian): nginx, postfix, openssl, python3; cargo. Everything listens
# on 127.0.0.1 on free high ports; nothing outside the machine is contacted.
# The legacy servers use a throw-away RSA certificate made here.
#
# Env: GATEHOUSE_BIN (skip the build), KEEP_WORK=1 (keep the temp dir).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
say() { printf '[tls-doctor] %s\n' "$*"; }
die() { printf '[tls-doctor] FATAL: %s\n' "$*" >&2; exit 1; }

for tool in openssl python3 timeout; do
    command -v "$tool" >/dev/null 2>&1 || die "'$tool' not found in PATH"
done
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
[ -x "$NGINX" ] || die "nginx not found (apt-get install nginx)"
POSTFIX=$(command -v postfix || echo /usr/sbin/postfix)
[ -x "$POSTFIX" ] || die "postfix not found (apt-get install postfix)"

if [ -n "${GATEHOUSE_BIN:-}" ]; then
    GH_BIN=$GATEHOUSE_BIN
else
    say "building: cargo build --locked"
    cargo build --locked
    GH_BIN="${CARGO_TARGET_DIR:-$ROOT/target}/debug/gatehouse"
fi
[ -x "$GH_BIN" ] || die "gatehouse binary not found at $GH_BIN"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/gatehouse-doctor.XXXXXX")
chmod 755 "$WORK"
say "work dir: $WORK"
NGINX_PID=""; GH_PID=""; PF_STARTED=0
FAILED=0; RESULTS=()

stop_pid() {
    local pid=$1
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null || true
}
on_exit() {
    local rc=$?
    set +e
    stop_pid "$NGINX_PID"
    stop_pid "$GH_PID"
    if [ "$PF_STARTED" = 1 ]; then
        timeout 30 $SUDO "$POSTFIX" -c "$WORK/postfix" stop >/dev/null 2>&1
    fi
    if [ "$rc" -ne 0 ] || [ "$FAILED" -ne 0 ]; then
        for f in "$WORK"/nginx-error.log "$WORK"/gatehouse.stderr "$WORK"/postfix.log; do
            [ -f "$f" ] && { echo "======== $f (last 40 lines)"; tail -n 40 "$f"; }
        done
        echo "(work dir kept: $WORK)"
        [ "$rc" -ne 0 ] || rc=1
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
source "$ROOT/tests/interop/lib.sh"

pass() { RESULTS+=("PASS  $1"); say "PASS: $1"; }
fail() { RESULTS+=("FAIL  $1${2:+ -- $2}"); FAILED=1; say "FAIL: $1${2:+ -- $2}"; }

# --- JSON checker -------------------------------------------------------------
# check.py REPORT EXPECTED_EXIT ACTUAL_EXIT NAME=VERDICT[~substring] ...
cat > "$WORK/check.py" <<'PY'
import json, sys
path, want_rc, got_rc, *specs = sys.argv[1:]
try:
    rep = json.load(open(path))
except Exception as e:
    print("cannot read probe JSON %s: %s" % (path, e)); sys.exit(1)
checks = {c["name"]: c for c in rep["checks"]}
bad = []
if want_rc != got_rc:
    bad.append("exit code %s, expected %s" % (got_rc, want_rc))
for spec in specs:
    name, _, want = spec.partition("=")
    verdict, _, sub = want.partition("~")
    c = checks.get(name)
    if c is None:
        bad.append("no check %r" % name); continue
    if c["verdict"] != verdict:
        bad.append("%s: %s (%s), expected %s" % (name, c["verdict"], c["detail"], verdict))
    elif sub and sub not in c["detail"]:
        bad.append("%s: %r lacks %r" % (name, c["detail"], sub))
for c in rep["checks"]:
    print("   %-5s %-14s %s" % (c["verdict"], c["name"], c["detail"]))
for b in bad:
    print("MISMATCH " + b)
sys.exit(1 if bad else 0)
PY

# probe LABEL EXPECTED_EXIT URL [probe args...] -- CHECK...
probe() {
    local label=$1 want=$2 url=$3; shift 3
    local args=() rc=0
    while [ $# -gt 0 ] && [ "$1" != "--" ]; do args+=("$1"); shift; done
    [ $# -gt 0 ] && shift
    timeout 120 "$GH_BIN" tls probe "$url" --timeout 5 --json "${args[@]}" >"$WORK/$label.json" 2>"$WORK/$label.err" || rc=$?
    if python3 "$WORK/check.py" "$WORK/$label.json" "$want" "$rc" "$@"; then
        pass "$label"
    else
        cat "$WORK/$label.err"; fail "$label" "see above"
    fi
}

# s_client_ok LABEL EXPECT(yes|no) ARGS...: whether openssl completes a handshake.
s_client() {
    local label=$1 expect=$2; shift 2
    local got=no
    if echo | timeout 20 openssl s_client "$@" >"$WORK/$label.sclient" 2>&1 \
        && grep -qE '^ *Protocol *: *TLSv1(\.1)?$|^New, TLSv1(\.1)?,' "$WORK/$label.sclient"; then
        got=yes
    fi
    if [ "$got" = "$expect" ]; then pass "$label (openssl handshake: $got)"; else
        tail -n 15 "$WORK/$label.sclient"; fail "$label" "openssl handshake: $got, expected $expect"; fi
}

# --- throw-away certificate for the legacy servers ------------------------------
LEGACY=legacy.example.test
# CA:FALSE: `openssl req -x509` marks certificates as CAs by default, which
# webpki (rightly) refuses as a server certificate (CaUsedAsEndEntity).
openssl req -x509 -newkey rsa:2048 -nodes -days 20 -subj "/CN=$LEGACY" \
    -addext "subjectAltName=DNS:$LEGACY" -addext "basicConstraints=critical,CA:FALSE" \
    -keyout "$WORK/legacy.key" -out "$WORK/legacy.crt" >"$WORK/openssl-req.log" 2>&1 \
    || { cat "$WORK/openssl-req.log"; die "openssl req failed"; }
chmod 644 "$WORK/legacy.key"

# --- nginx: one legacy-only server, one legacy + TLS 1.2 ---------------------------
read -r P_OLD P_MIX P_CBC P_PF P_SMTP P_SMTPS < <(freeports 6)
mkdir -p "$WORK/nginx"
cat > "$WORK/nginx.conf" <<EOF
worker_processes 1;
pid $WORK/nginx.pid;
error_log $WORK/nginx-error.log info;
events { worker_connections 64; }
http {
    access_log off;
    client_body_temp_path $WORK/nginx/body;
    proxy_temp_path $WORK/nginx/proxy;
    fastcgi_temp_path $WORK/nginx/fastcgi;
    uwsgi_temp_path $WORK/nginx/uwsgi;
    scgi_temp_path $WORK/nginx/scgi;
    ssl_certificate $WORK/legacy.crt;
    ssl_certificate_key $WORK/legacy.key;
    ssl_ciphers DEFAULT:@SECLEVEL=0;
    ssl_session_cache shared:doctor:1m;
    server {
        listen 127.0.0.1:$P_OLD ssl;
        ssl_protocols TLSv1 TLSv1.1;
        location / { return 200 "legacy only\n"; }
    }
    server {
        listen 127.0.0.1:$P_MIX ssl;
        ssl_protocols TLSv1 TLSv1.1 TLSv1.2;
        location / { return 200 "legacy and 1.2\n"; }
    }
    server {
        listen 127.0.0.1:$P_CBC ssl;
        ssl_protocols TLSv1.2;
        ssl_ciphers AES128-SHA256:@SECLEVEL=0;
        location / { return 200 "TLS 1.2 with CBC and RSA key exchange only\n"; }
    }
}
EOF
"$NGINX" -t -p "$WORK/nginx" -c "$WORK/nginx.conf" >"$WORK/nginx-t.log" 2>&1 \
    || { cat "$WORK/nginx-t.log"; die "nginx -t rejected the config"; }
"$NGINX" -p "$WORK/nginx" -c "$WORK/nginx.conf" -g 'daemon off;' >"$WORK/nginx.out" 2>&1 &
NGINX_PID=$!
wait_port "$P_OLD" 20 "$NGINX_PID" && wait_port "$P_MIX" 20 "$NGINX_PID" && wait_port "$P_CBC" 20 "$NGINX_PID" \
    || die "nginx is not listening on $P_OLD/$P_MIX/$P_CBC"
say "nginx up: legacy-only 127.0.0.1:$P_OLD, legacy+1.2 127.0.0.1:$P_MIX"

LEG=(-cipher 'DEFAULT:@SECLEVEL=0' -servername "$LEGACY")
s_client "nginx-legacy-only speaks TLS 1.0" yes -connect "127.0.0.1:$P_OLD" -tls1 "${LEG[@]}"
s_client "nginx-legacy-only speaks TLS 1.1" yes -connect "127.0.0.1:$P_OLD" -tls1_1 "${LEG[@]}"

probe nginx-legacy-only 1 "https://127.0.0.1:$P_OLD" --expect-name "$LEGACY" --ca-file "$WORK/legacy.crt" -- \
    "tls1.0=FAIL~OFFERED" "tls1.1=FAIL~OFFERED" "tls1.2=FAIL~not offered" "tls1.3=WARN~not offered" \
    "handshake=FAIL" "ssl3=OK~not offered"

probe nginx-legacy-and-tls12 1 "https://127.0.0.1:$P_MIX" --expect-name "$LEGACY" --ca-file "$WORK/legacy.crt" \
    --msstd "msstd:$LEGACY" -- \
    "tls1.0=FAIL~OFFERED" "tls1.1=FAIL~OFFERED" "tls1.2=OK~offered" "tls1.3=WARN~not offered" \
    "cipher=OK~TLS 1.2" "trust=OK" "name=OK" "msstd=OK" "expiry=WARN~day(s) left" "resume-tls1.2=OK~session id"

# TLS 1.2 with only a suite rustls lacks: "weak", not "no TLS 1.2".
probe nginx-cbc-only-tls12 1 "https://127.0.0.1:$P_CBC" --expect-name "$LEGACY" --ca-file "$WORK/legacy.crt" -- \
    "tls1.2=FAIL~offered only with a weak suite (0x003C" "tls1.0=OK~not offered" "tls1.1=OK~not offered" "handshake=FAIL"

probe nginx-untrusted 1 "https://127.0.0.1:$P_MIX" --expect-name "wrong.example.test" -- \
    "trust=FAIL~self-signed certificate (CN=$LEGACY)" "name=FAIL~not valid for wrong.example.test"

# --- private Postfix with legacy STARTTLS ----------------------------------------
PF="$WORK/postfix"
mkdir -p "$PF" "$WORK/pf-queue" "$WORK/pf-data"
$SUDO chown postfix: "$WORK/pf-data" && $SUDO chmod 700 "$WORK/pf-data"
private_postfix_master_cf "$PF/master.cf" "$P_PF" \
    "tlsmgr    unix  -       -       n       1000?   1       tlsmgr"
cat > "$PF/main.cf" <<EOF
compatibility_level = 3.6
config_directory = $PF
queue_directory = $WORK/pf-queue
data_directory = $WORK/pf-data
mail_owner = postfix
myhostname = $LEGACY
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
maillog_file = $WORK/postfix.log
maillog_file_prefixes = $WORK
alias_maps =
alias_database =
local_recipient_maps =
mynetworks = 127.0.0.0/8
smtpd_tls_security_level = may
smtpd_tls_cert_file = $WORK/legacy.crt
smtpd_tls_key_file = $WORK/legacy.key
smtpd_tls_protocols = >=TLSv1
smtpd_tls_mandatory_protocols = >=TLSv1
tls_medium_cipherlist = DEFAULT:@SECLEVEL=0
smtpd_tls_ciphers = medium
EOF
if timeout 60 $SUDO "$POSTFIX" -c "$PF" start >"$WORK/postfix-start.log" 2>&1; then
    PF_STARTED=1
    if wait_port "$P_PF" 30; then
        s_client "postfix speaks TLS 1.0 after STARTTLS" yes -connect "127.0.0.1:$P_PF" -starttls smtp -tls1 "${LEG[@]}"
        probe postfix-legacy-starttls 1 "smtp://127.0.0.1:$P_PF" --expect-name "$LEGACY" --ca-file "$WORK/legacy.crt" -- \
            "starttls=OK" "tls1.0=FAIL~OFFERED" "tls1.1=FAIL~OFFERED" "tls1.2=OK" "tls1.3=OK" "trust=OK" "name=OK"
    else
        fail "postfix-legacy-starttls" "private postfix not listening on $P_PF"
    fi
else
    cat "$WORK/postfix-start.log"; fail "postfix-legacy-starttls" "private postfix did not start"
fi

# --- our own listeners -----------------------------------------------------------
HOST=mx.example.test
cat > "$WORK/gatehouse.toml" <<EOF
[server]
hostname = "$HOST"
data_dir = "$WORK/var"

[[receive_connector]]
name = "Default"
role = "smtp"
listen = ["127.0.0.1:$P_SMTP"]

[[receive_connector]]
name = "Smtps"
role = "smtps"
listen = ["127.0.0.1:$P_SMTPS"]

[[accepted_domain]]
domain = "example.test"
type = "authoritative"

[[mailbox]]
name = "catchall"
addresses = ["@example.test"]
EOF
"$GH_BIN" serve --config "$WORK/gatehouse.toml" >"$WORK/gatehouse.stdout" 2>"$WORK/gatehouse.stderr" &
GH_PID=$!
wait_port "$P_SMTP" 30 "$GH_PID" && wait_port "$P_SMTPS" 30 "$GH_PID" || die "gatehouse did not start"
CHAIN=$(ls "$WORK"/var/certs/*/chain.pem | head -n 1)
[ -f "$CHAIN" ] || die "no default certificate under $WORK/var/certs"
THUMB=$(basename "$(dirname "$CHAIN")")

s_client "gatehouse refuses TLS 1.0" no -connect "127.0.0.1:$P_SMTPS" -tls1 "${LEG[@]}"
OURS=("tls1.3=OK~offered" "tls1.2=OK~offered" "tls1.1=OK~not offered" "tls1.0=OK~not offered"
      "ssl3=OK~not offered" "trust=OK" "name=OK" "msstd=OK" "expiry=OK"
      "resume-tls1.3=OK~session ticket" "resume-tls1.2=OK~session id")
probe gatehouse-starttls 0 "smtp://127.0.0.1:$P_SMTP" --expect-name "$HOST" --msstd "msstd:$HOST" --ca-file "$CHAIN" -- \
    "starttls=OK" "${OURS[@]}"
probe gatehouse-smtps 0 "smtps://127.0.0.1:$P_SMTPS" --expect-name "$HOST" --msstd "msstd:$HOST" --ca-file "$CHAIN" -- \
    "${OURS[@]}"
if python3 -c 'import json,sys; sys.exit(0 if json.load(open(sys.argv[1]))["chain"][0]["sha1"] == sys.argv[2] else 1)' \
    "$WORK/gatehouse-smtps.json" "$THUMB"; then
    pass "gatehouse chain thumbprint is the store's ($THUMB)"
else
    fail "gatehouse chain thumbprint" "expected $THUMB"
fi

echo
printf '%s\n' "${RESULTS[@]}"
[ "$FAILED" -eq 0 ] || exit 1
say "all passed"
