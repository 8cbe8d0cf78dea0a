#!/usr/bin/env bash
# HTTP/2 through interception (issue 14): what multiplexing costs and buys.
#
#   benches/h2.sh                     (release build first; SKIP_BUILD=1 reuses it)
#   DURATION=5 WORKERS=16 benches/h2.sh
#
# Runs, all on 127.0.0.1, against a local nginx origin (TLS, h2 and
# HTTP/1.1, a fixed small body) and a grpcio server (tests/py/grpc_pair.py):
#   1. h2:     WORKERS streams multiplexed on ONE intercepted connection
#              (Go net/http through CONNECT, benches/h2load), h2 upstream
#   2. http1:  WORKERS HTTP/1.1 connections through CONNECT, HTTP/1.1 upstream
#   3. gRPC unary calls, WORKERS in flight on one channel, direct to the
#      server and through ezthrottle (benches/grpc_load.py)
# and prints req/s, p50/p99 and the proxy's CPU time per answered request
# (utime+stime of the ezthrottle process from /proc, over the run). Only
# 2xx answers / OK calls count. The throttle is configured out of the way,
# so this measures the proxy. The load generator shares the machine's
# cores with the proxy: compare rows, not machines.
#
# Knobs: DURATION (s, default 10), WORKERS (default 32), EZTHROTTLE_LOG
# (default warn), SKIP_BUILD=1 (the binary is built anyway when missing),
# KEEP_ON_FAIL=1.
# Needs: nginx, openssl, curl, go, python3 with grpcio (scripts/test makes
# .venv with it; EZT_PYTHON overrides). Installs nginx/openssl/golang-go
# with apt-get when missing.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
BENCH=h2
. benches/support/common.sh
DURATION=${DURATION:-10}
WORKERS=${WORKERS:-32}
HOST=bench.test
PY=${EZT_PYTHON:-$ROOT/.venv/bin/python}

missing=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
command -v curl >/dev/null 2>&1 || missing+=(curl)
command -v go >/dev/null 2>&1 || missing+=(golang-go)
install_missing "${missing[@]}"
"$PY" -c 'import grpc' 2>/dev/null || die "$PY has no grpcio (run scripts/test once, or set EZT_PYTHON)"
release_binary

scratch_dir ezthrottle-h2
read -r HTTP_PORT HTTPS_PORT PROXY_PORT CONTROL_PORT < <(free_ports 4)

log "throwaway CA and a certificate for $HOST"
origin_cert "$TMP" "$HOST"

write_nginx_conf "$TMP" "$HTTP_PORT" "    server {
        listen 127.0.0.1:$HTTPS_PORT ssl http2;
        ssl_certificate $TMP/origin.pem;
        ssl_certificate_key $TMP/origin.key;
        ssl_protocols TLSv1.2 TLSv1.3;
        http2_max_concurrent_streams 1000;
        keepalive_requests 1000000;
        location / { return 200 \"$NGINX_BODY\\n\"; }
    }"
start_nginx "$TMP" "$HTTP_PORT"

log "grpcio server"
# It serves until its stdin closes: a FIFO whose only writer is this shell.
mkfifo "$TMP/grpc.in"
exec 9<>"$TMP/grpc.in"
"$PY" "$ROOT/tests/py/grpc_pair.py" serve "$TMP/origin.pem" "$TMP/origin.key" \
    < "$TMP/grpc.in" > "$TMP/grpc.json" 2>"$TMP/grpc.err" &
PIDS+=($!)
for _ in $(seq 300); do [ -s "$TMP/grpc.json" ] && break; sleep 0.1; done
GRPC_PORT=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["tls"])' "$TMP/grpc.json") \
    || die "grpc server did not start: $(cat "$TMP/grpc.err")"

cat > "$TMP/ezthrottle.toml" <<TOML
data_dir = "$TMP/data"

[proxy]
listen = "127.0.0.1:$PROXY_PORT"
connect_ports = [$HTTPS_PORT, $GRPC_PORT]

[control]
listen = "127.0.0.1:$CONTROL_PORT"

[tls]
upstream_ca_file = "$TMP/origin-ca.pem"

[resolve]
"$HOST" = "127.0.0.1"

[egress]
allow = ["127.0.0.0/8"]
allow_ports = ["1024-65535"]

$OPEN_LIMITS
TOML
log "ezthrottle on 127.0.0.1:$PROXY_PORT"
start_ezthrottle ezthrottle "$TMP/ezthrottle.toml"

got=$(curl -sS --max-time 10 --http2 -x "http://127.0.0.1:$PROXY_PORT" --cacert "$TMP/data/ca/ca.pem" \
    -w '%{http_version}' -o /dev/null "https://$HOST:$HTTPS_PORT/") || die "sanity request failed"
[ "$got" = 2 ] || die "curl through the proxy spoke HTTP/$got, not h2"

(cd "$ROOT/benches/h2load" && go build -o "$TMP/h2load" main.go) || die "go build failed"

BOUND=$((DURATION + 60))
ROWS=()
row() {  # name, json file, count key, rate key, cpu ticks used
    ROWS+=("$(python3 - "$@" "$CLK_TCK" <<'PY'
import json, sys
name, path, count_key, rate_key, ticks, hz = sys.argv[1:7]
r = json.load(open(path))
n = r[count_key]
cpu = (float(ticks) / float(hz) * 1e6 / n) if ticks != "-" and n else None
extra = " (%s, %s connection(s))" % (r.get("proto", ""), r.get("connections", "")) if "proto" in r else ""
print("| %s%s | %.0f | %.2f | %.2f | %s | %s |" % (
    name, extra, r[rate_key], r["p50_ms"], r["p99_ms"],
    "%.1f" % cpu if cpu is not None else "-", r.get("errors", 0) + r.get("non_2xx", 0)))
PY
)")
}
RUN=0
measure() {  # name, count key, rate key, proxied(1/0), command...
    local name=$1 ckey=$2 rkey=$3 proxied=$4; shift 4
    RUN=$((RUN + 1))
    local out="$TMP/run$RUN"
    log "$name: $*"
    local t0; t0=$(cpu_ticks "$EZT_PID")
    timeout "$BOUND" "$@" > "$out.json" 2> "$out.err" \
        || die "$name failed: $(tail -5 "$out.err")"
    local used="-"
    [ "$proxied" = 1 ] && used=$(( $(cpu_ticks "$EZT_PID") - t0 ))
    row "$name" "$out.json" "$ckey" "$rkey" "$used"
}

URL="https://$HOST:$HTTPS_PORT/"
measure "h2: $WORKERS streams, 1 connection" requests rps 1 \
    "$TMP/h2load" -url "$URL" -proxy "http://127.0.0.1:$PROXY_PORT" -ca "$TMP/data/ca/ca.pem" \
    -proto h2 -workers "$WORKERS" -duration "${DURATION}s"
measure "HTTP/1.1: $WORKERS connections" requests rps 1 \
    "$TMP/h2load" -url "$URL" -proxy "http://127.0.0.1:$PROXY_PORT" -ca "$TMP/data/ca/ca.pem" \
    -proto http1 -workers "$WORKERS" -duration "${DURATION}s"
measure "gRPC unary, direct" calls cps 0 \
    "$PY" "$ROOT/benches/grpc_load.py" --target "$HOST:$GRPC_PORT" --connect "127.0.0.1:$GRPC_PORT" \
    --cafile "$TMP/origin-ca.pem" --inflight "$WORKERS" --duration "$DURATION"
measure "gRPC unary, through ezthrottle" calls cps 1 \
    "$PY" "$ROOT/benches/grpc_load.py" --target "$HOST:$GRPC_PORT" --proxy "http://127.0.0.1:$PROXY_PORT" \
    --cafile "$TMP/data/ca/ca.pem" --inflight "$WORKERS" --duration "$DURATION"

echo
echo "intercepted HTTPS on $(nproc) cores, ${DURATION}s per run, $WORKERS concurrent ($(date -u +%Y-%m-%d))"
echo
echo "| run | req/s (calls/s) | p50 ms | p99 ms | proxy CPU µs per answer | failed |"
echo "|---|--:|--:|--:|--:|--:|"
printf '%s\n' "${ROWS[@]}"
