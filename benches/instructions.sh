#!/usr/bin/env bash
# User-space instructions per proxied plain-HTTP request, under callgrind
# (issue 17): ezthrottle at its defaults next to examples/pingora_floor.rs
# (the same pingora with empty hooks). Timings on this VM move ±10% run to
# run; instruction counts repeat to a fraction of a percent, so a change of
# a few hundred instructions on the request path shows here first.
#
#   benches/instructions.sh
#   N=2000 ONLY=ezthrottle benches/instructions.sh
#   ONLY=ezthrottle-tls,pingora-tls benches/instructions.sh
#
# What it does, all on 127.0.0.1: an nginx origin (1 KiB body), each proxy
# in turn under `valgrind --tool=callgrind`, a warm-up of 200 requests, the
# counters zeroed, then N requests (absolute-form GET http://127.0.0.1:<origin>/,
# 4 keep-alive connections, one request in flight on each), the counters
# dumped. Prints instructions per request (every thread of the proxy, the
# log writer and timers included), how many of them were libc's memcpy /
# memmove (bytes copied, roughly: futures moved into boxes show up here),
# and the ten functions with the most inclusive instructions per request
# in ezthrottle's own code.
#
# The TLS rows (in ONLY by default) do the same over TLS to a TLS origin:
# `ezthrottle-tls` is CONNECT + interception (each connection's CONNECT and
# handshakes happen before the counters are zeroed, so the figure is the
# per-request cost on a kept-alive intercepted connection), `pingora-tls`
# the floor terminating and re-originating TLS, as in compare.sh.
#
# Knobs: N (3000), ONLY (ezthrottle,pingora,ezthrottle-tls,pingora-tls),
# CONNS (4 keep-alive connections), THREADS (1: worker threads of both
# proxies; one runs a single-threaded runtime, as compare.sh's pinned
# proxies do; 2 and more, tokio's work-stealing scheduler), BIN, FLOOR, SKIP_BUILD=1,
# KEEP_ON_FAIL=1, CG_OUT=DIR (keep each callgrind dump there as NAME.cg, for
# callgrind_annotate), CACHE=1 (simulate the caches too, about twice as
# slow, and add estimated cycles per request: instructions + 10 × L1 misses
# + 100 × last-level misses, the cachegrind rule of thumb; a proxy whose
# code or data spill out of L1 pays for it there, where instruction counts
# do not show it). Installs valgrind, nginx and openssl when missing.
#
# Callgrind counts every byte a `rep movsb` copies as an instruction, so
# big memcpys (pingora's boxed futures) weigh more here than in time.
#
# COPIES=1 runs each proxy without callgrind, with benches/support/
# memcpy_count.c preloaded instead, and prints the bytes memcpy / memmove
# copied per request and the callers that copied most, with their sizes
# (a structure moved whole from future to future shows up as its size,
# many times a request). Needs a C compiler (installs gcc when missing).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
BENCH=instructions
. benches/support/common.sh

N=${N:-3000}
CONNS=${CONNS:-4}
THREADS=${THREADS:-1}
# The client sends N / CONNS requests on each connection.
N=$(( N / CONNS * CONNS ))
[ "$N" -gt 0 ] || die "N must be at least CONNS"
CACHE_SIM=()
if [ "${CACHE:-0}" = 1 ]; then CACHE_SIM=(--cache-sim=yes); fi
ONLY=${ONLY:-ezthrottle,pingora,ezthrottle-tls,pingora-tls}
missing=()
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
if [ "${COPIES:-0}" = 1 ]; then
    command -v cc >/dev/null 2>&1 || missing+=(gcc)
else
    command -v valgrind >/dev/null 2>&1 || missing+=(valgrind)
fi
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx)
install_missing "${missing[@]}"

if [ -z "${BIN:-}" ]; then release_binary; fi
if [[ ",$ONLY," == *,pingora* ]]; then floor_binary; fi

scratch_dir ezt-instructions
read -r ORIGIN ORIGIN_TLS PROXY CONTROL < <(free_ports 4)
HOST=bench.test
origin_cert "$TMP" "$HOST" proxy
kib_origin_conf "$TMP/origin" "$ORIGIN" "$ORIGIN_TLS" "$TMP"
start_nginx "$TMP/origin" "$ORIGIN"

cat > "$TMP/ezthrottle.toml" <<TOML
data_dir = "$TMP/data"

[proxy]
listen = "127.0.0.1:$PROXY"
threads = $THREADS

connect_ports = [$ORIGIN_TLS]

[control]
listen = "127.0.0.1:$CONTROL"

[tls]
upstream_ca_file = "$TMP/origin-ca.pem"

[resolve]
"$HOST" = "127.0.0.1"

# The throttle far out of reach: this measures the proxy.
$OPEN_LIMITS
TOML

RESULTS=()
COUNTER=()
if [ "${COPIES:-0}" = 1 ]; then
    cc -O2 -shared -fPIC -o "$TMP/memcpy_count.so" benches/support/memcpy_count.c
fi
measure() {  # name, origin port, client mode, command...
    local name=$1 origin=$2 mode=$3 pid out="$TMP/$1.cg" _
    shift 3
    local client=(python3 benches/support/keepalive_client.py "$PROXY" "$origin")
    local extra=(- -)
    case $mode in
        connect) extra=("$HOST" "$TMP/data/ca/ca.pem") ;;
        tls) extra=("$HOST" "$TMP/origin-ca.pem") ;;
    esac
    if [ "${COPIES:-0}" = 1 ]; then
        log "$name with memcpy counted"
        env LD_PRELOAD="$TMP/memcpy_count.so" MEMCPY_COUNT_OUT="$TMP/$name.copies" "$@" \
            > "$TMP/$name.out" 2> "$TMP/$name.err" &
    else
        log "$name under callgrind"
        valgrind --tool=callgrind --callgrind-out-file="$out" --dump-instr=no "${CACHE_SIM[@]}" "$@" \
            > "$TMP/$name.out" 2> "$TMP/$name.err" &
    fi
    pid=$!
    PIDS+=("$pid")
    for _ in $(seq 600); do
        python3 -c 'import socket, sys; socket.create_connection(("127.0.0.1", int(sys.argv[1])), 0.5).close()' \
            "$PROXY" 2>/dev/null && break
        kill -0 "$pid" 2>/dev/null || { show_logs "$name"; die "$name exited"; }
        sleep 0.1
    done
    "${client[@]}" 200 "$mode" "${extra[@]}" now 4 || { show_logs "$name"; die "$name: warm-up failed"; }
    # The run's connections (CONNECT, handshakes) are opened before the
    # counters are zeroed: the client waits for a byte on its stdin.
    mkfifo "$TMP/$name.go"
    "${client[@]}" "$N" "$mode" "${extra[@]}" wait "$CONNS" < "$TMP/$name.go" > "$TMP/$name.ready" &
    local cpid=$! gofd
    exec {gofd}> "$TMP/$name.go"
    wait_line "$cpid" "$TMP/$name.ready" '^connected' || { show_logs "$name"; die "$name: run did not connect"; }
    if [ "${COPIES:-0}" = 1 ]; then kill -USR1 "$pid"; else callgrind_control -z "$pid" >/dev/null; fi
    echo go >&"$gofd"
    exec {gofd}>&-
    wait "$cpid" || { show_logs "$name"; die "$name: run failed"; }
    if [ "${COPIES:-0}" = 1 ]; then
        kill -USR2 "$pid"
        for _ in $(seq 100); do [ -f "$TMP/$name.copies" ] && break; sleep 0.1; done
        [ -f "$TMP/$name.copies" ] || die "$name: no copy table"
        COUNTER+=("$name" "$(python3 benches/support/copies.py "$TMP/$name.copies" "${@:1:1}" "$N")")
        stop_pid "$pid"
        return 0
    fi
    callgrind_control -d "$pid" >/dev/null
    stop_pid "$pid"
    local dump
    dump=$(ls "$out".* 2>/dev/null | head -n 1)
    [ -n "$dump" ] || die "$name: no callgrind dump"
    if [ -n "${CG_OUT:-}" ]; then mkdir -p "$CG_OUT" && cp "$dump" "$CG_OUT/$name.cg"; fi
    # PROGRAM TOTALS: Ir, and with the cache simulation
    # Dr Dw I1mr D1mr D1mw ILmr DLmr DLmw after it (each count then "(100.0%)").
    local totals
    totals=$(callgrind_annotate "$dump" 2>/dev/null | awk '/PROGRAM TOTALS/ {
        for (i = 1; i <= NF; i++) gsub(",", "", $i)
        if (NF >= 18) print $1, $1 + 10 * ($7 + $9 + $11) + 100 * ($13 + $15 + $17)
        else print $1, "-"
        exit }')
    # libc's memcpy/memmove (no callees, so inclusive = own): callgrind
    # counts every byte a `rep movsb` moves, so this tracks the bytes a
    # request copies around, mostly futures moved into boxes (docs/
    # performance.md, "The sixth pass").
    local copies
    copies=$(callgrind_annotate --inclusive=yes --threshold=100 "$dump" 2>/dev/null \
        | awk '/libc\.so/ && /(memcpy|memmove)/ { v = $1; gsub(",", "", v); s += v } END { print s + 0 }')
    RESULTS+=("$name $totals $copies")
    if [[ $name == ezthrottle* ]]; then
        callgrind_annotate --inclusive=yes --threshold=100 "$dump" 2>/dev/null \
            | awk -v n="$N" '/\?\?\?:(<)?ezthrottle::/ { v = $1; gsub(",", "", v); sub(/^.*\?\?\?:/, ""); sub(/ \[.*$/, "");
                    printf "  %9.0f  %s\n", v / n, substr($0, 1, 110) }' \
            | grep -v 'FrontDoor as pingora_core::apps::ServerApp>::process_new' | awk 'NR <= 10' > "$TMP/top-$name.txt"
    fi
}

if [[ ",$ONLY," == *,ezthrottle,* ]]; then
    measure ezthrottle "$ORIGIN" plain "$BIN" run --config "$TMP/ezthrottle.toml"
fi
if [[ ",$ONLY," == *,pingora,* ]]; then
    measure pingora "$ORIGIN" plain "$FLOOR" --threads "$THREADS" --plain "127.0.0.1:$PROXY"
fi
if [[ ",$ONLY," == *,ezthrottle-tls,* ]]; then
    measure ezthrottle-tls "$ORIGIN_TLS" connect "$BIN" run --config "$TMP/ezthrottle.toml"
fi
if [[ ",$ONLY," == *,pingora-tls,* ]]; then
    measure pingora-tls "$ORIGIN_TLS" tls "$FLOOR" --threads "$THREADS" --tls "127.0.0.1:$PROXY" \
        --cert "$TMP/proxy.pem" --key "$TMP/proxy.key" --upstream "127.0.0.1:$ORIGIN_TLS" \
        --sni "$HOST" --ca-file "$TMP/origin-ca.pem"
fi

if [ ${#COUNTER[@]} -gt 0 ]; then
    for ((i = 0; i < ${#COUNTER[@]}; i += 2)); do
        echo
        echo "${COUNTER[i]}: memcpy and memmove"
        echo "${COUNTER[i + 1]}"
    done
    echo
    echo "$N requests on $CONNS keep-alive connections after 200 of warm-up; $(git rev-parse --short HEAD 2>/dev/null || echo '?'); $(date -u +%Y-%m-%dT%H:%MZ)."
    exit 0
fi
echo
if [ ${#CACHE_SIM[@]} -gt 0 ]; then
    echo "| proxy | instructions per request | of which memcpy | estimated cycles per request |"
    echo "|---|--:|--:|--:|"
else
    echo "| proxy | instructions per request | of which memcpy |"
    echo "|---|--:|--:|"
fi
per_request() { python3 -c "print(f'{$1 / $N:,.0f}')"; }
for r in "${RESULTS[@]}"; do
    read -r name total cycles copies <<<"$r"
    if [ "$cycles" = - ]; then
        printf '| %s | %s | %s |\n' "$name" "$(per_request "$total")" "$(per_request "$copies")"
    else
        printf '| %s | %s | %s | %s |\n' "$name" "$(per_request "$total")" \
            "$(per_request "$copies")" "$(per_request "$cycles")"
    fi
done
for top in "$TMP"/top-*.txt; do
    [ -s "$top" ] || continue
    name=${top##*/top-}
    echo
    echo "${name%.txt}: its own functions, inclusive instructions per request:"
    cat "$top"
done
echo
echo "$N requests on $CONNS keep-alive connections after 200 of warm-up; $(git rev-parse --short HEAD 2>/dev/null || echo '?'); $(date -u +%Y-%m-%dT%H:%MZ)."
