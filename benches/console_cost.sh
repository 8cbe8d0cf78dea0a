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
BENCH=console_cost
. benches/support/common.sh
DURATION=${DURATION:-10}
CONNECTIONS=${CONNECTIONS:-16}
BIN=${EZTHROTTLE_BIN:-${CARGO_TARGET_DIR:-target}/release/ezthrottle}
CHROMIUM=${CHROMIUM:-$(command -v chromium || command -v chromium-browser || true)}
DOMAINS=500

[ -x "$BIN" ] || die "no binary at $BIN (cargo build --release, or set EZTHROTTLE_BIN)"
command -v wrk >/dev/null || die "wrk is missing (apt-get install wrk)"
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || die "nginx is missing (apt-get install nginx)"
[ -n "$CHROMIUM" ] || die "chromium is missing (apt-get install chromium)"

scratch_dir ezthrottle-console
read -r HTTP_PORT PROXY_PORT CONTROL_PORT < <(free_ports 3)

write_nginx_conf "$TMP" "$HTTP_PORT"
start_nginx "$TMP" "$HTTP_PORT"

{
    cat <<TOML
data_dir = "$TMP/data"

[proxy]
listen = "127.0.0.1:$PROXY_PORT"

[control]
listen = "127.0.0.1:$CONTROL_PORT"

[metrics]
max_domains = $DOMAINS

$OPEN_LIMITS

[resolve]
"bench.test" = "127.0.0.1"
TOML
    for i in $(seq 1 $DOMAINS); do printf '"d%d.test" = "127.0.0.1"\n' "$i"; done
} > "$TMP/ezthrottle.toml"

start_ezthrottle ez "$TMP/ezthrottle.toml"

rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$EZT_PID/status"; }
overview() { curl -s --noproxy '*' "http://127.0.0.1:$CONTROL_PORT/console/api/overview?limit=1"; }

wrk_script "$TMP/proxy.lua" bench.test "$HTTP_PORT" /

# One load run: prints "<requests> <cpu ticks>".
load() {
    local before after out
    before=$(cpu_ticks "$EZT_PID")
    out=$(wrk -t2 -c"$CONNECTIONS" -d"${DURATION}s" -s "$TMP/proxy.lua" "http://127.0.0.1:$PROXY_PORT/")
    after=$(cpu_ticks "$EZT_PID")
    echo "$(echo "$out" | sed -n 's/^JSON {"requests":\([0-9]*\).*/\1/p') $((after - before))"
}

per_request() {  # requests ticks -> microseconds of CPU per request
    python3 -c "import sys; r,t,hz=map(float,sys.argv[1:]); print(f'{t/hz/r*1e6:.1f}')" "$1" "$2" "$CLK_TCK"
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
IDLE_BEFORE=$(cpu_ticks "$EZT_PID")
sleep "$DURATION"
IDLE_TICKS=$(( $(cpu_ticks "$EZT_PID") - IDLE_BEFORE ))

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
python3 -c "import sys; t,hz,d=map(float,sys.argv[1:]); print(f'idle with the browser watching: {t/hz/d*1000:.1f} ms CPU per second ({t/hz/d*100:.2f} % of a core)')" "$IDLE_TICKS" "$CLK_TCK" "$DURATION"
echo "rings: $TRACKED tracked (cap $CAP), $RING_BYTES bytes (${PER_DOMAIN} per domain; $RINGS_BEFORE before the $DOMAINS domains)"
echo "RSS: $RSS_BEFORE KiB before, $RSS_AFTER KiB after one request to each of $DOMAINS domains (+$((RSS_AFTER - RSS_BEFORE)) KiB: rings, throttles, metric series)"
