#!/usr/bin/env python3
"""gRPC unary load for benches/h2.sh (grpcio from PyPI).

Keeps --inflight unary calls (t.Test/Unary of tests/py/grpc_pair.py) in
flight on ONE channel for --duration seconds, direct or through a proxy
(`--proxy`, sent as the channel's grpc.http_proxy: a CONNECT tunnel), and
prints one JSON line {mode, inflight, calls, errors, seconds, cps, p50_ms,
p99_ms}. Exits 1 when no call succeeded.

  grpc_load.py --target origin.test:PORT --cafile origin-ca.pem --connect 127.0.0.1:PORT
  grpc_load.py --target origin.test:PORT --cafile ezthrottle-ca.pem --proxy http://127.0.0.1:4000
"""

import argparse
import json
import sys
import threading
import time

import grpc


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--target", required=True, help="host:port the certificate names")
    p.add_argument("--cafile", required=True)
    p.add_argument("--proxy", help="http://host:port to CONNECT through")
    p.add_argument("--connect", help="direct: connect here (host:port), checking --target's name")
    p.add_argument("--inflight", type=int, default=32)
    p.add_argument("--duration", type=float, default=10.0)
    a = p.parse_args()

    with open(a.cafile, "rb") as f:
        creds = grpc.ssl_channel_credentials(root_certificates=f.read())
    host = a.target.rsplit(":", 1)[0]
    options = [("grpc.enable_retries", 0)]
    if a.proxy:
        options.append(("grpc.http_proxy", a.proxy))
        address = a.target
    else:
        options += [("grpc.enable_http_proxy", 0), ("grpc.ssl_target_name_override", host)]
        address = a.connect or a.target
    channel = grpc.secure_channel(address, creds, options=options)
    unary = channel.unary_unary("/t.Test/Unary", request_serializer=None, response_deserializer=None)
    unary(b"warm", timeout=30)

    lock = threading.Lock()
    done = threading.Event()
    lat, errors = [], [0]
    stop = time.monotonic() + a.duration
    running = [0]

    def launch():
        t0 = time.monotonic()
        fut = unary.future(b"x" * 32, timeout=30)

        def finished(f, t0=t0):
            now = time.monotonic()
            with lock:
                if f.code() == grpc.StatusCode.OK:
                    lat.append(now - t0)
                else:
                    errors[0] += 1
                if now < stop:
                    again = True
                else:
                    again = False
                    running[0] -= 1
                    if running[0] == 0:
                        done.set()
            if again:
                launch()

        fut.add_done_callback(finished)

    start = time.monotonic()
    running[0] = a.inflight
    for _ in range(a.inflight):
        launch()
    done.wait(a.duration + 60)
    secs = time.monotonic() - start
    channel.close()
    lat.sort()
    pct = lambda q: round(lat[int(q * (len(lat) - 1))] * 1000, 3) if lat else 0
    print(json.dumps({
        "mode": "proxy" if a.proxy else "direct", "inflight": a.inflight, "calls": len(lat),
        "errors": errors[0], "seconds": round(secs, 3), "cps": round(len(lat) / secs, 1),
        "p50_ms": pct(0.5), "p99_ms": pct(0.99),
    }))
    sys.exit(0 if lat else 1)


if __name__ == "__main__":
    main()
