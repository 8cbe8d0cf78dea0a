#!/usr/bin/env bash
# The console's own cost (docs/console.md):
#   1. proxy CPU per request under wrk load, with nobody watching and with
#      one headless Chromium on /console (the overview polls once a second);
#   2. proxy CPU per second while idle with that browser watching;
#   3. the ring buffers' memory with 500 domains (the overview's own figure,
#      and the process RSS before and after one request to each).
#
#   benches/console_cost.sh
#   EZTHROTTLE_BIN=target/debug/ezthrottle DURATION=10 benches/console_cost.sh
#
# Knobs (environment):
#   EZTHROTTLE_BIN  the binary (default ${CARGO_TARGET_DIR:-target}/release/ezthrottle)
#   DURATION        seconds per load run (default 10)
#   CONNECTIONS     wrk connections (default 16)
#   CHROMIUM        the browser (default: chromium on PATH)
#
# Needs nginx, wrk, curl, chromium. CPU is read from /proc/<pid>/stat
# (utime + stime), so the figures are the proxy process's alone. All traffic
# stays on 127.0.0.1; the throttle is set out of the way.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
DURATION=${DURATION:-10}
CONNECTIONS=${CONNECTIONS:-16}
BIN=${EZTHROTTLE_BIN:-${CARGO_TARGET_DIR:-target}/release/ezthrottle}
CHROMIUM=${CHROMIUM:-$(command -v chromium || command -v chromium-browser || true)}
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
DOMAINS=500

log() { printf 'console_cost: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }
[ -x "$BIN" ] || die "no binary at $BIN (cargo build --release, or set EZTHROTTLE_BIN)"
command -v wrk >/dev/null || die "wrk is missing (apt-get install wrk)"
[ -x "$NGINX" ] || die "nginx is missing (apt-get install nginx)"
[ -n "$CHROMIUM" ] || die "chromium is missing (apt-get install chromium)"

TMP=$(mktemp -d)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$TMP"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
HTTP_PORT=$(free_port)
PROXY_PORT=$(free_port)
CONTROL_PORT=$(free_port)

. "$(dirname "${BASH_SOURCE[0]}")/support/nginx.sh"
write_nginx_conf "$TMP" "$HTTP_PORT"
"$NGINX" -p "$TMP/nginx" -c "$TMP/nginx.conf" -g 'daemon off;' 2>"$TMP/nginx/stderr.log" &
PIDS+=($!)

{
    cat <<TOML
data_dir = "$TMP/data"

[proxy]
listen = "127.0.0.1:$PROXY_PORT"

[control]
listen = "127.0.0.1:$CONTROL_PORT"

[metrics]
max_domains = $DOMAINS

[limits]
rps = 1000000.0
max_concurrent = 10000
rps_ceiling = 10000000.0
concurrency_ceiling = 100000
queue_capacity = 100000

[resolve]
"bench.test" = "127.0.0.1"
TOML
    for i in $(seq 1 $DOMAINS); do printf '"d%d.test" = "127.0.0.1"\n' "$i"; done
} > "$TMP/ezthrottle.toml"

EZTHROTTLE_LOG=warn "$BIN" run --config "$TMP/ezthrottle.toml" >"$TMP/ez.out" 2>"$TMP/ez.err" &
EZT_PID=$!
PIDS+=($EZT_PID)
for _ in $(seq 600); do
    grep -q '^ezthrottle ready proxy=' "$TMP/ez.out" 2>/dev/null && break
    kill -0 "$EZT_PID" 2>/dev/null || { cat "$TMP/ez.err" >&2; die "ezthrottle exited"; }
    sleep 0.1
done
grep -q '^ezthrottle ready proxy=' "$TMP/ez.out" || die "ezthrottle not ready within 60 s"
for _ in $(seq 100); do
    curl -s -o /dev/null --noproxy '*' "http://127.0.0.1:$HTTP_PORT/" && break
    sleep 0.1
done

TICKS=$(getconf CLK_TCK)
cpu_ticks() { awk '{print $14 + $15}' "/proc/$EZT_PID/stat"; }
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$EZT_PID/status"; }
overview() { curl -s --noproxy '*' "http://127.0.0.1:$CONTROL_PORT/console/api/overview?limit=1"; }

cat > "$TMP/proxy.lua" <<LUA
wrk.path = "http://bench.test:$HTTP_PORT/"
wrk.headers["Host"] = "bench.test:$HTTP_PORT"
done = function(summary, latency, requests)
  io.write(string.format("REQUESTS %d\n", summary.requests))
end
LUA

# One load run: prints "<requests> <cpu ticks>".
load() {
    local before after out
    before=$(cpu_ticks)
    out=$(wrk -t2 -c"$CONNECTIONS" -d"${DURATION}s" -s "$TMP/proxy.lua" "http://127.0.0.1:$PROXY_PORT/")
    after=$(cpu_ticks)
    echo "$(echo "$out" | awk '/^REQUESTS/ {print $2}') $((after - before))"
}

per_request() {  # requests ticks -> microseconds of CPU per request
    python3 -c "import sys; r,t,hz=map(float,sys.argv[1:]); print(f'{t/hz/r*1e6:.1f}')" "$1" "$2" "$TICKS"
}

log "warm-up"
DURATION=2 load >/dev/null

log "load, nobody watching (${DURATION} s)"
read -r REQ_A TICKS_A < <(load)

log "starting headless Chromium on /console"
"$CHROMIUM" --headless --no-sandbox --disable-gpu --disable-dev-shm-usage --no-first-run \
    --disable-background-networking --disable-extensions --user-data-dir="$TMP/profile" \
    --remote-debugging-port=0 "http://127.0.0.1:$CONTROL_PORT/console" >/dev/null 2>"$TMP/chromium.err" &
PIDS+=($!)
# Nothing announces the page's first poll: wait (bounded) for Chromium's
# DevTools line, then two poll periods.
for _ in $(seq 300); do grep -q 'DevTools listening' "$TMP/chromium.err" && break; sleep 0.1; done
sleep 2

log "idle, browser watching (${DURATION} s)"
IDLE_BEFORE=$(cpu_ticks)
sleep "$DURATION"
IDLE_TICKS=$(( $(cpu_ticks) - IDLE_BEFORE ))

log "load, browser watching (${DURATION} s)"
read -r REQ_B TICKS_B < <(load)

log "one request to each of $DOMAINS domains"
RSS_BEFORE=$(rss_kib)
RINGS_BEFORE=$(overview | python3 -c 'import json,sys; print(json.load(sys.stdin)["rings"]["bytes"])')
seq 1 $DOMAINS | xargs -P 8 -I{} curl -s -o /dev/null -x "http://127.0.0.1:$PROXY_PORT" "http://d{}.test:$HTTP_PORT/"
# The sampler runs once a second; wait (bounded) until it has seen them all.
for _ in $(seq 50); do
    TRACKED=$(overview | python3 -c 'import json,sys; print(json.load(sys.stdin)["rings"]["tracked"])')
    [ "$TRACKED" -ge $((DOMAINS + 1)) ] && break
    sleep 0.2
done
RINGS=$(overview | python3 -c 'import json,sys; r=json.load(sys.stdin)["rings"]; print(r["tracked"], r["bytes"], r["bytes_per_domain"], r["cap"])')
RSS_AFTER=$(rss_kib)

read -r TRACKED RING_BYTES PER_DOMAIN CAP <<<"$RINGS"
echo
echo "binary: $BIN"
echo "load: wrk -c$CONNECTIONS, ${DURATION} s per run"
printf '%-44s %10s %14s\n' "run" "requests" "CPU us/request"
printf '%-44s %10s %14s\n' "nobody watching" "$REQ_A" "$(per_request "$REQ_A" "$TICKS_A")"
printf '%-44s %10s %14s\n' "one browser on /console (1 poll/s)" "$REQ_B" "$(per_request "$REQ_B" "$TICKS_B")"
python3 -c "import sys; t,hz,d=map(float,sys.argv[1:]); print(f'idle with the browser watching: {t/hz/d*1000:.1f} ms CPU per second ({t/hz/d*100:.2f} % of a core)')" "$IDLE_TICKS" "$TICKS" "$DURATION"
echo "rings: $TRACKED tracked (cap $CAP), $RING_BYTES bytes (${PER_DOMAIN} per domain; $RINGS_BEFORE before the $DOMAINS domains)"
echo "RSS: $RSS_BEFORE KiB before, $RSS_AFTER KiB after one request to each of $DOMAINS domains (+$((RSS_AFTER - RSS_BEFORE)) KiB: rings, throttles, metric series)"
