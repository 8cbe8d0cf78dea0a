"""A real gRPC server and client (grpcio from PyPI) for tests/http2.rs.

No .proto: methods are registered with generic handlers and carry raw
bytes, which is exactly what goes over the wire for any protobuf message.

    grpc_pair.py serve CERT KEY       TLS and plaintext (h2c) servers on
                                      127.0.0.1; prints one JSON line
                                      {"tls": port, "plain": port}, then
                                      serves until stdin closes.
    grpc_pair.py call TARGET ROOTS|- JSON_PLAN
                                      runs the plan's calls on one channel
                                      (through the proxy named by the
                                      environment: https_proxy / http_proxy),
                                      prints one JSON line per call.

Methods (service t.Test):
    Unary     echoes the request, prefixed "ok:"
    Stream    server-streaming: N messages "msg-i" (N = request as int),
              then trailing metadata x-trailer: done
    Flaky     RESOURCE_EXHAUSTED the first time a key (the request) is
              seen, then ok
    Down      always UNAVAILABLE
    Missing   NOT_FOUND with a message (not something to retry)
    Count     the calls seen so far per method, as JSON
"""

import collections
import json
import sys
import threading
from concurrent import futures

import grpc

SERVICE = "t.Test"


def identity(b):
    return b


class Handlers:
    def __init__(self):
        self.lock = threading.Lock()
        self.calls = collections.Counter()
        self.seen = set()

    def count(self, name):
        with self.lock:
            self.calls[name] += 1

    def unary(self, req, ctx):
        self.count("Unary")
        return b"ok:" + req

    def stream(self, req, ctx):
        self.count("Stream")
        n = int(req.decode() or "0")
        for i in range(n):
            yield ("msg-%d" % i).encode()
        ctx.set_trailing_metadata((("x-trailer", "done"),))

    def flaky(self, req, ctx):
        self.count("Flaky")
        with self.lock:
            first = req not in self.seen
            self.seen.add(req)
        if first:
            ctx.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "quota exceeded, try later")
        return b"ok:" + req

    def down(self, req, ctx):
        self.count("Down")
        ctx.abort(grpc.StatusCode.UNAVAILABLE, "backend down")

    def missing(self, req, ctx):
        self.count("Missing")
        ctx.abort(grpc.StatusCode.NOT_FOUND, "no such thing: " + req.decode())

    def counts(self, req, ctx):
        with self.lock:
            return json.dumps(dict(self.calls)).encode()


def serve(cert, key):
    h = Handlers()
    unary = lambda f: grpc.unary_unary_rpc_method_handler(
        f, request_deserializer=identity, response_serializer=identity
    )
    methods = {
        "Unary": unary(h.unary),
        "Stream": grpc.unary_stream_rpc_method_handler(
            h.stream, request_deserializer=identity, response_serializer=identity
        ),
        "Flaky": unary(h.flaky),
        "Down": unary(h.down),
        "Missing": unary(h.missing),
        "Count": unary(h.counts),
    }
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(SERVICE, methods),)
    )
    with open(cert, "rb") as c, open(key, "rb") as k:
        creds = grpc.ssl_server_credentials([(k.read(), c.read())])
    tls = server.add_secure_port("127.0.0.1:0", creds)
    plain = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(json.dumps({"tls": tls, "plain": plain}), flush=True)
    sys.stdin.read()
    server.stop(0)


def call(target, roots, plan):
    options = [("grpc.enable_retries", 0)]
    if roots == "-":
        channel = grpc.insecure_channel(target, options=options)
    else:
        with open(roots, "rb") as f:
            creds = grpc.ssl_channel_credentials(root_certificates=f.read())
        channel = grpc.secure_channel(target, creds, options=options)
    for step in plan:
        method = "/%s/%s" % (SERVICE, step["method"])
        arg = step.get("arg", "").encode()
        out = {"method": step["method"]}
        try:
            if step["method"] == "Stream":
                rpc = channel.unary_stream(
                    method, request_serializer=identity, response_deserializer=identity
                )
                call = rpc(arg, timeout=30)
                out["messages"] = [m.decode() for m in call]
                out["trailers"] = {k: v for k, v in call.trailing_metadata()}
                out["code"] = call.code().name
            else:
                rpc = channel.unary_unary(
                    method, request_serializer=identity, response_deserializer=identity
                )
                resp, call = rpc.with_call(arg, timeout=30)
                out["reply"] = resp.decode()
                out["code"] = call.code().name
        except grpc.RpcError as e:
            out["code"] = e.code().name
            out["details"] = e.details()
        print(json.dumps(out), flush=True)
    channel.close()


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(sys.argv[2], sys.argv[3])
    else:
        call(sys.argv[2], sys.argv[3], json.loads(sys.argv[4]))
