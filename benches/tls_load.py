#!/usr/bin/env python3
"""HTTPS load generator for benches/passthrough.sh (stdlib only).

wrk cannot send CONNECT, so this drives HTTPS through the proxy: each of
--threads threads opens ONE keep-alive TLS connection (through `CONNECT` when
--proxy is given) and sends up to --requests GETs on it, stopping early at
--duration seconds. One untimed warm-up request per connection (TCP + TLS
handshake, and on the proxy the leaf-certificate minting) is left out of the
figures.

Prints one JSON line:
  {"requests", "errors", "non_2xx", "seconds", "rps", "p50_ms", "p90_ms", "p99_ms", ...}

Examples:
  # direct: connect to 127.0.0.1, SNI/Host bench.test, trust the throwaway CA
  tls_load.py --host bench.test --port 8443 --connect-ip 127.0.0.1 --cafile ca.pem
  # through ezthrottle (it resolves bench.test itself), trust ezthrottle's CA
  tls_load.py --host bench.test --port 8443 --proxy 127.0.0.1:4000 --cafile data/ca/ca.pem
"""

import argparse
import http.client
import json
import socket
import ssl
import sys
import threading
import time


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", required=True, help="target host name (SNI, certificate name, Host header)")
    p.add_argument("--port", type=int, required=True, help="target HTTPS port")
    p.add_argument("--path", default="/")
    p.add_argument("--cafile", required=True, help="CA bundle that must verify the server certificate")
    p.add_argument("--proxy", help="HOST:PORT of an HTTP proxy to CONNECT through")
    p.add_argument("--connect-ip", help="direct mode: connect here instead of resolving --host")
    p.add_argument("--threads", type=int, default=16, help="connections (one per thread)")
    p.add_argument("--requests", type=int, default=2000, help="requests per connection, at most")
    p.add_argument("--duration", type=float, default=10.0, help="stop after this many seconds")
    p.add_argument("--timeout", type=float, default=10.0, help="socket timeout, seconds")
    return p.parse_args()


def make_connection(args, ctx):
    if args.proxy:
        phost, _, pport = args.proxy.rpartition(":")
        conn = http.client.HTTPSConnection(phost, int(pport), context=ctx, timeout=args.timeout)
        conn.set_tunnel(args.host, args.port)
    else:
        conn = http.client.HTTPSConnection(args.host, args.port, context=ctx, timeout=args.timeout)
        if args.connect_ip:
            ip = args.connect_ip

            def create(address, *a, **kw):
                return socket.create_connection((ip, address[1]), *a, **kw)

            # http.client connects through this hook; the host name stays
            # bench.test for SNI, certificate verification and Host.
            conn._create_connection = create
    return conn


class Worker(threading.Thread):
    def __init__(self, args, ctx, start_evt, deadline_box, warmed, warmed_cv):
        super().__init__(daemon=True)
        self.warmed = warmed
        self.warmed_cv = warmed_cv
        self.args = args
        self.ctx = ctx
        self.start_evt = start_evt
        self.deadline_box = deadline_box
        self.latencies = []
        self.errors = 0
        self.non_2xx = 0
        self.first_error = None

    def one(self, conn):
        conn.request("GET", self.args.path, headers={"Connection": "keep-alive"})
        resp = conn.getresponse()
        resp.read()
        return resp.status

    def note_error(self, e):
        self.errors += 1
        if self.first_error is None:
            self.first_error = f"{type(e).__name__}: {e}"

    def run(self):
        conn = make_connection(self.args, self.ctx)
        try:
            self.one(conn)  # warm-up: connect, CONNECT, TLS handshake
        except Exception as e:  # noqa: BLE001 - a benchmark reports, it does not crash
            self.note_error(e)
            conn.close()
            conn = make_connection(self.args, self.ctx)
        with self.warmed_cv:
            self.warmed[0] += 1
            self.warmed_cv.notify_all()
        self.start_evt.wait()
        deadline = self.deadline_box[0]
        perf = time.perf_counter
        for _ in range(self.args.requests):
            if perf() >= deadline:
                break
            t0 = perf()
            try:
                status = self.one(conn)
            except Exception as e:  # noqa: BLE001
                self.note_error(e)
                conn.close()
                if self.errors > 100:
                    break
                conn = make_connection(self.args, self.ctx)
                continue
            self.latencies.append(perf() - t0)
            if not 200 <= status < 300:
                self.non_2xx += 1
        conn.close()


def percentile(sorted_values, pct):
    if not sorted_values:
        return None
    k = max(0, min(len(sorted_values) - 1, int(round(pct / 100.0 * len(sorted_values) + 0.5)) - 1))
    return sorted_values[k]


def main():
    args = parse_args()
    ctx = ssl.create_default_context(cafile=args.cafile)

    start_evt = threading.Event()
    deadline_box = [0.0]
    warmed = [0]
    warmed_cv = threading.Condition()
    workers = [Worker(args, ctx, start_evt, deadline_box, warmed, warmed_cv) for _ in range(args.threads)]
    for w in workers:
        w.start()
    # Start the clock once every connection is warmed up (bounded wait).
    warm_deadline = time.monotonic() + 2 * args.timeout + 5
    with warmed_cv:
        while warmed[0] < len(workers):
            left = warm_deadline - time.monotonic()
            if left <= 0:
                break
            warmed_cv.wait(left)
    t0 = time.perf_counter()
    deadline_box[0] = t0 + args.duration
    start_evt.set()
    for w in workers:
        w.join(args.duration + args.timeout + 5)
    elapsed = time.perf_counter() - t0

    lat = sorted(x for w in workers for x in w.latencies)
    errors = sum(w.errors for w in workers)
    first_error = next((w.first_error for w in workers if w.first_error), None)
    ms = lambda v: None if v is None else round(v * 1000.0, 3)  # noqa: E731
    out = {
        "mode": "proxied" if args.proxy else "direct",
        "threads": args.threads,
        "requests": len(lat),
        "errors": errors,
        "non_2xx": sum(w.non_2xx for w in workers),
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
