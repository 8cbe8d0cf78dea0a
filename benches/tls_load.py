#!/usr/bin/env python3
"""HTTPS load generator for benches/passthrough.sh (stdlib only).

wrk cannot send CONNECT, so this drives HTTPS through the proxy: each of
--threads threads opens ONE keep-alive TLS connection (through `CONNECT` when
--proxy is given) and sends up to --requests GETs on it, stopping at
--duration seconds. One untimed warm-up request per connection (TCP + TLS
handshake, and on the proxy the leaf-certificate minting) is left out of the
figures; the clock starts once every connection is warm. --procs N runs N
processes of --threads threads each (the GIL caps one process at a few
thousand requests/s).

Prints one JSON line:
  {"mode","connections","requests","errors","non_2xx","seconds","rps","p50_ms","p90_ms","p99_ms"}
and exits non-zero when no request succeeded or any failed.

Examples:
  # direct: connect to 127.0.0.1, SNI/Host bench.test, trust the throwaway CA
  tls_load.py --host bench.test --port 8443 --connect-ip 127.0.0.1 --cafile ca.pem
  # through ezthrottle (it resolves bench.test itself), trust ezthrottle's CA
  tls_load.py --host bench.test --port 8443 --proxy 127.0.0.1:4000 --cafile data/ca/ca.pem
"""

import argparse
import http.client
import json
import multiprocessing as mp
import signal
import socket
import ssl
import sys
import threading
import time

MAX_ERRORS_PER_CONNECTION = 100


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", required=True, help="target host name (SNI, certificate name, Host header)")
    p.add_argument("--port", type=int, required=True, help="target HTTPS port")
    p.add_argument("--path", default="/")
    p.add_argument("--cafile", required=True, help="CA bundle that must verify the server certificate")
    p.add_argument("--proxy", help="HOST:PORT of an HTTP proxy to CONNECT through")
    p.add_argument("--connect-ip", help="direct mode: connect here instead of resolving --host")
    p.add_argument("--threads", type=int, default=16, help="connections per process (one per thread)")
    p.add_argument("--procs", type=int, default=1, help="processes")
    p.add_argument("--requests", type=int, default=1_000_000, help="requests per connection, at most")
    p.add_argument("--duration", type=float, default=10.0, help="seconds of measured load")
    p.add_argument("--timeout", type=float, default=10.0, help="socket timeout, seconds")
    args = p.parse_args(argv)
    if args.threads < 1 or args.procs < 1 or args.requests < 1 or args.duration <= 0:
        p.error("--threads, --procs, --requests and --duration must be positive")
    return args


def make_connection(args, ctx):
    if args.proxy:
        phost, _, pport = args.proxy.rpartition(":")
        conn = http.client.HTTPSConnection(phost.strip("[]"), int(pport), context=ctx, timeout=args.timeout)
        conn.set_tunnel(args.host, args.port)
    else:
        conn = http.client.HTTPSConnection(args.host, args.port, context=ctx, timeout=args.timeout)
        if args.connect_ip:
            ip = args.connect_ip

            def create(address, *a, **kw):
                return socket.create_connection((ip, address[1]), *a, **kw)

            # http.client connects through this hook; the host name stays
            # --host for SNI, certificate verification and Host.
            conn._create_connection = create
    return conn


class Worker(threading.Thread):
    def __init__(self, args, ctx, warm, go):
        super().__init__(daemon=True)
        self.args, self.ctx, self.warm, self.go = args, ctx, warm, go
        self.deadline = 0.0
        self.latencies = []
        self.errors = 0
        self.non_2xx = 0
        self.first_error = None

    def request(self, conn):
        conn.request("GET", self.args.path)
        resp = conn.getresponse()
        resp.read()
        return resp.status

    def failed(self, e):
        self.errors += 1
        if self.first_error is None:
            self.first_error = f"{type(e).__name__}: {e}"

    def run(self):
        conn = make_connection(self.args, self.ctx)
        try:
            self.request(conn)  # warm-up: connect, CONNECT, TLS handshake
        except Exception as e:  # noqa: BLE001 - a benchmark reports, it does not crash
            self.failed(e)
            conn.close()
            conn = make_connection(self.args, self.ctx)
        self.warm.release()
        if not self.go.wait(2 * self.args.timeout + 10):
            conn.close()
            return
        perf = time.perf_counter
        errors_here = 0
        for _ in range(self.args.requests):
            if perf() >= self.deadline:
                break
            t0 = perf()
            try:
                status = self.request(conn)
            except Exception as e:  # noqa: BLE001
                self.failed(e)
                conn.close()
                errors_here += 1
                if errors_here > MAX_ERRORS_PER_CONNECTION:
                    break
                conn = make_connection(self.args, self.ctx)
                continue
            self.latencies.append(perf() - t0)
            if not 200 <= status < 300:
                self.non_2xx += 1
        conn.close()


def run_threads(args, ready=None):
    """Warm up --threads connections, call `ready()` (cross-process start
    barrier), load for --duration; return the raw results."""
    ctx = ssl.create_default_context(cafile=args.cafile)
    warm = threading.Semaphore(0)
    go = threading.Event()
    workers = [Worker(args, ctx, warm, go) for _ in range(args.threads)]
    for w in workers:
        w.start()
    warm_deadline = time.monotonic() + 2 * args.timeout + 5
    for _ in workers:
        if not warm.acquire(timeout=max(0.0, warm_deadline - time.monotonic())):
            break
    if ready is not None:
        ready()
    t0 = time.perf_counter()
    for w in workers:
        w.deadline = t0 + args.duration
    go.set()
    for w in workers:
        w.join(args.duration + args.timeout + 5)
    elapsed = time.perf_counter() - t0
    return {
        "latencies": [x for w in workers for x in w.latencies],
        "errors": sum(w.errors for w in workers),
        "non_2xx": sum(w.non_2xx for w in workers),
        "first_error": next((w.first_error for w in workers if w.first_error), None),
        "seconds": elapsed,
    }


def child(args, barrier, out):
    def ready():
        try:
            barrier.wait(2 * args.timeout + 10)
        except Exception:  # noqa: BLE001 - a broken barrier: start anyway
            pass

    try:
        out.put(run_threads(args, ready))
    except Exception as e:  # noqa: BLE001
        out.put({"latencies": [], "errors": 1, "non_2xx": 0, "first_error": repr(e), "seconds": 0.0})


def percentile(sorted_values, pct):
    """Nearest-rank percentile."""
    if not sorted_values:
        return None
    rank = -(-len(sorted_values) * pct // 100)  # ceil
    return sorted_values[max(0, min(len(sorted_values) - 1, int(rank) - 1))]


def main():
    args = parse_args()
    # Exit through sys.exit on SIGTERM so that daemonic load processes are
    # terminated too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.procs == 1:
        results = [run_threads(args)]
    else:
        barrier = mp.Barrier(args.procs)
        out = mp.Queue()
        procs = [mp.Process(target=child, args=(args, barrier, out), daemon=True) for _ in range(args.procs)]
        for p in procs:
            p.start()
        bound = 3 * args.timeout + args.duration + 20
        results = []
        for _ in procs:
            try:
                results.append(out.get(timeout=bound))
            except Exception:  # noqa: BLE001 - queue.Empty: a child hung
                results.append({"latencies": [], "errors": 1, "non_2xx": 0,
                                "first_error": "a load process did not report", "seconds": 0.0})
        for p in procs:
            p.join(5)
            if p.is_alive():
                p.kill()

    lat = sorted(x for r in results for x in r["latencies"])
    errors = sum(r["errors"] for r in results)
    elapsed = max((r["seconds"] for r in results), default=0.0)
    first_error = next((r["first_error"] for r in results if r["first_error"]), None)

    def ms(v):
        return None if v is None else round(v * 1000.0, 3)

    out = {
        "mode": "proxied" if args.proxy else "direct",
        "connections": args.threads * args.procs,
        "requests": len(lat),
        "errors": errors,
        "non_2xx": sum(r["non_2xx"] for r in results),
        "seconds": round(elapsed, 3),
        "rps": round(len(lat) / elapsed, 1) if elapsed > 0 else 0.0,
        "p50_ms": ms(percentile(lat, 50)),
        "p90_ms": ms(percentile(lat, 90)),
        "p99_ms": ms(percentile(lat, 99)),
    }
    if first_error:
        out["first_error"] = first_error
    print(json.dumps(out), flush=True)
    return 0 if lat and errors == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
