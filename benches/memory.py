#!/usr/bin/env python3
"""Proxy memory under many waiting requests, and after they are gone.

    benches/memory.py                      # 1,000 and 10,000 waiting requests
    WAITERS=1000,5000 IDLE=60 benches/memory.py

Starts the release binary (EZTHROTTLE_BIN, default
$CARGO_TARGET_DIR/release/ezthrottle) on loopback with max_concurrent = 1 and
one request holding that slot against an origin that never answers, so every
other request waits in the domain's queue. Opens N client connections that
each send one request (X-EZThrottle-Max-Wait: WAIT seconds) and prints the
proxy's RSS (and AnonHugePages) from /proc:

  before      idle proxy, nothing open
  waiting     N requests waiting
  per req     (waiting - before) / N
  answered    right after every request got its 429 (max wait over)
  +60s        AFTER (default 60) s later, no traffic
  +idle       after IDLE more seconds, no traffic (default 600: the issue's
              "does not grow while idle"), sampled every SAMPLE (60) seconds

IDLE_CONNS=N first measures N idle keep-alive connections (no request).

No thresholds: it prints figures. All traffic stays on 127.0.0.1. Figures
and what they led to: docs/memory.md.
"""

import os
import resource
import selectors
import socket
import subprocess
import sys
import tempfile
import time

WAITERS = [int(x) for x in os.environ.get("WAITERS", "1000,10000").split(",") if x]
WAIT = float(os.environ.get("WAIT", "20"))
IDLE = float(os.environ.get("IDLE", "600"))
AFTER = float(os.environ.get("AFTER", "60"))
SAMPLE = float(os.environ.get("SAMPLE", "60"))
IDLE_CONNS = int(os.environ.get("IDLE_CONNS", "0"))
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.join(os.path.dirname(__file__), "..", "target"))
BIN = os.environ.get("EZTHROTTLE_BIN", os.path.join(TARGET, "release", "ezthrottle"))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def status(pid):
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "RssAnon"):
                out[k] = int(v.split()[0])
    huge = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("AnonHugePages:"):
                    huge = int(line.split()[1])
    except OSError:
        pass
    out["AnonHugePages"] = huge
    return out


def fmt(st):
    return f"RSS {st['VmRSS'] / 1024:8.1f} MiB  anon {st.get('RssAnon', 0) / 1024:8.1f} MiB  hugepages {st['AnonHugePages'] / 1024:6.1f} MiB"


def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, 200_000)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def start_proxy(work):
    proxy, control = free_port(), free_port()
    conf = os.path.join(work, "ezthrottle.toml")
    with open(conf, "w") as f:
        f.write(f"""data_dir = "{work}/data"
[proxy]
listen = "127.0.0.1:{proxy}"
max_buffered = "2GiB"
[control]
listen = "127.0.0.1:{control}"
[limits]
rps = 10000.0
max_concurrent = 1
queue_capacity = 1000000
max_wait = "1h"
""")
    env = dict(os.environ, EZTHROTTLE_LOG=os.environ.get("EZTHROTTLE_LOG", "warn"))
    p = subprocess.Popen([BIN, "run", "--config", conf], stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL, env=env, preexec_fn=raise_nofile)
    deadline = time.time() + 60
    while time.time() < deadline:
        line = p.stdout.readline().decode()
        if line.startswith("ezthrottle ready"):
            return p, proxy
        if not line and p.poll() is not None:
            sys.exit(f"proxy exited: {p.returncode}")
    sys.exit("proxy not ready in 60 s")


def hanging_origin():
    """A listener that accepts and never answers: the slot holder's upstream."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(64)
    return srv


def burst(proxy, origin_port, n):
    """Open n waiting requests; return the sockets once all were sent."""
    socks = []
    host = f"127.0.0.1:{origin_port}"
    req = (f"GET http://{host}/x HTTP/1.1\r\nHost: {host}\r\n"
           f"X-EZThrottle-Max-Wait: {WAIT}\r\n\r\n").encode()
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", proxy))
        s.sendall(req)
        socks.append(s)
    return socks


def wait_answers(socks, timeout):
    sel = selectors.DefaultSelector()
    for s in socks:
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)
    pending = len(socks)
    codes = {}
    deadline = time.time() + timeout
    while pending and time.time() < deadline:
        for key, _ in sel.select(timeout=1):
            try:
                data = key.fileobj.recv(4096)
            except BlockingIOError:
                continue
            code = data.split(b" ", 2)[1].decode() if data.startswith(b"HTTP/") else "closed"
            codes[code] = codes.get(code, 0) + 1
            sel.unregister(key.fileobj)
            key.fileobj.close()
            pending -= 1
    return codes, pending


def idle_connections(n):
    """RSS per idle keep-alive connection: n connections open, no request."""
    with tempfile.TemporaryDirectory() as work:
        p, proxy = start_proxy(work)
        try:
            time.sleep(1)
            before = status(p.pid)
            socks = [socket.create_connection(("127.0.0.1", proxy)) for _ in range(n)]
            time.sleep(3)
            after = status(p.pid)
            per = (after["VmRSS"] - before["VmRSS"]) / n
            print(f"== {n} idle connections")
            print(f"  before     {fmt(before)}")
            print(f"  open       {fmt(after)}")
            print(f"  per conn   {per:8.1f} KiB")
            sys.stdout.flush()
            for s in socks:
                s.close()
        finally:
            p.kill()
            p.wait()


def main():
    if not os.path.exists(BIN):
        sys.exit(f"no release binary at {BIN}: cargo build --release (or set EZTHROTTLE_BIN)")
    raise_nofile()
    if IDLE_CONNS:
        idle_connections(IDLE_CONNS)
    for n in WAITERS:
        with tempfile.TemporaryDirectory() as work:
            p, proxy = start_proxy(work)
            try:
                # Let the process settle (allocator warm-up, listener ready).
                time.sleep(1)
                origin = hanging_origin()
                holder = burst(proxy, origin.getsockname()[1], 1)
                origin.settimeout(30)
                upstream, _ = origin.accept()  # the holder is upstream now
                before = status(p.pid)
                t0 = time.time()
                socks = burst(proxy, origin.getsockname()[1], n)
                # Every request is read and queued once the domain shows n waiting.
                while time.time() - t0 < 60:
                    st = status(p.pid)
                    time.sleep(0.5)
                    if status(p.pid)["VmRSS"] == st["VmRSS"]:
                        break
                waiting = status(p.pid)
                codes, left = wait_answers(socks, WAIT + 60)
                answered = status(p.pid)
                time.sleep(AFTER)
                after60 = status(p.pid)
                samples = []
                t_idle = time.time()
                while time.time() - t_idle < IDLE:
                    time.sleep(min(SAMPLE, max(0.0, IDLE - (time.time() - t_idle))))
                    samples.append((time.time() - t_idle, status(p.pid)))
                idle = status(p.pid)
                per = (waiting["VmRSS"] - before["VmRSS"]) / n
                print(f"== {n} waiting requests (answers: {codes}, unanswered {left})")
                print(f"  before     {fmt(before)}")
                print(f"  waiting    {fmt(waiting)}")
                print(f"  per req    {per:8.1f} KiB")
                print(f"  answered   {fmt(answered)}")
                print(f"  +{AFTER:.0f}s       {fmt(after60)}")
                for t, st in samples[:-1]:
                    print(f"    idle {t:5.0f}s {fmt(st)}")
                print(f"  +{IDLE:.0f}s idle {fmt(idle)}")
                sys.stdout.flush()
            finally:
                p.kill()
                p.wait()
                for s in locals().get("holder", []):
                    s.close()


if __name__ == "__main__":
    main()
