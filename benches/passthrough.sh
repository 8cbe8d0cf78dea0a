#!/usr/bin/env bash
# Pass-through overhead of ezthrottle on loopback: throughput and latency
# percentiles, direct to a local nginx vs. through ezthrottle, for plain HTTP
# (wrk) and intercepted HTTPS (benches/tls_load.py through CONNECT).
#
#   benches/passthrough.sh
#   DURATION=5 CONNECTIONS=16 benches/passthrough.sh
#
# Knobs (environment):
#   DURATION      seconds per run (default 10; 4 runs)
#   CONNECTIONS   wrk connections (default 32)
#   WRK_THREADS   wrk threads (default 2)
#   TLS_THREADS   tls_load.py connections per process, one thread each (default 8)
#   TLS_PROCS     tls_load.py processes (default 2)
#   EZTHROTTLE_LOG  proxy log filter during the run (default warn)
#   SKIP_BUILD=1  use the existing release binary
#   DIRECT_ONLY=1 only the direct runs (checks the origin and the clients)
#
# Installs nginx/wrk/openssl/python3 (and cmake for the build) when missing.
# The throttle is configured out of the way (huge rps/concurrency), so this
# measures the proxy's own cost. All traffic stays on 127.0.0.1.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD

DURATION=${DURATION:-10}
DURATION=${DURATION%s}
CONNECTIONS=${CONNECTIONS:-32}
WRK_THREADS=${WRK_THREADS:-2}
TLS_THREADS=${TLS_THREADS:-8}
TLS_PROCS=${TLS_PROCS:-2}
HOST=bench.test
DIRECT_ONLY=${DIRECT_ONLY:-0}
[ "$DIRECT_ONLY" = 1 ] && SKIP_BUILD=1

log() { printf 'passthrough: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"
    elif command -v sudo >/dev/null 2>&1; then sudo "$@"
    else die "need root (or sudo) to run: $*"
    fi
}

# ---- dependencies ------------------------------------------------------------
missing=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx)
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
command -v python3 >/dev/null 2>&1 || missing+=(python3)
command -v curl >/dev/null 2>&1 || missing+=(curl)
if [ "${SKIP_BUILD:-0}" != 1 ]; then
    command -v cmake >/dev/null 2>&1 || missing+=(cmake)
fi
if [ "${#missing[@]}" -gt 0 ]; then
    log "installing: ${missing[*]}"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
    # Debian's package starts a system nginx on port 80; this bench runs its own.
    if [[ " ${missing[*]} " == *" nginx "* ]] && command -v systemctl >/dev/null 2>&1; then
        as_root systemctl disable --now nginx >/dev/null 2>&1 || true
    fi
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)

BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/ezthrottle"
if [ "${SKIP_BUILD:-0}" != 1 ]; then
    log "cargo build --release"
    cargo build --release --bin ezthrottle >&2
fi
[ "$DIRECT_ONLY" = 1 ] || [ -x "$BIN" ] || die "no binary at $BIN"

# ---- scratch space and cleanup -------------------------------------------------------
TMP=$(mktemp -d "${TMPDIR:-/tmp}/ezthrottle-bench.XXXXXX")
chmod 755 "$TMP"   # nginx workers may run as an unprivileged user
NGINX_PID=""
EZT_PID=""
LOAD_PID=""
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    [ -n "$LOAD_PID" ] && kill -TERM "$LOAD_PID" 2>/dev/null || true
    for pid in "$EZT_PID" "$NGINX_PID"; do
        [ -n "$pid" ] && kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "$LOAD_PID" "$EZT_PID" "$NGINX_PID"; do
        [ -z "$pid" ] && continue
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    if [ "$rc" -ne 0 ] && [ -n "${KEEP_ON_FAIL:-}" ]; then
        log "kept $TMP"
    else
        rm -rf "$TMP"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Four free loopback ports, held open together so they are distinct.
read -r HTTP_PORT HTTPS_PORT PROXY_PORT CONTROL_PORT < <(python3 - <<'PY'
import socket
socks = []
for _ in range(4):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
PY
)

# ---- throwaway CA and server certificate ---------------------------------------------
log "making a throwaway CA and a certificate for $HOST"
(
    cd "$TMP"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
        -keyout origin-ca.key -out origin-ca.pem -days 2 -subj "/CN=ezthrottle bench CA" \
        -addext "basicConstraints=critical,CA:TRUE" \
        -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
    openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
        -keyout origin.key -out origin.csr -subj "/CN=$HOST" 2>/dev/null
    printf '%s\n' "subjectAltName=DNS:$HOST" "basicConstraints=critical,CA:FALSE" \
        "keyUsage=critical,digitalSignature" "extendedKeyUsage=serverAuth" > origin.ext
    openssl x509 -req -in origin.csr -CA origin-ca.pem -CAkey origin-ca.key -CAcreateserial \
        -days 2 -extfile origin.ext -out origin.pem 2>/dev/null
)

# ---- origin: nginx -------------------------------------------------------------------
. "$(dirname "${BASH_SOURCE[0]}")/support/nginx.sh"
BODY=$NGINX_BODY
write_nginx_conf "$TMP" "$HTTP_PORT" "    server {
        listen 127.0.0.1:$HTTPS_PORT ssl;
        ssl_certificate $TMP/origin.pem;
        ssl_certificate_key $TMP/origin.key;
        ssl_protocols TLSv1.2 TLSv1.3;
        location / { return 200 \"$NGINX_BODY\\n\"; }
    }"
"$NGINX" -p "$TMP/nginx" -c "$TMP/nginx.conf" -g 'daemon off;' 2>"$TMP/nginx/stderr.log" &
NGINX_PID=$!

# ---- ezthrottle ------------------------------------------------------------------------
cat > "$TMP/ezthrottle.toml" <<TOML
data_dir = "$TMP/data"

[proxy]
listen = "127.0.0.1:$PROXY_PORT"
connect_ports = [$HTTPS_PORT]

[control]
listen = "127.0.0.1:$CONTROL_PORT"

[tls]
upstream_ca_file = "$TMP/origin-ca.pem"

[resolve]
"$HOST" = "127.0.0.1"

[limits]
rps = 1000000.0
max_concurrent = 10000
rps_ceiling = 10000000.0
concurrency_ceiling = 100000
queue_capacity = 100000
TOML
show_logs() {
    log "ezthrottle stdout:"; tail -n 20 "$TMP/ezthrottle.out" >&2 || true
    log "ezthrottle stderr:"; tail -n 40 "$TMP/ezthrottle.err" >&2 || true
    log "nginx:"; tail -n 20 "$TMP/nginx/stderr.log" "$TMP/nginx/error.log" >&2 2>/dev/null || true
}

if [ "$DIRECT_ONLY" != 1 ]; then
log "starting ezthrottle (proxy 127.0.0.1:$PROXY_PORT, control 127.0.0.1:$CONTROL_PORT)"
EZTHROTTLE_LOG=${EZTHROTTLE_LOG:-warn} "$BIN" run --config "$TMP/ezthrottle.toml" \
    >"$TMP/ezthrottle.out" 2>"$TMP/ezthrottle.err" &
EZT_PID=$!

# Bounded wait (60 s) for the ready line; stop early if the process died.
ready=""
for _ in $(seq 600); do
    if grep -q '^ezthrottle ready proxy=' "$TMP/ezthrottle.out" 2>/dev/null; then ready=1; break; fi
    kill -0 "$EZT_PID" 2>/dev/null || { show_logs; die "ezthrottle exited before it was ready"; }
    sleep 0.1
done
[ -n "$ready" ] || { show_logs; die "ezthrottle not ready within 60 s"; }
fi

# ---- sanity: every path returns the body ------------------------------------------------
check() {
    local what=$1; shift
    local got
    got=$(curl -sS --max-time 10 "$@") || { show_logs; die "$what: curl failed"; }
    [ "$got" = "$BODY" ] || { show_logs; die "$what: unexpected body: ${got:0:200}"; }
}
# nginx has no ready line: wait (bounded) for its ports.
for _ in $(seq 100); do
    curl -s -o /dev/null --noproxy '*' "http://127.0.0.1:$HTTP_PORT/" && break
    kill -0 "$NGINX_PID" 2>/dev/null || { show_logs; die "nginx did not start"; }
    sleep 0.1
done
check "direct http" --noproxy '*' "http://127.0.0.1:$HTTP_PORT/"
check "direct https" --noproxy '*' --cacert "$TMP/origin-ca.pem" --resolve "$HOST:$HTTPS_PORT:127.0.0.1" "https://$HOST:$HTTPS_PORT/"
if [ "$DIRECT_ONLY" != 1 ]; then
check "proxied http" -x "http://127.0.0.1:$PROXY_PORT" "http://$HOST:$HTTP_PORT/"
check "proxied https" -x "http://127.0.0.1:$PROXY_PORT" --cacert "$TMP/data/ca/ca.pem" "https://$HOST:$HTTPS_PORT/"
fi

# ---- load --------------------------------------------------------------------------------
# wrk's done() hook prints one JSON line: req/s and percentiles in ms.
cat > "$TMP/report.lua" <<'LUA'
done = function(summary, latency, requests)
    local e = summary.errors
    io.write(string.format(
        '\nJSON {"requests":%d,"errors":%d,"non_2xx":%d,"seconds":%.3f,"rps":%.1f,"p50_ms":%.3f,"p90_ms":%.3f,"p99_ms":%.3f}\n',
        summary.requests, e.connect + e.read + e.write + e.timeout, e.status,
        summary.duration / 1e6, summary.requests / (summary.duration / 1e6),
        latency:percentile(50) / 1000, latency:percentile(90) / 1000, latency:percentile(99) / 1000))
end
LUA
{
    printf 'wrk.path = "http://%s:%s/"\n' "$HOST" "$HTTP_PORT"
    printf 'wrk.headers["Host"] = "%s:%s"\n' "$HOST" "$HTTP_PORT"
    cat "$TMP/report.lua"
} > "$TMP/proxy.lua"

WRK=(wrk --latency -t"$WRK_THREADS" -c"$CONNECTIONS" -d"${DURATION}s" --timeout 10s)
BOUND=$((DURATION + 30))

# Run a load generator in the background and wait for it, so that a signal
# reaches the cleanup trap at once instead of after the run.
load() {  # outfile, command...
    local out=$1; shift
    "$@" > "$out" 2> "$out.err" &
    LOAD_PID=$!
    local rc=0
    wait "$LOAD_PID" || rc=$?
    LOAD_PID=""
    return "$rc"
}

run_wrk() {  # name, script, url
    log "$1: ${WRK[*]} $3"
    load "$TMP/$1.txt" timeout "$BOUND" "${WRK[@]}" -s "$2" "$3" \
        || { cat "$TMP/$1.txt" "$TMP/$1.txt.err" >&2; die "$1: wrk failed"; }
    grep '^JSON ' "$TMP/$1.txt" | sed 's/^JSON //' > "$TMP/$1.json"
}
run_tls() {  # name, args...
    local name=$1; shift
    log "$name: tls_load.py --procs $TLS_PROCS --threads $TLS_THREADS --duration $DURATION $*"
    load "$TMP/$name.json" timeout "$BOUND" python3 "$ROOT/benches/tls_load.py" --host "$HOST" --port "$HTTPS_PORT" \
        --procs "$TLS_PROCS" --threads "$TLS_THREADS" --duration "$DURATION" "$@" \
        || { cat "$TMP/$name.json" "$TMP/$name.json.err" >&2; show_logs; die "$name: tls_load.py failed"; }
}

run_wrk http-direct "$TMP/report.lua" "http://127.0.0.1:$HTTP_PORT/"
run_tls https-direct --connect-ip 127.0.0.1 --cafile "$TMP/origin-ca.pem"
if [ "$DIRECT_ONLY" != 1 ]; then
run_wrk http-proxied "$TMP/proxy.lua" "http://127.0.0.1:$PROXY_PORT/"
run_tls https-proxied --proxy "127.0.0.1:$PROXY_PORT" --cafile "$TMP/data/ca/ca.pem"
fi

# ---- report ---------------------------------------------------------------------------------
python3 - "$TMP" "$CONNECTIONS" "$((TLS_THREADS * TLS_PROCS))" "$DURATION" <<'PY'
import json, os, sys
tmp, conns, tls_conns, duration = sys.argv[1:5]
def load(name):
    path = os.path.join(tmp, name + ".json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.loads(f.read().strip().splitlines()[-1])
rows = [
    ("plain HTTP, direct (wrk)", "http-direct", None),
    ("plain HTTP, through ezthrottle (wrk)", "http-proxied", "http-direct"),
    ("HTTPS, direct (tls_load.py)", "https-direct", None),
    ("HTTPS intercepted, through ezthrottle (tls_load.py)", "https-proxied", "https-direct"),
]
print()
print(f"wrk: {conns} connections; tls_load.py: {tls_conns} keep-alive connections; {duration} s each")
print()
print("| scenario | req/s | p50 ms | p99 ms | proxied / direct req/s | errors |")
print("|---|---|---|---|---|---|")
bad = False
for label, name, base in rows:
    r = load(name)
    if r is None:
        continue
    ratio = ""
    if base:
        b = load(base)
        ratio = f"{r['rps'] / b['rps']:.2f}" if b and b["rps"] else "n/a"
    errs = r["errors"] + r["non_2xx"]
    bad |= errs > 0
    print(f"| {label} | {r['rps']:.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {ratio} | {errs} |")
if bad:
    print("\nWARNING: some requests failed (errors = transport errors + non-2xx)")
PY
