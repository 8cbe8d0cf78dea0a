"""N requests through a proxy on a few keep-alive connections, one in flight
on each; exits non-zero on anything but a 200 with its whole body, or a
connection that closes. Shared by benches/instructions.sh and
scripts/build-pgo.

    keepalive_client.py PROXY_PORT ORIGIN_PORT N MODE HOST CA START CONNS [HEADER]

MODE: plain (absolute-form through the proxy), connect (CONNECT to
HOST:ORIGIN_PORT, then TLS trusting CA, origin-form inside), tls (TLS
straight to the proxy, trusting CA). HOST and CA are ignored (pass -) for
plain. START: now, or wait (print "connected" once every connection is
open, then start on a line from standard input). HEADER: one more request
header line; "{i}" in it becomes the request's number, so
"Idempotency-Key: k{i}" sends a fresh key on every request.
"""
import socket
import ssl
import sys

proxy, origin, n, mode = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
host, ca = (sys.argv[5], sys.argv[6]) if mode != "plain" else ("127.0.0.1", None)
start, nconns = sys.argv[7], int(sys.argv[8])
header = sys.argv[9] if len(sys.argv) > 9 else ""
target = f"http://127.0.0.1:{origin}/" if mode == "plain" else "/"
head_lines = (f"GET {target} HTTP/1.1\r\nHost: {host}:{origin}\r\n"
              "User-Agent: instructions\r\nAccept: */*\r\n")


def request(i):
    extra = header.replace("{i}", str(i)) + "\r\n" if header else ""
    return (head_lines + extra + "\r\n").encode()


fixed = None if "{i}" in header else request(0)


def open_conn():
    s = socket.create_connection(("127.0.0.1", proxy), timeout=60)
    if mode == "plain":
        return s
    if mode == "connect":
        s.sendall(f"CONNECT {host}:{origin} HTTP/1.1\r\nHost: {host}:{origin}\r\n\r\n".encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = s.recv(1)
            if not chunk:
                sys.exit("the proxy closed the CONNECT")
            head += chunk
        if not head.startswith(b"HTTP/1.1 200"):
            sys.exit(f"CONNECT refused: {head[:80]!r}")
    ctx = ssl.create_default_context(cafile=ca)
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx.wrap_socket(s, server_hostname=host)


def recv(s):
    chunk = s.recv(65536)
    if not chunk:
        sys.exit("the proxy closed a connection")
    return chunk


conns = [open_conn() for _ in range(nconns)]
if start == "wait":
    print("connected", flush=True)
    sys.stdin.readline()
i = 0
for _ in range(n // len(conns)):
    for s in conns:
        s.sendall(fixed or request(i))
        i += 1
    for s in conns:
        buf = b""
        while b"\r\n\r\n" not in buf:
            buf += recv(s)
        head, _, body = buf.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            sys.exit(f"not a 200: {head[:80]!r}")
        length = next(int(l.split(b":")[1]) for l in head.split(b"\r\n")
                      if l.lower().startswith(b"content-length:"))
        while len(body) < length:
            body += recv(s)
for s in conns:
    s.close()
