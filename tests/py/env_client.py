#!/usr/bin/env python3
"""Fetch one URL with a Python HTTP client, configured only by the environment.

usage: env_client.py --lib LIB URL

LIB is one of
  urllib          urllib.request.urlopen (proxies from getproxies(), CA from SSL_CERT_FILE)
  requests        requests.get (proxies from the environment, CA from REQUESTS_CA_BUNDLE)
  httpx           httpx.get (trust_env=True by default: proxies and SSL_CERT_FILE)
  aiohttp         aiohttp.ClientSession(trust_env=True) (proxies; CA from SSL_CERT_FILE)
  aiohttp-default aiohttp.ClientSession() as it is: trust_env=False reads no proxy variable

exactly as an unmodified application would use them. Prints one JSON object
{status, body}. Exit 0 when an HTTP response arrived (any status), 2 on a
transport/TLS error (JSON has "error"), 3 when the library cannot be imported.
"""
import argparse
import json
import sys


def need(name):
    try:
        return __import__(name)
    except ImportError as e:
        print(
            "python %r is not importable by %s (%s): run scripts/test, which "
            "installs it into .venv and sets EZT_PYTHON" % (name, sys.executable, e),
            file=sys.stderr,
        )
        sys.exit(3)


def with_urllib(url):
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=30) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def with_requests(url):
    requests = need("requests")
    resp = requests.get(url, timeout=30)
    return resp.status_code, resp.content


def with_httpx(url):
    httpx = need("httpx")
    resp = httpx.get(url, timeout=30)
    return resp.status_code, resp.content


def with_aiohttp(url, trust_env):
    aiohttp = need("aiohttp")
    import asyncio

    async def go():
        timeout = aiohttp.ClientTimeout(total=30)
        kwargs = {"trust_env": True} if trust_env else {}
        async with aiohttp.ClientSession(timeout=timeout, **kwargs) as session:
            async with session.get(url) as resp:
                return resp.status, await resp.read()

    return asyncio.run(go())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument(
        "--lib",
        choices=["urllib", "requests", "httpx", "aiohttp", "aiohttp-default"],
        required=True,
    )
    ap.add_argument("url")
    args = ap.parse_args()
    fns = {
        "urllib": with_urllib,
        "requests": with_requests,
        "httpx": with_httpx,
        "aiohttp": lambda u: with_aiohttp(u, True),
        "aiohttp-default": lambda u: with_aiohttp(u, False),
    }
    try:
        status, body = fns[args.lib](args.url)
    except SystemExit:
        raise
    except Exception as e:  # transport or TLS failure: report, do not crash
        print(json.dumps({"error": "%s: %s" % (type(e).__name__, e)}))
        sys.exit(2)
    print(json.dumps({"status": status, "body": body.decode("utf-8", "replace")}))


if __name__ == "__main__":
    main()
