#!/usr/bin/env python3
"""Hold N idle SMTP sessions open against a server (stdlib only).

Each connection: read the 220 banner, send "EHLO bench.test", read the 250
reply, then stay idle. When all attempts have finished it prints one line to
stdout:

    READY established=<n> failed=<n> seconds=<t>

then holds the connections until SIGTERM/SIGINT or --hold seconds, and prints

    CLOSING still_open=<n> closed_by_server=<n> unsolicited_data=<n>

before closing them all. Progress and errors go to stderr. Exit status 0 only
if every connection was established and still open at the end.

    python3 bench/idle_client.py --port 2525 -n 10000
"""
import argparse
import asyncio
import resource
import signal
import sys
import time


async def read_reply(reader, timeout):
    """Read one (possibly multi-line) SMTP reply; return (code, lines)."""
    lines = []
    while True:
        line = await asyncio.wait_for(reader.readline(), timeout)
        if not line:
            raise ConnectionError("connection closed by server")
        lines.append(line)
        if len(line) < 4 or line[3:4] != b"-":
            return line[:3], lines


async def open_session(host, port, timeout, ehlo):
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    try:
        code, lines = await read_reply(reader, timeout)
        if code != b"220":
            raise ConnectionError("banner: %r" % lines[0])
        writer.write(b"EHLO " + ehlo + b"\r\n")
        await writer.drain()
        code, lines = await read_reply(reader, timeout)
        if code != b"250":
            raise ConnectionError("EHLO: %r" % lines[0])
    except BaseException:
        writer.close()
        raise
    return reader, writer


async def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("-n", "--connections", type=int, default=10000)
    ap.add_argument("--parallel", type=int, default=200,
                    help="connection attempts in flight at once (default 200)")
    ap.add_argument("--timeout", type=float, default=30.0, help="per step, seconds")
    ap.add_argument("--hold", type=float, default=0, help="seconds to hold (0 = until signalled)")
    ap.add_argument("--ehlo", default="bench.test")
    args = ap.parse_args()

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = args.connections + 256
    if soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard) if hard != resource.RLIM_INFINITY else want, hard))
        except (ValueError, OSError):
            pass
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        if soft < want:
            print("warning: open-file limit %d < %d needed; raise ulimit -n" % (soft, want), file=sys.stderr)

    sem = asyncio.Semaphore(args.parallel)
    sessions = []
    errors = {}
    t0 = time.monotonic()
    ehlo = args.ehlo.encode()

    async def one(i):
        async with sem:
            try:
                sessions.append(await open_session(args.host, args.port, args.timeout, ehlo))
            except Exception as e:  # noqa: BLE001 - count every failure kind
                key = "%s: %s" % (type(e).__name__, str(e)[:80])
                errors[key] = errors.get(key, 0) + 1
        done = len(sessions) + sum(errors.values())
        if done % 1000 == 0:
            print("progress: %d/%d (established %d)" % (done, args.connections, len(sessions)),
                  file=sys.stderr, flush=True)

    await asyncio.gather(*(one(i) for i in range(args.connections)))
    failed = sum(errors.values())
    for k, v in sorted(errors.items(), key=lambda kv: -kv[1]):
        print("error x%d: %s" % (v, k), file=sys.stderr)
    print("READY established=%d failed=%d seconds=%.2f"
          % (len(sessions), failed, time.monotonic() - t0), flush=True)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if args.hold > 0:
        try:
            await asyncio.wait_for(stop.wait(), args.hold)
        except asyncio.TimeoutError:
            pass
    else:
        await stop.wait()

    # StreamReaderProtocol feeds EOF into the reader when the server closes,
    # even with no read pending, so the reader's EOF flag tells us who is
    # still connected (at_eof() alone misses a close preceded by a 421 line).
    closed = sum(1 for r, _ in sessions if getattr(r, "_eof", False) or r.at_eof())
    unsolicited = sum(1 for r, _ in sessions if len(getattr(r, "_buffer", b"")) > 0)
    still_open = len(sessions) - closed
    print("CLOSING still_open=%d closed_by_server=%d unsolicited_data=%d"
          % (still_open, closed, unsolicited), flush=True)
    for _, w in sessions:
        w.close()
    ok = failed == 0 and closed == 0 and len(sessions) == args.connections
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
