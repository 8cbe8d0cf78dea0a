#!/usr/bin/env bash
# User-space instructions per proxied plain-HTTP request, under callgrind
# (issue 17): ezthrottle at its defaults next to examples/pingora_floor.rs
# (the same pingora with empty hooks). Timings on this VM move ±10% run to
# run; instruction counts repeat to a fraction of a percent, so a change of
# a few hundred instructions on the request path shows here first.
#
#   benches/instructions.sh
#   N=2000 ONLY=ezthrottle benches/instructions.sh
#
# What it does, all on 127.0.0.1: an nginx origin (1 KiB body), each proxy
# in turn under `valgrind --tool=callgrind`, a warm-up of 200 requests, the
# counters zeroed, then N requests (absolute-form GET http://127.0.0.1:<origin>/,
# 4 keep-alive connections, one request in flight on each), the counters
# dumped. Prints instructions per request (every thread of the proxy, the
# log writer and timers included) and the ten functions with the most
# inclusive instructions per request in ezthrottle's own code.
#
# Knobs: N (3000), ONLY (ezthrottle,pingora), BIN, FLOOR, SKIP_BUILD=1,
# KEEP_ON_FAIL=1. Installs valgrind and nginx when missing.
#
# Callgrind counts every byte a `rep movsb` copies as an instruction, so
# big memcpys (pingora's boxed futures) weigh more here than in time.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
BENCH=instructions
. benches/support/common.sh

N=${N:-3000}
ONLY=${ONLY:-ezthrottle,pingora}
missing=()
command -v valgrind >/dev/null 2>&1 || missing+=(valgrind)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx)
install_missing "${missing[@]}"

if [ -z "${BIN:-}" ]; then release_binary; fi
FLOOR=${FLOOR:-$(dirname "$BIN")/examples/pingora_floor}
if [[ ",$ONLY," == *,pingora,* ]] && { [ "${SKIP_BUILD:-0}" != 1 ] || [ ! -x "$FLOOR" ]; }; then
    log "cargo build --release --example pingora_floor"
    cargo build --release --example pingora_floor >&2
fi

scratch_dir ezt-instructions
read -r ORIGIN PROXY CONTROL < <(free_ports 3)
BODY=$(python3 -c 'print("x" * 1023)')
nginx_conf "$TMP/origin" "    default_type text/plain;
    server {
        listen 127.0.0.1:$ORIGIN;
        location / { return 200 \"$BODY\"; }
    }"
start_nginx "$TMP/origin" "$ORIGIN"

# The client: N requests on 4 keep-alive connections; exits non-zero on
# anything but a 200 with its whole body, or a connection that closes.
cat > "$TMP/client.py" <<'PY'
import socket, sys
proxy, origin, n = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
req = (f"GET http://127.0.0.1:{origin}/ HTTP/1.1\r\nHost: 127.0.0.1:{origin}\r\n"
       "User-Agent: instructions\r\nAccept: */*\r\n\r\n").encode()
conns = [socket.create_connection(("127.0.0.1", proxy), timeout=60) for _ in range(4)]
def recv(s):
    chunk = s.recv(65536)
    if not chunk:
        sys.exit("the proxy closed a connection")
    return chunk
for _ in range(n // len(conns)):
    for s in conns:
        s.sendall(req)
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
PY

cat > "$TMP/ezthrottle.toml" <<TOML
data_dir = "$TMP/data"

[proxy]
listen = "127.0.0.1:$PROXY"

[control]
listen = "127.0.0.1:$CONTROL"

# The throttle far out of reach: this measures the proxy.
[limits]
rps = 1000000.0
rps_ceiling = 10000000.0
max_concurrent = 10000
concurrency_ceiling = 100000
queue_capacity = 100000
TOML

RESULTS=()
measure() {  # name, command...
    local name=$1 pid out="$TMP/$1.cg" _
    shift
    log "$name under callgrind"
    valgrind --tool=callgrind --callgrind-out-file="$out" --dump-instr=no "$@" \
        > "$TMP/$name.out" 2> "$TMP/$name.err" &
    pid=$!
    PIDS+=("$pid")
    for _ in $(seq 600); do
        python3 -c 'import socket, sys; socket.create_connection(("127.0.0.1", int(sys.argv[1])), 0.5).close()' \
            "$PROXY" 2>/dev/null && break
        kill -0 "$pid" 2>/dev/null || { show_logs "$name"; die "$name exited"; }
        sleep 0.1
    done
    python3 "$TMP/client.py" "$PROXY" "$ORIGIN" 200 || { show_logs "$name"; die "$name: warm-up failed"; }
    callgrind_control -z "$pid" >/dev/null
    python3 "$TMP/client.py" "$PROXY" "$ORIGIN" "$N" || { show_logs "$name"; die "$name: run failed"; }
    callgrind_control -d "$pid" >/dev/null
    stop_pid "$pid"
    local dump
    dump=$(ls "$out".* 2>/dev/null | head -n 1)
    [ -n "$dump" ] || die "$name: no callgrind dump"
    local total
    total=$(callgrind_annotate "$dump" 2>/dev/null | awk '/PROGRAM TOTALS/ { gsub(",", "", $1); print $1; exit }')
    RESULTS+=("$name $total")
    if [ "$name" = ezthrottle ]; then
        callgrind_annotate --inclusive=yes --threshold=100 "$dump" 2>/dev/null \
            | awk -v n="$N" '/\?\?\?:(<)?ezthrottle::/ { v = $1; gsub(",", "", v); sub(/^.*\?\?\?:/, ""); sub(/ \[.*$/, "");
                    printf "  %9.0f  %s\n", v / n, substr($0, 1, 110) }' \
            | grep -v 'FrontDoor as pingora_core::apps::ServerApp>::process_new' | head -n 10 > "$TMP/top.txt"
    fi
}

if [[ ",$ONLY," == *,ezthrottle,* ]]; then
    measure ezthrottle "$BIN" run --config "$TMP/ezthrottle.toml"
fi
if [[ ",$ONLY," == *,pingora,* ]]; then
    measure pingora "$FLOOR" --plain "127.0.0.1:$PROXY"
fi

echo
echo "| proxy | instructions per request |"
echo "|---|--:|"
for r in "${RESULTS[@]}"; do
    read -r name total <<<"$r"
    printf '| %s | %s |\n' "$name" "$(python3 -c "print(f'{$total / $N:,.0f}')")"
done
if [ -s "$TMP/top.txt" ]; then
    echo
    echo "ezthrottle's own functions, inclusive instructions per request:"
    cat "$TMP/top.txt"
fi
echo
echo "$N requests on 4 keep-alive connections after 200 of warm-up; $(git rev-parse --short HEAD 2>/dev/null || echo '?'); $(date -u +%Y-%m-%dT%H:%MZ)."
