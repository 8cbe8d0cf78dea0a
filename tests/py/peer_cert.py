#!/usr/bin/env python3
"""Open a CONNECT tunnel through a proxy, handshake TLS trusting only CAFILE,
and report the certificate the client was shown.

usage: peer_cert.py PROXY_HOST:PORT TARGET_HOST:PORT CAFILE

Prints JSON: {"ok": true, "peer_issuer": {...}, "peer_subject": {...},
"san": [...], "ca_subject": {...}} or {"ok": false, "error": "...",
"connect_status": N}. Always exits 0 unless the arguments are wrong.
"""
import json
import socket
import ssl
import sys


def flat(name):
    out = {}
    for rdn in name or ():
        for k, v in rdn:
            out[k] = v
    return out


def main():
    proxy, target, cafile = sys.argv[1:4]
    phost, pport = proxy.rsplit(":", 1)
    thost, _tport = target.rsplit(":", 1)
    out = {"ok": False}
    try:
        out["ca_subject"] = flat(ssl._ssl._test_decode_cert(cafile).get("subject"))
    except Exception as e:  # informational only
        out["ca_subject_error"] = str(e)
    sock = socket.create_connection((phost, int(pport)), timeout=30)
    sock.settimeout(30)
    sock.sendall(("CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (target, target)).encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(1)
        if not chunk:
            break
        head += chunk
    status_line = head.split(b"\r\n", 1)[0].decode("latin-1")
    try:
        out["connect_status"] = int(status_line.split(" ")[1])
    except (IndexError, ValueError):
        out["connect_status"] = 0
    if out["connect_status"] != 200:
        out["error"] = "CONNECT answered %r" % status_line
        print(json.dumps(out))
        return
    ctx = ssl.create_default_context(cafile=cafile)
    try:
        with ctx.wrap_socket(sock, server_hostname=thost) as tls:
            cert = tls.getpeercert()
            out["ok"] = True
            out["peer_issuer"] = flat(cert.get("issuer"))
            out["peer_subject"] = flat(cert.get("subject"))
            out["san"] = [v for _k, v in cert.get("subjectAltName", ())]
    except (ssl.SSLError, OSError) as e:
        out["error"] = "%s: %s" % (type(e).__name__, e)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
