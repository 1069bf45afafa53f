#!/usr/bin/env bash
# Interop test: Gatehouse relaying to and from a real Postfix, and to
# Postfix's smtp-sink, all on 127.0.0.1.
#
#   1. swaks -> Gatehouse -> private Postfix (smart host, STARTTLS, Gatehouse
#      at tls = "verify" with a test CA; the certificate carries IP:127.0.0.1)
#      -> smtp-sink: the message arrives intact, and Gatehouse's SmtpSend log
#      shows TLS with outcome=verified.
#   2. The same at tls = "secure" with tls_names = ["postfix.interop.test"].
#   3. swaks -> private Postfix -> Gatehouse with
#      smtp_tls_security_level = secure (match=gatehouse.interop.test, the
#      test CA as smtp_tls_CAfile; Gatehouse's certificate imported into its
#      store): the message lands intact in Gatehouse's Maildir.
#   4. swaks -> Gatehouse -> smtp-sink directly (20 messages over reused
#      connections): all arrive.
#
# Needs: cargo, postfix (binaries only: postfix, postconf, smtp-sink; the
# system instance is never touched), swaks, openssl, python3; root or
# passwordless sudo (Postfix's master starts as root).
#
# Env: GATEHOUSE_BIN (skip the build), KEEP_WORK=1 (keep the temp dir).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
source "$ROOT/tests/interop/lib.sh"

say() { printf '[relay-interop] %s\n' "$*"; }
die() { printf '[relay-interop] FATAL: %s\n' "$*" >&2; exit 1; }
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo -n"; fi
for tool in swaks postfix postconf smtp-sink openssl python3; do
    command -v "$tool" >/dev/null 2>&1 || die "'$tool' not found (apt-get install postfix swaks openssl)"
done

if [ -n "${GATEHOUSE_BIN:-}" ]; then
    GH_BIN=$GATEHOUSE_BIN
else
    say "building: cargo build --locked"
    cargo build --locked
    GH_BIN="${CARGO_TARGET_DIR:-$ROOT/target}/debug/gatehouse"
fi
[ -x "$GH_BIN" ] || die "no gatehouse binary at $GH_BIN"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/gatehouse-relay-interop.XXXXXX")
chmod 755 "$WORK"
say "work dir: $WORK"
GH_PID=""; SINK_PID=""; PF_STARTED=0; FAILED=0; RESULTS=()

on_exit() {
    local rc=$?
    set +e
    [ -n "$GH_PID" ] && kill -TERM "$GH_PID" 2>/dev/null && wait "$GH_PID" 2>/dev/null
    [ -n "$SINK_PID" ] && kill -TERM "$SINK_PID" 2>/dev/null && wait "$SINK_PID" 2>/dev/null
    [ "$PF_STARTED" = 1 ] && $SUDO postfix -c "$WORK/postfix/etc" stop >/dev/null 2>&1
    if [ "$rc" -ne 0 ] || [ "$FAILED" -ne 0 ]; then
        echo "======== gatehouse stderr (last 100 lines)"; tail -n 100 "$WORK/gatehouse.stderr" 2>/dev/null
        echo "======== postfix log (last 100 lines)"; tail -n 100 "$WORK/postfix/maillog" 2>/dev/null
        echo "======== SmtpSend log"; cat "$WORK"/gh/log/protocol/SmtpSend/*.LOG 2>/dev/null | tail -n 60
        echo "(work dir kept: $WORK)"
        [ "$rc" -ne 0 ] || rc=1
    elif [ "${KEEP_WORK:-0}" = 1 ]; then say "work dir kept: $WORK"
    else rm -rf "$WORK"; fi
    echo; printf '%s\n' "${RESULTS[@]}"
    exit "$rc"
}
trap on_exit EXIT
pass() { RESULTS+=("PASS  $1"); say "PASS: $1"; }
fail() { RESULTS+=("FAIL  $1${2:+ -- $2}"); FAILED=1; say "FAIL: $1${2:+ -- $2}"; }

read -r GH_PORT PF_PORT SINK_PORT <<<"$(freeports 3)"

# --- test CA and certificates ---------------------------------------------
CA="$WORK/ca"; mkdir -p "$CA"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -subj "/CN=Gatehouse Interop Test CA" -keyout "$CA/ca.key" -out "$CA/ca.pem" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
issue() { # name san out-prefix
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$1" \
        -keyout "$3.key" -out "$3.csr" 2>/dev/null
    printf 'basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\nsubjectAltName=%s\n' "$2" > "$3.ext"
    openssl x509 -req -in "$3.csr" -CA "$CA/ca.pem" -CAkey "$CA/ca.key" -CAcreateserial \
        -days 2 -extfile "$3.ext" -out "$3.pem" 2>/dev/null
}
issue postfix.interop.test "DNS:postfix.interop.test,IP:127.0.0.1" "$CA/postfix"
issue gatehouse.interop.test "DNS:gatehouse.interop.test" "$CA/gatehouse"
cat "$CA/gatehouse.pem" "$CA/ca.pem" "$CA/gatehouse.key" > "$CA/gatehouse-bundle.pem"

# --- smtp-sink (final peer) -------------------------------------------------
mkdir -p "$WORK/sink"
chmod 777 "$WORK/sink"
smtp-sink -u "$(id -un)" -d "$WORK/sink/%Y%m%d%H%M%S." "127.0.0.1:$SINK_PORT" 100 &
SINK_PID=$!
wait_port "$SINK_PORT" 10 "$SINK_PID" || die "smtp-sink did not start"

# --- Gatehouse ----------------------------------------------------------------
gh_config() { # level extra-connector-lines
    cat > "$WORK/gatehouse.toml" <<EOF
[server]
hostname = "gatehouse.interop.test"
data_dir = "$WORK/gh"

[queue]
first_retry = "2s"
max_retry_interval = "4s"

[[receive_connector]]
name = "Default"
role = "smtp"
listen = ["127.0.0.1:$GH_PORT"]
fqdn = "gatehouse.interop.test"
relay_networks = ["127.0.0.1/32"]

[[accepted_domain]]
domain = "example.test"
type = "authoritative"

[[mailbox]]
name = "catchall"
addresses = ["@example.test"]

[[send_connector]]
name = "ToPostfix"
address_spaces = ["remote.test"]
smart_hosts = ["[127.0.0.1]:$PF_PORT"]
tls = "$1"
ca_file = "$CA/ca.pem"
$2

[[send_connector]]
name = "ToSink"
address_spaces = ["sink.test"]
smart_hosts = ["[127.0.0.1]:$SINK_PORT"]
tls = "may"
max_connections_per_destination = 2
EOF
}
start_gh() {
    "$GH_BIN" check-config --config "$WORK/gatehouse.toml" || die "check-config failed"
    "$GH_BIN" serve --config "$WORK/gatehouse.toml" >>"$WORK/gatehouse.stdout" 2>>"$WORK/gatehouse.stderr" &
    GH_PID=$!
    wait_port "$GH_PORT" 30 "$GH_PID" || die "gatehouse did not start"
}
stop_gh() { kill -TERM "$GH_PID"; wait "$GH_PID" || true; GH_PID=""; }

gh_config verify ""
# Gatehouse's own certificate (for Postfix -> Gatehouse at `secure`).
"$GH_BIN" --config "$WORK/gatehouse.toml" cert import "$CA/gatehouse-bundle.pem" >"$WORK/import.out"
THUMB=$(awk '/^imported/ {print $2}' "$WORK/import.out")
[ -n "$THUMB" ] || die "certificate import failed: $(cat "$WORK/import.out")"
"$GH_BIN" --config "$WORK/gatehouse.toml" cert enable "$THUMB" --services smtp >/dev/null
start_gh

# --- private Postfix ----------------------------------------------------------
PF="$WORK/postfix"
mkdir -p "$PF/etc" "$PF/spool" "$PF/data"
$SUDO chown postfix: "$PF/data"; $SUDO chmod 700 "$PF/data"
cp "$CA/postfix.pem" "$CA/postfix.key" "$CA/ca.pem" "$PF/etc/"
chmod 644 "$PF/etc/postfix.key"
cat > "$PF/etc/main.cf" <<EOF
compatibility_level = 3.6
config_directory = $PF/etc
queue_directory = $PF/spool
data_directory = $PF/data
maillog_file = $PF/maillog
maillog_file_prefixes = $WORK
myhostname = postfix.interop.test
mydomain = interop.test
myorigin = \$myhostname
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mydestination =
local_recipient_maps =
alias_maps =
alias_database =
mynetworks = 127.0.0.0/8
relay_domains = remote.test, example.test
transport_maps = inline:{ remote.test=relay:[127.0.0.1]:$SINK_PORT, example.test=smtp:[127.0.0.1]:$GH_PORT }
smtpd_tls_security_level = may
smtpd_tls_chain_files = $PF/etc/postfix.key, $PF/etc/postfix.pem
smtp_tls_security_level = may
smtp_tls_CAfile = $PF/etc/ca.pem
smtp_tls_policy_maps = inline:{ {[127.0.0.1]:$GH_PORT = secure match=gatehouse.interop.test} }
smtp_tls_loglevel = 1
disable_mime_output_conversion = yes
fast_flush_domains =
biff = no
queue_run_delay = 2s
minimal_backoff_time = 2s
maximal_backoff_time = 4s
EOF
private_postfix_master_cf "$PF/etc/master.cf" "$PF_PORT" \
    "smtp      unix  -       -       n       -       -       smtp" \
    "relay     unix  -       -       n       -       -       smtp" \
    "tlsmgr    unix  -       -       n       1000?   1       tlsmgr"
$SUDO postfix -c "$PF/etc" check >/dev/null 2>&1 || true
$SUDO postfix -c "$PF/etc" start >/dev/null 2>&1 || die "private postfix did not start"
PF_STARTED=1
wait_port "$PF_PORT" 20 || die "postfix smtpd not listening on $PF_PORT"

wait_grep() { # dir token secs
    local i
    for i in $(seq 1 $(($3 * 5))); do
        grep -rlF -- "$2" "$1" 2>/dev/null | head -n 1 && return 0
        sleep 0.2
    done
    return 1
}
log_has() { # pattern: the SmtpSend log is flushed within a second
    local i
    for i in $(seq 1 25); do
        grep -h "ToPostfix" "$WORK"/gh/log/protocol/SmtpSend/*.LOG 2>/dev/null | grep -q -- "$1" && return 0
        sleep 0.2
    done
    return 1
}
body_line() { printf 'interop token %s\n.leading dot\nUTF-8: Grüße\n' "$1"; }

# 1. Gatehouse -> Postfix at verify
T="gatehouse -> postfix smart host at tls=verify (test CA) -> smtp-sink"
TOK="verify-$(date +%s%N)"
if ! swaks --server "127.0.0.1:$GH_PORT" --from sender@example.test --to "u@remote.test" \
        --body "$(body_line "$TOK")" >"$WORK/swaks-1.out" 2>&1; then
    fail "$T" "swaks to gatehouse failed"
elif ! F=$(wait_grep "$WORK/sink" "$TOK" 60); then
    fail "$T" "no message with $TOK at smtp-sink"
elif ! grep -q "..leading dot" "$F" && ! grep -q "^.leading dot" "$F"; then
    fail "$T" "body changed in transit ($F)"
elif ! log_has "level=verify;outcome=verified"; then
    fail "$T" "SmtpSend log has no verified TLS session"
elif ! log_has ">,BDAT "; then
    fail "$T" "Postfix offers CHUNKING but gatehouse did not use BDAT"
else
    pass "$T"
fi

# 2. Gatehouse -> Postfix at secure with tls_names
stop_gh
gh_config secure 'tls_names = ["postfix.interop.test"]'
start_gh
T="gatehouse -> postfix at tls=secure (tls_names = postfix.interop.test)"
TOK="secure-$(date +%s%N)"
if ! swaks --server "127.0.0.1:$GH_PORT" --from sender@example.test --to "u@remote.test" \
        --body "$(body_line "$TOK")" >"$WORK/swaks-2.out" 2>&1; then
    fail "$T" "swaks to gatehouse failed"
elif ! wait_grep "$WORK/sink" "$TOK" 60 >/dev/null; then
    fail "$T" "no message with $TOK at smtp-sink"
else
    pass "$T"
fi

# 3. Postfix -> Gatehouse at secure
T="postfix (smtp_tls_security_level=secure) -> gatehouse"
TOK="pf2gh-$(date +%s%N)"
if ! swaks --server "127.0.0.1:$PF_PORT" --from sender@remote.test --to "alice@example.test" \
        --body "$(body_line "$TOK")" >"$WORK/swaks-3.out" 2>&1; then
    fail "$T" "swaks to postfix failed"
elif ! F=$(wait_grep "$WORK/gh/mail/catchall/new" "$TOK" 60); then
    fail "$T" "no message with $TOK in gatehouse's Maildir"
elif ! grep -q "Verified TLS connection established to 127.0.0.1\[127.0.0.1\]:$GH_PORT" "$PF/maillog"; then
    fail "$T" "postfix did not log a Verified TLS connection to gatehouse"
elif ! grep -q "Grüße" "$F"; then
    fail "$T" "body changed in transit"
else
    pass "$T"
fi

# 4. Gatehouse -> smtp-sink, 20 messages
T="gatehouse -> smtp-sink: 20 messages"
TOK="sink-$(date +%s%N)"
for i in $(seq 1 20); do
    swaks --server "127.0.0.1:$GH_PORT" --from sender@example.test --to "u$i@sink.test" \
        --body "$(body_line "$TOK-$i")" >"$WORK/swaks-4-$i.out" 2>&1 || fail "$T" "swaks $i failed"
done
ok=1
for i in $(seq 1 20); do
    wait_grep "$WORK/sink" "$TOK-$i"$'\n' 30 >/dev/null || wait_grep "$WORK/sink" "token $TOK-$i" 30 >/dev/null || { ok=0; break; }
done
if [ "$ok" = 1 ]; then pass "$T"; else fail "$T" "not all 20 arrived"; fi

[ "$FAILED" = 0 ] || exit 1
say "all passed"
