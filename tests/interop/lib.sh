# Shared by tests/interop/*.sh and bench/*.sh (source it; it defines
# functions only): free loopback ports, waiting for a port, and the
# master.cf of a private Postfix instance.

# freeports N [EXCLUDE...]: N distinct free ports on 127.0.0.1, space separated.
freeports() {
    python3 - "$@" <<'PY'
import socket, sys
n, exclude = int(sys.argv[1]), set(sys.argv[2:])
socks, ports = [], []
while len(ports) < n:
    s = socket.socket(); s.bind(("127.0.0.1", 0)); socks.append(s)
    p = str(s.getsockname()[1])
    if p not in exclude:
        ports.append(p)
print(" ".join(ports))
for s in socks: s.close()
PY
}

# freeport [EXCLUDE...]: one free port.
freeport() { freeports 1 "$@"; }

# wait_port PORT SECONDS [PID]: 0 when 127.0.0.1:PORT accepts, 1 on
# timeout, 2 when PID (if given) has exited.
wait_port() {
    local port=$1 secs=$2 pid=${3:-} i
    for i in $(seq 1 $((secs * 10))); do
        (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && return 0
        if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then return 2; fi
        sleep 0.1
    done
    return 1
}

# private_postfix_master_cf FILE PORT [EXTRA-LINE...]: writes a master.cf
# with smtpd on 127.0.0.1:PORT and the services every private instance
# needs, plus the given extra service lines (smtp, tlsmgr, ...).
private_postfix_master_cf() {
    local file=$1 port=$2
    shift 2
    {
        echo "# service type  private unpriv  chroot  wakeup  maxproc command"
        echo "127.0.0.1:$port inet n - n - - smtpd"
        cat <<'CF'
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
proxymap  unix  -       -       n       -       -       proxymap
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
CF
        local line
        for line in "$@"; do echo "$line"; done
    } > "$file"
}
