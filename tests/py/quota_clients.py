#!/usr/bin/env python3
"""Many concurrent clients calling one URL until a deadline, the way an app's
worker pool would: each thread sends a request, waits for its answer, and
sends the next. Used by tests/budget_pacing.rs and benches/dialects.sh.

usage: quota_clients.py --url URL --clients N --seconds S
                        [--proxy http://host:port] [--credential HEADER:VALUE ...]

Credentials are given to the clients in turn (client i uses credential
i mod len). The proxy, when given, is used for plain http:// URLs only.

Prints one JSON object: {"statuses": {"200": n, "429": m, ...},
"errors": n, "sent": n}. A client that cannot connect counts an error and
stops; the script itself exits 0 unless its arguments are wrong.
"""
import argparse
import json
import threading
import time
import urllib.error
import urllib.request


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--clients", type=int, required=True)
    ap.add_argument("--seconds", type=float, required=True)
    ap.add_argument("--proxy")
    ap.add_argument("--credential", action="append", default=[])
    ap.add_argument("--timeout", type=float, default=120.0)
    args = ap.parse_args()

    handlers = [urllib.request.ProxyHandler({"http": args.proxy} if args.proxy else {})]
    opener = urllib.request.build_opener(*handlers)
    deadline = time.monotonic() + args.seconds
    lock = threading.Lock()
    statuses = {}
    counts = {"errors": 0, "sent": 0}

    def client(i):
        headers = {}
        if args.credential:
            name, _, value = args.credential[i % len(args.credential)].partition(":")
            headers[name] = value
        while time.monotonic() < deadline:
            req = urllib.request.Request(args.url, headers=headers)
            try:
                with opener.open(req, timeout=args.timeout) as resp:
                    resp.read()
                    code = resp.status
            except urllib.error.HTTPError as e:
                e.read()
                code = e.code
            except Exception:
                with lock:
                    counts["errors"] += 1
                return
            with lock:
                counts["sent"] += 1
                statuses[str(code)] = statuses.get(str(code), 0) + 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(args.clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(json.dumps({"statuses": statuses, **counts}))


if __name__ == "__main__":
    main()
