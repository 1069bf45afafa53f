#!/usr/bin/env bash
# Interop test: real SMTP clients and a real MTA against Gatehouse.
#
#   1. swaks -> Gatehouse: body with awkward lines ('.', '..', 900-char line,
#      UTF-8) must land in <data_dir>/mail/catchall/new/ byte-exact.
#   2. swaks -> private Postfix instance -> (relayhost) Gatehouse: same check.
#   3. swaks -> Gatehouse for bob@elsewhere.test: must get 550 5.7.1.
#
# Needs: cargo, swaks, postfix (its binaries only; the system instance is never
# used or touched), python3, root (Postfix's master must start as root; when
# not root, Postfix commands go through `sudo -n`).
#
# Everything listens on 127.0.0.1 on free high ports. The private Postfix has
# its own config_directory, queue_directory and data_directory in a temp dir;
# /etc/postfix/main.cf is never read for settings nor written.
#
# Env:
#   GATEHOUSE_BIN  use this binary instead of building target/debug/gatehouse
#   KEEP_WORK=1    keep the temp dir even on success (it is always kept on failure)
#   DELIVERY_WAIT  seconds to wait for a message to reach the Maildir (default 60)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"

DELIVERY_WAIT=${DELIVERY_WAIT:-60}
say() { printf '[interop] %s\n' "$*"; }
die() { printf '[interop] FATAL: %s\n' "$*" >&2; exit 1; }

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo -n"; fi

for tool in swaks postfix postconf python3; do
    command -v "$tool" >/dev/null 2>&1 || die "'$tool' not found in PATH (install swaks and postfix first)"
done

# --- build -------------------------------------------------------------------
if [ -n "${GATEHOUSE_BIN:-}" ]; then
    GH_BIN=$GATEHOUSE_BIN
    say "using GATEHOUSE_BIN=$GH_BIN"
else
    say "building: cargo build --locked"
    cargo build --locked
    GH_BIN="${CARGO_TARGET_DIR:-$ROOT/target}/debug/gatehouse"
fi
[ -x "$GH_BIN" ] || die "gatehouse binary not found at $GH_BIN"

# --- work dir ------------------------------------------------------------------
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gatehouse-interop.XXXXXX")
# Postfix daemons run as user 'postfix' and must be able to traverse into the
# queue directory below this dir.
chmod 755 "$WORK"
say "work dir: $WORK"

GH_PID=""
PF_STARTED=0
FAILED=0
RESULTS=()

on_exit() {
    local rc=$?
    set +e
    if [ -n "$GH_PID" ] && kill -0 "$GH_PID" 2>/dev/null; then
        kill -TERM "$GH_PID" 2>/dev/null
        for _ in $(seq 1 150); do kill -0 "$GH_PID" 2>/dev/null || break; sleep 0.1; done
        if kill -0 "$GH_PID" 2>/dev/null; then
            say "gatehouse did not stop within 15 s after SIGTERM; sending SIGKILL"
            kill -KILL "$GH_PID" 2>/dev/null
            rc=1
        fi
        wait "$GH_PID" 2>/dev/null
    fi
    if [ "$PF_STARTED" = 1 ]; then
        $SUDO postfix -c "$WORK/postfix/etc" stop >/dev/null 2>&1 \
            || say "warning: 'postfix -c $WORK/postfix/etc stop' failed"
    fi
    if [ "$rc" -ne 0 ] || [ "$FAILED" -ne 0 ]; then
        echo
        echo "================ gatehouse stdout ($WORK/gatehouse.stdout) ================"
        tail -n 100 "$WORK/gatehouse.stdout" 2>/dev/null
        echo "================ gatehouse stderr ($WORK/gatehouse.stderr, last 300 lines) ================"
        tail -n 300 "$WORK/gatehouse.stderr" 2>/dev/null
        echo "================ postfix log ($WORK/postfix/maillog, last 300 lines) ================"
        tail -n 300 "$WORK/postfix/maillog" 2>/dev/null
        echo "================ swaks transcripts ================"
        for f in "$WORK"/swaks-*.out; do [ -f "$f" ] && { echo "--- $f"; tail -n 60 "$f"; }; done
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
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"
trap 'exit 130' INT
trap 'exit 143' TERM

pass() { RESULTS+=("PASS  $1"); say "PASS: $1"; }
fail() { RESULTS+=("FAIL  $1${2:+ -- $2}"); FAILED=1; say "FAIL: $1${2:+ -- $2}"; }

# --- python helpers (stdlib only) ---------------------------------------------
cat > "$WORK/helpers.py" <<'PY'
import os, socket, sys

def capture(port_file, out):
    """Minimal SMTP sink: records the raw DATA bytes (still dot-stuffed) of one
    message, exactly as the client put them on the wire."""
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    srv.settimeout(60)
    with open(port_file + ".tmp", "w") as f:
        f.write(str(srv.getsockname()[1]))
    os.rename(port_file + ".tmp", port_file)
    c, _ = srv.accept()
    c.settimeout(60)
    r = c.makefile("rb")
    c.sendall(b"220 capture ESMTP\r\n")
    while True:
        line = r.readline()
        if not line:
            break
        cmd = line[:4].upper()
        if cmd == b"EHLO":
            c.sendall(b"250-capture\r\n250-8BITMIME\r\n250 PIPELINING\r\n")
        elif cmd == b"DATA":
            c.sendall(b"354 go ahead\r\n")
            raw = b""
            while True:
                line = r.readline()
                if not line:
                    sys.exit("capture: connection closed inside DATA")
                if line == b".\r\n":
                    break
                raw += line
            with open(out, "wb") as f:
                f.write(raw)
            c.sendall(b"250 2.0.0 captured\r\n")
        elif cmd == b"QUIT":
            c.sendall(b"221 bye\r\n")
            break
        else:
            c.sendall(b"250 ok\r\n")

def split_body(msg):
    i = msg.find(b"\r\n\r\n")
    if i >= 0:
        return msg[:i], msg[i + 4:]
    return None, None

def unstuff(raw):
    """RFC 5321 4.5.2: drop the first '.' of every line that starts with one."""
    lines = raw.split(b"\r\n")
    return b"\r\n".join(l[1:] if l.startswith(b".") else l for l in lines)

def expected(raw_file, body_file, out):
    """Expected stored body = what swaks sent after the header block, dot-unstuffed."""
    raw = open(raw_file, "rb").read()
    hdr, body_stuffed = split_body(raw)
    if hdr is None:
        sys.exit("expected: no CRLF CRLF header/body separator in swaks' output")
    if b"\r\n..\r\n" not in b"\r\n" + body_stuffed:
        sys.exit("expected: swaks did not dot-stuff the '.' line (unexpected swaks behaviour)")
    body = unstuff(body_stuffed)
    src = open(body_file, "rb").read().replace(b"\n", b"\r\n")
    if not body.startswith(src):
        sys.exit("expected: swaks' body does not start with the body file (CRLF-converted)")
    open(out, "wb").write(body)
    print("expected body: %d bytes (body file %d bytes + %r appended by swaks)"
          % (len(body), len(src), body[len(src):]))

def compare(expected_file, stored_file):
    want = open(expected_file, "rb").read()
    msg = open(stored_file, "rb").read()
    hdr, got = split_body(msg)
    if hdr is None:
        if b"\n\n" in msg:
            print("stored message has no CRLF CRLF separator but has LF LF: "
                  "line endings were converted to LF (not byte-exact)")
        else:
            print("stored message has no header/body separator at all")
        return 1
    if b"\r\nReceived:" not in b"\r\n" + hdr:
        print("note: stored message has no Received: header: %r" % hdr[:80])
    if got == want:
        print("body identical: %d bytes" % len(got))
        return 0
    n = next((i for i in range(min(len(got), len(want))) if got[i] != want[i]),
             min(len(got), len(want)))
    print("BODY MISMATCH: expected %d bytes, stored %d bytes, first difference at byte %d"
          % (len(want), len(got), n))
    print("  expected: %r" % want[max(0, n - 40):n + 40])
    print("  stored  : %r" % got[max(0, n - 40):n + 40])
    if got.replace(b"\r\n", b"\n") == want.replace(b"\r\n", b"\n"):
        print("  (bodies are equal except for CRLF vs LF line endings)")
    if unstuff(got) == want:
        print("  (stored body is still dot-stuffed)")
    return 1

if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "capture":
        capture(*args)
    elif cmd == "expected":
        expected(*args)
    elif cmd == "compare":
        sys.exit(compare(*args))
    else:
        sys.exit("unknown helper " + cmd)
PY
H() { python3 "$WORK/helpers.py" "$@"; }


# Prints the path of the first file in DIR/new (or cur) containing TOKEN, waiting up to SECS.
wait_for_mail() { # maildir token secs
    local md=$1 token=$2 secs=$3 f i
    for i in $(seq 1 $((secs * 5))); do
        f=$(grep -rlF -- "$token" "$md/new" "$md/cur" 2>/dev/null | head -n 1 || true)
        if [ -n "$f" ]; then echo "$f"; return 0; fi
        sleep 0.2
    done
    return 1
}

read -r GH_PORT PF_PORT <<<"$(freeports 2)"
DATA_DIR="$WORK/gatehouse-data"
MAILDIR="$DATA_DIR/mail/catchall"

# --- Gatehouse -----------------------------------------------------------------
cat > "$WORK/gatehouse.toml" <<EOF
[server]
hostname = "gatehouse.test"
data_dir = "$DATA_DIR"

[[receive_connector]]
name = "Default"
role = "smtp"
listen = ["127.0.0.1:$GH_PORT"]
relay_networks = []

[[accepted_domain]]
domain = "example.test"
type = "authoritative"

[[mailbox]]
name = "catchall"
addresses = ["@example.test"]
delivery = "maildir"
EOF

say "gatehouse check-config"
"$GH_BIN" check-config --config "$WORK/gatehouse.toml" \
    || die "gatehouse check-config rejected $WORK/gatehouse.toml"

say "starting gatehouse on 127.0.0.1:$GH_PORT"
"$GH_BIN" serve --config "$WORK/gatehouse.toml" >"$WORK/gatehouse.stdout" 2>"$WORK/gatehouse.stderr" &
GH_PID=$!
if ! wait_port "$GH_PORT" 30 "$GH_PID"; then
    die "gatehouse is not accepting on 127.0.0.1:$GH_PORT after 30 s (or exited)"
fi
say "gatehouse up (pid $GH_PID)"

# --- message body with awkward lines --------------------------------------------
make_body() { # token file
    {
        printf 'Gatehouse interop test, token %s\n' "$1"
        printf '.\n'
        printf '..\n'
        printf '..line starting with two dots\n'
        printf '.line starting with one dot\n'
        printf '%s' "$(printf '0123456789%.0s' $(seq 1 89))"; printf 'ABCDEFGHIJ\n'   # 900 chars
        printf 'UTF-8: Grüße aus Köln — naïve café, 日本語, Ελληνικά, emoji ✉️\n'
        printf '\n'
        printf 'line with trailing spaces   \n'
        printf '\ttab-indented line\n'
        printf ' .space then dot\n'
        printf 'last line %s\n' "$1"
    } > "$2"
}

SWAKS_COMMON=(--from interop-sender@client.test --helo interop-client.test --timeout 30
              --header "Subject: gatehouse interop")

# Learn exactly what swaks puts on the wire for a body file (it converts LF to
# CRLF, dot-stuffs and appends its own trailer), so "expected" is really what
# was sent, independent of the swaks version.
make_expected() { # body-file expected-out tag
    local portf="$WORK/capture-$3.port" raw="$WORK/capture-$3.raw" cap_pid
    rm -f "$portf"
    H capture "$portf" "$raw" & cap_pid=$!
    for _ in $(seq 1 100); do [ -s "$portf" ] && break; sleep 0.1; done
    [ -s "$portf" ] || { kill "$cap_pid" 2>/dev/null; return 1; }
    swaks --server "127.0.0.1:$(cat "$portf")" --to alice@example.test "${SWAKS_COMMON[@]}" \
        --body "@$1" >"$WORK/swaks-capture-$3.out" 2>&1 || { kill "$cap_pid" 2>/dev/null; return 1; }
    wait "$cap_pid" || return 1
    H expected "$raw" "$1" "$2"
}

# --- 1. swaks -> Gatehouse --------------------------------------------------------
T1="swaks -> gatehouse: awkward body stored byte-exact in Maildir"
TOKEN1="direct-$(date +%s%N)-$$"
make_body "$TOKEN1" "$WORK/body1.txt"
if ! make_expected "$WORK/body1.txt" "$WORK/expected1.bin" 1; then
    fail "$T1" "could not capture swaks' wire format (see $WORK/swaks-capture-1.out)"
elif ! swaks --server "127.0.0.1:$GH_PORT" --to alice@example.test "${SWAKS_COMMON[@]}" \
        --body "@$WORK/body1.txt" >"$WORK/swaks-1-direct.out" 2>&1; then
    fail "$T1" "swaks reported a failure (transcript: $WORK/swaks-1-direct.out)"
elif ! F1=$(wait_for_mail "$MAILDIR" "$TOKEN1" 30); then
    fail "$T1" "accepted, but no message with token $TOKEN1 in $MAILDIR/new within 30 s"
else
    say "stored as $F1"
    if H compare "$WORK/expected1.bin" "$F1"; then pass "$T1"; else fail "$T1" "body differs"; fi
fi

# --- 2. swaks -> private Postfix -> Gatehouse -----------------------------------------
T2="swaks -> private postfix -> gatehouse: relayed body stored byte-exact"
PF="$WORK/postfix"
mkdir -p "$PF/etc" "$PF/spool" "$PF/data"
$SUDO chown postfix: "$PF/data"
$SUDO chmod 700 "$PF/data"
cat > "$PF/etc/main.cf" <<EOF
# Private Postfix instance for the Gatehouse interop test. Not the system one.
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
relay_domains =
local_recipient_maps =
alias_maps =
alias_database =
mynetworks = 127.0.0.0/8
relayhost = [127.0.0.1]:$GH_PORT
smtp_tls_security_level = none
smtpd_tls_security_level = none
# Pass 8-bit bodies through unchanged even if the next hop did not announce
# 8BITMIME: this test is about byte-exact transport, not Postfix's conversion.
disable_mime_output_conversion = yes
fast_flush_domains =
biff = no
# Retry quickly if the first attempt is deferred.
queue_run_delay = 2s
minimal_backoff_time = 2s
maximal_backoff_time = 4s
EOF
private_postfix_master_cf "$PF/etc/master.cf" "$PF_PORT" \
    "verify    unix  -       -       n       -       1       verify" \
    "smtp      unix  -       -       n       -       -       smtp" \
    "relay     unix  -       -       n       -       -       smtp"

say "starting private postfix: postfix -c $PF/etc start (smtpd on 127.0.0.1:$PF_PORT)"
if ! $SUDO postfix -c "$PF/etc" start; then
    fail "$T2" "postfix -c $PF/etc start failed"
else
    PF_STARTED=1
    TOKEN2="via-postfix-$(date +%s%N)-$$"
    make_body "$TOKEN2" "$WORK/body2.txt"
    if ! wait_port "$PF_PORT" 30; then
        fail "$T2" "private postfix smtpd not accepting on 127.0.0.1:$PF_PORT"
    elif ! make_expected "$WORK/body2.txt" "$WORK/expected2.bin" 2; then
        fail "$T2" "could not capture swaks' wire format (see $WORK/swaks-capture-2.out)"
    elif ! swaks --server "127.0.0.1:$PF_PORT" --to alice@example.test "${SWAKS_COMMON[@]}" \
            --body "@$WORK/body2.txt" >"$WORK/swaks-2-postfix.out" 2>&1; then
        fail "$T2" "postfix did not accept the message from swaks (transcript: $WORK/swaks-2-postfix.out)"
    elif ! F2=$(wait_for_mail "$MAILDIR" "$TOKEN2" "$DELIVERY_WAIT"); then
        fail "$T2" "no message with token $TOKEN2 in $MAILDIR/new within $DELIVERY_WAIT s"
    else
        say "stored as $F2"
        grep -E 'postfix/smtp\[.*status=' "$PF/maillog" | tail -n 1 | sed 's/^/[interop] postfix: /' || true
        if H compare "$WORK/expected2.bin" "$F2"; then pass "$T2"; else fail "$T2" "body differs"; fi
    fi
fi

# --- 3. relay denial ---------------------------------------------------------------
T3="swaks -> gatehouse for bob@elsewhere.test: 550 5.7.1"
set +e
swaks --server "127.0.0.1:$GH_PORT" --to bob@elsewhere.test "${SWAKS_COMMON[@]}" \
    --quit-after RCPT >"$WORK/swaks-3-relay.out" 2>&1
S3=$?
set -e
# swaks exit status 24: "the server returned an error to RCPT TO"
if [ "$S3" -ne 24 ]; then
    fail "$T3" "swaks exit status $S3, expected 24 (RCPT rejected)"
elif ! grep -Eq '^<\*\* +550[ -]5\.7\.1' "$WORK/swaks-3-relay.out"; then
    fail "$T3" "RCPT rejected but not with '550 5.7.1': $(grep -E '^<\*\*' "$WORK/swaks-3-relay.out" | head -n 1)"
else
    pass "$T3"
fi

# --- gatehouse still alive? --------------------------------------------------------
if ! kill -0 "$GH_PID" 2>/dev/null; then
    fail "gatehouse still running after the tests" "it exited"
fi

echo
echo "==== interop summary ===="
printf '%s\n' "${RESULTS[@]}"
if [ "$FAILED" -ne 0 ]; then
    echo "interop: FAIL"
    exit 1
fi
echo "interop: PASS"
