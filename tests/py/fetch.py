#!/usr/bin/env python3
"""Fetch one URL through the proxy configured in the environment.

usage: fetch.py --lib urllib|requests [--method M] [--data-file F] URL

Proxies and CA trust come only from the standard environment variables
(HTTP_PROXY / HTTPS_PROXY, SSL_CERT_FILE for urllib, REQUESTS_CA_BUNDLE for
requests), exactly as an unmodified application would use them.

Prints one JSON object: status, headers ([[name, value], ...]), body_len,
body_sha256, body_text (UTF-8, lossy, truncated). Exit 0 when an HTTP response
arrived (any status), 2 on a transport/TLS error (JSON has "error"), 3 when
the requested library cannot be imported.
"""
import argparse
import hashlib
import json
import sys


def result(status, headers, body):
    return {
        "status": status,
        "headers": [[k, v] for k, v in headers],
        "body_len": len(body),
        "body_sha256": hashlib.sha256(body).hexdigest(),
        "body_text": body[:100000].decode("utf-8", "replace"),
    }


def with_urllib(method, url, data):
    import urllib.error
    import urllib.request

    req = urllib.request.Request(url, data=data, method=method)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return result(resp.status, resp.getheaders(), resp.read())
    except urllib.error.HTTPError as e:
        return result(e.code, e.headers.items(), e.read())


def with_requests(method, url, data):
    try:
        import requests
    except ImportError as e:
        print(
            "python 'requests' is not importable by %s (%s): run scripts/test, "
            "which sets EZT_PYTHON to a venv that has it" % (sys.executable, e),
            file=sys.stderr,
        )
        sys.exit(3)
    resp = requests.request(method, url, data=data, timeout=30)
    return result(resp.status_code, resp.raw.headers.items(), resp.content)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lib", choices=["urllib", "requests"], required=True)
    ap.add_argument("--method", default="GET")
    ap.add_argument("--data-file")
    ap.add_argument("url")
    args = ap.parse_args()
    data = None
    if args.data_file:
        with open(args.data_file, "rb") as f:
            data = f.read()
    fn = with_urllib if args.lib == "urllib" else with_requests
    try:
        out = fn(args.method, args.url, data)
    except SystemExit:
        raise
    except Exception as e:  # transport or TLS failure: report, do not crash
        print(json.dumps({"error": "%s: %s" % (type(e).__name__, e)}))
        sys.exit(2)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
