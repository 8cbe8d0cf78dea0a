#!/usr/bin/env bash
# The Redis backend ([storage] backend = "redis") on loopback, in one run:
#
# 1. Pass-through on one hot domain, embedded backend vs. Redis backend (one
#    replica): same nginx origin, same wrk load, limits raised far out of the
#    way. Successful req/s, p50/p99, proxy CPU µs per request (utime+stime
#    from /proc), and on the Redis side the round trips per request
#    (INFO commandstats: EVALSHA, EVAL and all commands, before/after, over
#    successful requests) and Redis CPU µs per request (INFO used_cpu_*).
# 2. Summed pace over three replicas on one Redis at 2, 50 and 500 req/s
#    (burst 1, max_concurrent far out of the way): wrk clients spread evenly
#    over the replicas, an origin (Python, below) timestamping every arrival.
#    Achieved summed rate / target, and the most arrivals in any 1 s window
#    (one window starting at each arrival) against rps + burst.
#
#   bash benches/redis.sh                  # 10 s pass-through runs, pace 10/10/5 s
#   bash benches/redis.sh --seconds 5      # 5 s runs, pace 5/5/3 s
#   bash benches/redis.sh --pace-seconds 20,20,10
#
# Arguments:
#   --seconds N          pass-through run length, and pace at 2 and 50 req/s
#                        (500 req/s runs ceil(N/2)); default 10
#   --pace-seconds A,B,C pace run lengths at 2, 50, 500 req/s
# Knobs (environment):
#   CONNECTIONS   wrk connections for pass-through (default 32)
#   WRK_THREADS   wrk threads for pass-through (default 2)
#   WARMUP        seconds of unmeasured load before each pass-through run (default 2)
#   MONITOR_SECONDS  untimed pass-through sample under Redis MONITOR, to count
#                 client round trips apart from commands run inside scripts (default 2)
#   REDIS_AOF=1   run redis-server with appendonly yes, appendfsync everysec
#                 (default: no persistence, as the tests do)
#   EZTHROTTLE_LOG  proxy log filter (default warn)
#   CARGO_TARGET_DIR  where the release binary is (default /var/cache/ezthrottle-release)
#   SKIP_BUILD=1  use the existing release binary (built anyway when missing)
#   KEEP_ON_FAIL=1  keep the scratch dir when something fails
#
# It starts its own redis-server on a free port with its own temp dir (never
# a system service), its own nginx and origin; everything stays on
# 127.0.0.1. The load generators share the machine's cores with the proxies,
# nginx and Redis, so absolute figures are low and noisy; compare the rows.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
BENCH=redis-bench
. benches/support/common.sh

SECONDS_ARG=10
PACE_SECONDS=""
while [ $# -gt 0 ]; do
    case $1 in
        --seconds) SECONDS_ARG=${2:?--seconds N}; shift 2 ;;
        --seconds=*) SECONDS_ARG=${1#*=}; shift ;;
        --pace-seconds) PACE_SECONDS=${2:?--pace-seconds A,B,C}; shift 2 ;;
        --pace-seconds=*) PACE_SECONDS=${1#*=}; shift ;;
        -h|--help) usage; exit 0 ;;
        *) die "unknown argument: $1 (see --help)" ;;
    esac
done
DURATION=${SECONDS_ARG%s}
[[ $DURATION =~ ^[0-9]+$ ]] && [ "$DURATION" -ge 1 ] || die "--seconds: a whole number >= 1"
RATES=(2 50 500)
if [ -n "$PACE_SECONDS" ]; then
    IFS=, read -r -a PACE_SECS <<<"$PACE_SECONDS"
    [ "${#PACE_SECS[@]}" -eq 3 ] || die "--pace-seconds: three numbers, for 2, 50 and 500 req/s"
else
    PACE_SECS=("$DURATION" "$DURATION" "$(( (DURATION + 1) / 2 ))")
fi
CONNECTIONS=${CONNECTIONS:-32}
WRK_THREADS=${WRK_THREADS:-2}
WARMUP=${WARMUP:-2}
MONITOR_SECONDS=${MONITOR_SECONDS:-2}
HOST=bench.test
REPLICAS=3

# ---- dependencies ------------------------------------------------------------
missing=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx)
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
command -v python3 >/dev/null 2>&1 || missing+=(python3)
command -v curl >/dev/null 2>&1 || missing+=(curl)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || missing+=(redis-tools)
install_missing "${missing[@]}"

export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/cache/ezthrottle-release}
release_binary

# ---- scratch space, ports ------------------------------------------------------------
scratch_dir ezthrottle-redis-bench
# Free loopback ports: redis, nginx, origin, then proxy + control for the
# embedded instance and each replica.
read -r -a PORTS < <(free_ports $((3 + 2 * (1 + REPLICAS))))
REDIS_PORT=${PORTS[0]}
HTTP_PORT=${PORTS[1]}
ORIGIN_PORT=${PORTS[2]}

# ---- redis-server: private, throwaway ------------------------------------------------
mkdir -p "$TMP/redis"
REDIS_ARGS=(--port "$REDIS_PORT" --bind 127.0.0.1 --dir "$TMP/redis" --daemonize no
    --logfile "$TMP/redis/redis.log" --save "" --maxmemory-policy noeviction)
if [ "${REDIS_AOF:-0}" = 1 ]; then
    REDIS_ARGS+=(--appendonly yes --appendfsync everysec)
else
    REDIS_ARGS+=(--appendonly no)
fi
log "starting redis-server on 127.0.0.1:$REDIS_PORT ($TMP/redis)"
redis-server "${REDIS_ARGS[@]}" >"$TMP/redis/stdout.log" 2>&1 &
PIDS+=($!)
REDIS_PID=$!
RCLI=(redis-cli -h 127.0.0.1 -p "$REDIS_PORT")
for _ in $(seq 100); do
    [ "$("${RCLI[@]}" PING 2>/dev/null)" = PONG ] && break
    kill -0 "$REDIS_PID" 2>/dev/null || { cat "$TMP/redis/"*.log >&2; die "redis-server did not start"; }
    sleep 0.1
done
[ "$("${RCLI[@]}" PING 2>/dev/null)" = PONG ] || die "redis-server not answering"

# ---- origins: nginx for pass-through, a timestamping origin for pace ---------------
BODY=$NGINX_BODY
write_nginx_conf "$TMP" "$HTTP_PORT"
start_nginx "$TMP" "$HTTP_PORT"

# Keep-alive HTTP/1.1 origin: every request's head is timestamped
# (time.monotonic) with its Host the moment it is read; GET /__arrivals
# (direct, not through the proxy) lists "host seconds" lines and forgets them.
cat > "$TMP/origin.py" <<'PY'
import asyncio, sys, time

arrivals = []

async def handle(reader, writer):
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            t = time.monotonic()
            lines = head.split(b"\r\n")
            parts = lines[0].split(b" ")
            path = parts[1] if len(parts) > 1 else b"/"
            host = b""
            for line in lines[1:]:
                k, _, v = line.partition(b":")
                if k.strip().lower() == b"host":
                    host = v.strip().rsplit(b":", 1)[0]
                    break
            if path.startswith(b"/__arrivals"):
                body = "".join(f"{h} {a:.6f}\n" for h, a in arrivals).encode()
                arrivals.clear()
            else:
                arrivals.append((host.decode("latin-1"), t))
                body = b"ok\n"
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            await writer.drain()
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
        pass
    finally:
        writer.close()

async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", int(sys.argv[1]), backlog=1024)
    print("origin ready", flush=True)
    async with server:
        await server.serve_forever()

asyncio.run(main())
PY
python3 "$TMP/origin.py" "$ORIGIN_PORT" >"$TMP/origin.out" 2>"$TMP/origin.err" &
PIDS+=($!)
ORIGIN_PID=$!

# ---- a shared CA and the configs -----------------------------------------------------
log "ezthrottle ca init (one CA for every instance)"
"$BIN" ca init --data-dir "$TMP/ca-data" >"$TMP/ca-init.log" 2>&1 || { cat "$TMP/ca-init.log" >&2; die "ca init failed"; }

# Identical configs except ports, data_dir and [storage]. The defaults are far
# above what this rig reaches (the pass-through measures the proxy, not its
# limits); the pace domains are pinned at their rate, burst 1, max_concurrent
# out of the way.
write_config() {  # name proxy_port control_port storage(embedded|redis)
    local name=$1 proxy=$2 control=$3 storage=$4
    {
        printf 'data_dir = "%s"\n\n' "$TMP/$name/data"
        printf '[proxy]\nlisten = "127.0.0.1:%s"\n\n' "$proxy"
        printf '[control]\nlisten = "127.0.0.1:%s"\n\n' "$control"
        printf '[tls]\nca_cert = "%s"\nca_key = "%s"\n\n' "$TMP/ca-data/ca/ca.pem" "$TMP/ca-data/ca/ca.key"
        printf '[resolve]\n"%s" = "127.0.0.1"\n' "$HOST"
        for r in "${RATES[@]}"; do printf '"pace%s.test" = "127.0.0.1"\n' "$r"; done
        printf '\n%s\nmax_wait = "600s"\n\n' "$OPEN_LIMITS"
        for r in "${RATES[@]}"; do
            printf '[limits.domains."pace%s.test"]\nrps = %s.0\nburst = 1\nmax_concurrent = 10000\npin = true\n\n' "$r" "$r"
        done
        if [ "$storage" = redis ]; then
            printf '[storage]\nbackend = "redis"\nurl = "redis://127.0.0.1:%s"\n' "$REDIS_PORT"
        fi
    } > "$TMP/$name.toml"
    mkdir -p "$TMP/$name"
}

declare -A EZ_PID EZ_PROXY
start_ez() {  # name proxy_port control_port storage
    local name=$1
    write_config "$@"
    log "starting $name (proxy 127.0.0.1:$2, storage $4)"
    start_ezthrottle "$name" "$TMP/$name.toml"
    EZ_PID[$name]=$EZT_PID
    EZ_PROXY[$name]=$2
}
stop_ez() { stop_pid "${EZ_PID[$1]}"; }

machine_ticks() {  # -> "busy total" clock ticks over all cores
    awk '/^cpu / { t = 0; for (i = 2; i <= NF; i++) t += $i; print t - $5 - $6, t }' /proc/stat
}

# ---- sanity ------------------------------------------------------------------------------
wait_line "$ORIGIN_PID" "$TMP/origin.out" 'origin ready' || { cat "$TMP/origin.err" >&2; die "origin did not start"; }
NGINX_WORKER=$(pgrep -P "$NGINX_PID" | head -n 1)
[ -n "$NGINX_WORKER" ] || die "no nginx worker process"

redis_snapshot() {  # out: "cmd calls" lines and "cpu seconds"
    "${RCLI[@]}" INFO commandstats | tr -d '\r' \
        | sed -n 's/^cmdstat_\([^:]*\):calls=\([0-9]*\),usec=\([0-9]*\),.*/\1 \2 \3/p' > "$1"
    "${RCLI[@]}" INFO cpu | tr -d '\r' \
        | awk -F: '/^used_cpu_(sys|user):/ { s += $2 } END { printf "__cpu %.6f 0\n", s }' >> "$1"
}

WRK_BOUND=$((DURATION + WARMUP + 60))

# ---- 1. pass-through: embedded vs. redis (one replica) -----------------------------------
passthrough() {  # name storage
    local name=$1 port=${EZ_PROXY[$1]} pid=${EZ_PID[$1]}
    check_body "$name: proxied" "$BODY" -x "http://127.0.0.1:$port" "http://$HOST:$HTTP_PORT/"
    wrk_script "$TMP/pt.lua" "$HOST" "$HTTP_PORT" /
    if [ "$WARMUP" -gt 0 ]; then
        log "$name: ${WARMUP} s warm-up"
        timeout "$WRK_BOUND" wrk -t"$WRK_THREADS" -c"$CONNECTIONS" -d"${WARMUP}s" --timeout 10s \
            -s "$TMP/pt.lua" "http://127.0.0.1:$port/" >/dev/null 2>&1 || true
    fi
    log "$name: wrk -t$WRK_THREADS -c$CONNECTIONS -d${DURATION}s"
    redis_snapshot "$TMP/$name.redis0"
    local c0 n0 m0 c1 n1 m1
    c0=$(cpu_ticks "$pid"); n0=$(cpu_ticks "$NGINX_WORKER"); m0=$(machine_ticks)
    timeout "$WRK_BOUND" wrk --latency -t"$WRK_THREADS" -c"$CONNECTIONS" -d"${DURATION}s" --timeout 10s \
        -s "$TMP/pt.lua" "http://127.0.0.1:$port/" >"$TMP/$name.wrk" 2>&1 \
        || { cat "$TMP/$name.wrk" >&2; show_logs "$name"; die "$name: wrk failed"; }
    c1=$(cpu_ticks "$pid"); n1=$(cpu_ticks "$NGINX_WORKER"); m1=$(machine_ticks)
    redis_snapshot "$TMP/$name.redis1"
    grep '^JSON ' "$TMP/$name.wrk" | sed 's/^JSON //' > "$TMP/$name.json"
    [ -s "$TMP/$name.json" ] || { cat "$TMP/$name.wrk" >&2; die "$name: no wrk report"; }
    # proxy, nginx, machine busy, machine total (ticks)
    printf '%s %s %s %s\n' "$(( c1 - c0 ))" "$(( n1 - n0 ))" \
        "$(( ${m1% *} - ${m0% *} ))" "$(( ${m1#* } - ${m0#* } ))" > "$TMP/$name.cpu"
    if [ "$2" = redis ]; then
        # Round trips: INFO commandstats also counts the commands a script
        # runs (redis.call), so a separate short sample under MONITOR tells
        # client commands ("[0 127.0.0.1:port]") from script ones ("[0 lua]").
        # Not timed: MONITOR slows Redis down.
        log "$name: ${MONITOR_SECONDS} s sample under MONITOR (round trips)"
        "${RCLI[@]}" MONITOR > "$TMP/$name.monitor" 2>/dev/null &
        local mpid=$!
        PIDS+=("$mpid")
        sleep 0.5
        timeout "$WRK_BOUND" wrk -t"$WRK_THREADS" -c"$CONNECTIONS" -d"${MONITOR_SECONDS}s" --timeout 10s \
            -s "$TMP/pt.lua" "http://127.0.0.1:$port/" >"$TMP/$name.monwrk" 2>&1 \
            || { cat "$TMP/$name.monwrk" >&2; die "$name: wrk (MONITOR sample) failed"; }
        sleep 1
        stop_pid "$mpid"
        grep '^JSON ' "$TMP/$name.monwrk" | sed 's/^JSON //' > "$TMP/$name.monjson"
    fi
}

start_ez embedded "${PORTS[3]}" "${PORTS[4]}" embedded
passthrough embedded embedded
stop_ez embedded

start_ez replica1 "${PORTS[5]}" "${PORTS[6]}" redis
passthrough replica1 redis

# ---- 2. summed pace over three replicas -------------------------------------------------
for i in $(seq 2 "$REPLICAS"); do
    start_ez "replica$i" "${PORTS[$((3 + 2 * i))]}" "${PORTS[$((4 + 2 * i))]}" redis
done
check_body "pace origin through replica1" "ok" -x "http://127.0.0.1:${EZ_PROXY[replica1]}" "http://$HOST:$ORIGIN_PORT/warm"
sleep 1
curl -sS --noproxy '*' "http://127.0.0.1:$ORIGIN_PORT/__arrivals" >/dev/null

for idx in "${!RATES[@]}"; do
    rate=${RATES[$idx]}
    secs=${PACE_SECS[$idx]}
    # Closed-loop keep-alive connections per replica: a queue always waiting
    # (offered load well above the rate), ~rate/100 + 1 each.
    conns=$(( rate / 100 + 2 ))
    phost="pace$rate.test"
    wrk_script "$TMP/pace$rate.lua" "$phost" "$ORIGIN_PORT" /p
    log "pace $rate req/s: $REPLICAS replicas x wrk -t1 -c$conns -d${secs}s"
    redis_snapshot "$TMP/pace$rate.redis0"
    wpids=()
    for i in $(seq 1 "$REPLICAS"); do
        timeout "$((secs + 60))" wrk -t1 -c"$conns" -d"${secs}s" --timeout 60s -s "$TMP/pace$rate.lua" \
            "http://127.0.0.1:${EZ_PROXY[replica$i]}/" >"$TMP/pace$rate.r$i.wrk" 2>&1 &
        wpids+=($!)
        PIDS+=($!)
    done
    for p in "${wpids[@]}"; do
        wait "$p" || { cat "$TMP"/pace"$rate".r*.wrk >&2; die "pace $rate: wrk failed"; }
    done
    sleep 1   # answers still in flight when wrk stopped reach the origin
    redis_snapshot "$TMP/pace$rate.redis1"
    for i in $(seq 1 "$REPLICAS"); do
        grep '^JSON ' "$TMP/pace$rate.r$i.wrk" | sed 's/^JSON //' > "$TMP/pace$rate.r$i.json"
    done
    curl -sS --noproxy '*' "http://127.0.0.1:$ORIGIN_PORT/__arrivals" > "$TMP/pace$rate.arrivals"
    printf '%s %s %s\n' "$rate" "$secs" "$conns" > "$TMP/pace$rate.meta"
done

# ---- report ---------------------------------------------------------------------------------
python3 - "$TMP" "$CLK_TCK" "$CONNECTIONS" "$DURATION" "$REPLICAS" "${RATES[@]}" <<'PY'
import json, math, os, re, sys
tmp, clk, conns, duration, replicas = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5])
rates = [int(r) for r in sys.argv[6:]]

def jload(name):
    with open(os.path.join(tmp, name)) as f:
        return json.loads(f.read().strip().splitlines()[-1])

def snap(name, col=1):
    d = {}
    with open(os.path.join(tmp, name)) as f:
        for line in f:
            fields = line.split()
            d[fields[0]] = float(fields[col])
    return d

def script_usec(prefix):
    """Microseconds Redis spent executing EVALSHA/EVAL (commandstats usec) and calls."""
    a, b = snap(prefix + ".redis0", 2), snap(prefix + ".redis1", 2)
    ca, cb = snap(prefix + ".redis0"), snap(prefix + ".redis1")
    us = sum(b.get(k, 0) - a.get(k, 0) for k in ("evalsha", "eval"))
    n = sum(cb.get(k, 0) - ca.get(k, 0) for k in ("evalsha", "eval"))
    return us, n

def redis_delta(prefix):
    a, b = snap(prefix + ".redis0"), snap(prefix + ".redis1")
    calls = {k: b.get(k, 0) - a.get(k, 0) for k in set(a) | set(b) if k != "__cpu"}
    # redis-cli's own INFO calls are not the proxy's
    calls.pop("info", None)
    calls = {k: v for k, v in calls.items() if v > 0}
    return calls, b["__cpu"] - a["__cpu"]

def monitor(name):
    """Client commands and script commands per 2xx answer of the MONITOR sample."""
    top, lua = {}, {}
    with open(os.path.join(tmp, name + ".monitor"), errors="replace") as f:
        for line in f:
            m = re.match(r'^[0-9.]+ \[\d+ ([^\]]+)\] "([^"]*)"', line)
            if not m:
                continue
            d = lua if m.group(1) == "lua" else top
            cmd = m.group(2).lower()
            d[cmd] = d.get(cmd, 0) + 1
    ok = max(jload(name + ".monjson")["ok"], 1)
    return {k: v / ok for k, v in top.items()}, {k: v / ok for k, v in lua.items()}, ok

def per(d):
    return ", ".join(f"{k} {v:.3f}" for k, v in sorted(d.items(), key=lambda kv: -kv[1])) or "none"

print()
print(f"== 1. pass-through, one hot domain: wrk {conns} connections, {duration} s, nginx origin ==")
print()
print("| backend | req/s (2xx) | p50 ms | p99 ms | proxy CPU µs/req | Redis round trips/req | EVALSHA+EVAL/req | Redis commands/req | Redis CPU µs/req | failed |")
print("|---|---|---|---|---|---|---|---|---|---|")
base = None
detail = []
bad = False
for name, label in (("embedded", "embedded (SQLite)"), ("replica1", "redis, 1 replica")):
    r = jload(name + ".json")
    ok = max(r["ok"], 1)
    with open(os.path.join(tmp, name + ".cpu")) as f:
        proxy_t, nginx_t, busy_t, total_t = (int(x) for x in f.read().split())
    calls, rcpu = redis_delta(name)
    scripts = calls.get("evalsha", 0) + calls.get("eval", 0)
    total = sum(calls.values())
    failed = r["errors"] + r["non_2xx"]
    bad |= failed > 0
    us = lambda ticks: 1e6 * ticks / clk / ok
    if name == "embedded":
        base = r["ok_rps"]
        rt = sc = rs = "–"
        rcalls = f"{total / ok:.3f}" if total else "0"
    else:
        top, lua, mok = monitor(name)
        rt = f"{sum(top.values()):.3f}"
        sc = f"{scripts / ok:.3f}"
        rcalls = f"{total / ok:.3f}"
        rs = f"{1e6 * rcpu / ok:.1f}"
        detail.append(f"{label}: client commands per 2xx answer (MONITOR sample, {mok} answers): {per(top)}")
        detail.append(f"{label}: commands inside scripts per 2xx answer: {per(lua)}")
        su, sn = script_usec(name)
        detail.append(f"{label}: Redis inside EVALSHA/EVAL (commandstats usec): {su / max(sn, 1):.1f} µs per script, "
                      f"{su / ok:.1f} µs per 2xx answer of its {1e6 * rcpu / ok:.1f} µs CPU")
        if scripts == 0:
            print("WARNING: no EVALSHA/EVAL during the Redis run: is the Redis backend in use?")
    rest = us(busy_t) - us(proxy_t) - us(nginx_t) - (1e6 * rcpu / ok if name != "embedded" else 0)
    detail.append(f"{label}: CPU µs per 2xx answer: proxy {us(proxy_t):.1f}, nginx {us(nginx_t):.1f}, "
                  + (f"redis {1e6 * rcpu / ok:.1f}, " if name != "embedded" else "")
                  + f"rest (wrk, kernel) {rest:.1f}; machine {us(busy_t):.1f} "
                  f"({100 * busy_t / max(total_t, 1):.0f}% of all cores busy)")
    print(f"| {label} | {r['ok_rps']:.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
          f"{us(proxy_t):.1f} | {rt} | {sc} | {rcalls} | {rs} | {failed} |")
r = jload("replica1.json")
print()
if base:
    print(f"redis / embedded req/s: {r['ok_rps'] / base:.2f}")
for d in detail:
    print(d)
print("Redis commands/req counts what INFO commandstats counts: client commands and the")
print("commands scripts run (redis.call); round trips are the client commands alone.")

print()
print(f"== 2. summed pace, {replicas} replicas on one Redis (burst 1), wrk spread evenly ==")
print()
print("| target rps | s | conns | at origin | achieved rps | achieved / target | max in 1 s | rps + burst | 2xx per replica | failed | EVALSHA+EVAL per arrival |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
for rate in rates:
    with open(os.path.join(tmp, f"pace{rate}.meta")) as f:
        _, secs, conns_each = f.read().split()
    times = []
    with open(os.path.join(tmp, f"pace{rate}.arrivals")) as f:
        for line in f:
            h, t = line.split()
            if h == f"pace{rate}.test":
                times.append(float(t))
    times.sort()
    n = len(times)
    achieved = (n - 1) / (times[-1] - times[0]) if n > 1 and times[-1] > times[0] else 0.0
    best, lo = 0, 0
    for hi in range(n):
        while times[hi] - times[lo] >= 1.0:
            lo += 1
        best = max(best, hi - lo + 1)
    allowed = math.floor(rate + 1)
    per_replica = []
    failed = 0
    for i in range(1, replicas + 1):
        j = jload(f"pace{rate}.r{i}.json")
        per_replica.append(j["ok"])
        failed += j["errors"] + j["non_2xx"]
        bad |= j["non_2xx"] > 0
    calls, _ = redis_delta(f"pace{rate}")
    flag = "" if best <= allowed else " (over)"
    print(f"| {rate} | {secs} | {replicas}x{conns_each} | {n} | {achieved:.2f} | {100 * achieved / rate:.1f}% | "
          f"{best}{flag} | {allowed} | {'/'.join(map(str, per_replica))} | {failed} | {(calls.get('evalsha', 0) + calls.get('eval', 0)) / max(n, 1):.2f} |")
print()
print("achieved = (arrivals - 1) / (last - first arrival) at the origin; max in 1 s = most arrivals")
print("in any window [t, t + 1 s) starting at an arrival. failed = wrk errors + non-2xx (wrk's")
print("timeouts/resets of requests still queued when a pace run stops are counted here).")
if bad:
    print("\nWARNING: some requests failed with non-2xx answers or transport errors during pass-through")
PY
