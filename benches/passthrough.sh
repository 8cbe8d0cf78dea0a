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
#   SKIP_BUILD=1  use the existing release binary (built anyway when missing)
#   DIRECT_ONLY=1 only the direct runs (checks the origin and the clients)
#
# Installs nginx/wrk/openssl/python3 (and cmake for the build) when missing.
# The throttle is configured out of the way (huge rps/concurrency), so this
# measures the proxy's own cost. All traffic stays on 127.0.0.1.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
BENCH=passthrough
. benches/support/common.sh

DURATION=${DURATION:-10}
DURATION=${DURATION%s}
CONNECTIONS=${CONNECTIONS:-32}
WRK_THREADS=${WRK_THREADS:-2}
TLS_THREADS=${TLS_THREADS:-8}
TLS_PROCS=${TLS_PROCS:-2}
HOST=bench.test
DIRECT_ONLY=${DIRECT_ONLY:-0}

# ---- dependencies ------------------------------------------------------------
missing=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx)
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
command -v python3 >/dev/null 2>&1 || missing+=(python3)
command -v curl >/dev/null 2>&1 || missing+=(curl)
if [ "$DIRECT_ONLY" != 1 ] && [ "${SKIP_BUILD:-0}" != 1 ]; then
    command -v cmake >/dev/null 2>&1 || missing+=(cmake)
fi
install_missing "${missing[@]}"
[ "$DIRECT_ONLY" = 1 ] || release_binary

# ---- scratch space, origin, ezthrottle -------------------------------------------------
scratch_dir ezthrottle-bench
read -r HTTP_PORT HTTPS_PORT PROXY_PORT CONTROL_PORT < <(free_ports 4)

log "making a throwaway CA and a certificate for $HOST"
origin_cert "$TMP" "$HOST"

BODY=$NGINX_BODY
write_nginx_conf "$TMP" "$HTTP_PORT" "    server {
        listen 127.0.0.1:$HTTPS_PORT ssl;
        ssl_certificate $TMP/origin.pem;
        ssl_certificate_key $TMP/origin.key;
        ssl_protocols TLSv1.2 TLSv1.3;
        location / { return 200 \"$NGINX_BODY\\n\"; }
    }"
start_nginx "$TMP" "$HTTP_PORT"

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

$OPEN_LIMITS
TOML
if [ "$DIRECT_ONLY" != 1 ]; then
    log "starting ezthrottle (proxy 127.0.0.1:$PROXY_PORT, control 127.0.0.1:$CONTROL_PORT)"
    start_ezthrottle ezthrottle "$TMP/ezthrottle.toml"
fi

# ---- sanity: every path returns the body ------------------------------------------------
check_body "direct http" "$BODY" --noproxy '*' "http://127.0.0.1:$HTTP_PORT/"
check_body "direct https" "$BODY" --noproxy '*' --cacert "$TMP/origin-ca.pem" --resolve "$HOST:$HTTPS_PORT:127.0.0.1" "https://$HOST:$HTTPS_PORT/"
if [ "$DIRECT_ONLY" != 1 ]; then
    check_body "proxied http" "$BODY" -x "http://127.0.0.1:$PROXY_PORT" "http://$HOST:$HTTP_PORT/"
    check_body "proxied https" "$BODY" -x "http://127.0.0.1:$PROXY_PORT" --cacert "$TMP/data/ca/ca.pem" "https://$HOST:$HTTPS_PORT/"
fi

# ---- load --------------------------------------------------------------------------------
# wrk's done() hook prints one JSON line: req/s and percentiles in ms.
wrk_script "$TMP/report.lua"
wrk_script "$TMP/proxy.lua" "$HOST" "$HTTP_PORT" /

WRK=(wrk --latency -t"$WRK_THREADS" -c"$CONNECTIONS" -d"${DURATION}s" --timeout 10s)
BOUND=$((DURATION + 30))

# Run a load generator in the background and wait for it, so that a signal
# reaches the cleanup trap at once instead of after the run.
load() {  # outfile, command...
    local out=$1; shift
    "$@" > "$out" 2> "$out.err" &
    PIDS+=("$!")
    local rc=0
    wait "$!" || rc=$?
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
