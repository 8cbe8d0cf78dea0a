# What the bench scripts share (sourced by benches/*.sh after setting BENCH,
# the name their messages start with): messages, dependencies, the release
# binary, free ports, a scratch dir whose processes are stopped on exit,
# starting ezthrottle and waiting for its ready line, waiting for a port, a
# throwaway origin CA, wrk's report, and a process's CPU time from /proc.
# Also sources support/nginx.sh (the nginx origin).

. "$(dirname "${BASH_SOURCE[0]}")/nginx.sh"

log() { printf '%s: %s\n' "$BENCH" "$*" >&2; }
die() { log "$*"; exit 1; }

# The comment block at the top of the script (its usage), without the #s.
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"
    elif command -v sudo >/dev/null 2>&1; then sudo "$@"
    else die "need root (or sudo) to run: $*"
    fi
}

# install_missing PACKAGE...: apt-get install them (nothing when none is
# named). Debian's nginx, redis-server and squid packages start system
# services; the benches run their own, so those are stopped again.
install_missing() {
    [ "$#" -gt 0 ] || return 0
    log "installing: $*"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update >&2
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$@" >&2
    command -v systemctl >/dev/null 2>&1 || return 0
    local service
    for service in nginx redis-server squid; do
        [[ " $* " == *" $service "* ]] && { as_root systemctl disable --now "$service" >/dev/null 2>&1 || true; }
    done
    return 0
}

# release_build ARGS...: `cargo build --release ARGS` the way every release
# build of ezthrottle is made (scripts/release-flags: with the committed
# profile when it applies), so a benchmark measures the binary users run.
# Run from the repository root.
release_build() {
    scripts/release-flags cargo build --release "$@" >&2
}

# cargo_target_dir: where cargo puts builds ($CARGO_TARGET_DIR, else
# cargo's own target dir).
cargo_target_dir() {
    if [ -n "${CARGO_TARGET_DIR:-}" ]; then
        printf '%s\n' "$CARGO_TARGET_DIR"
        return 0
    fi
    cargo metadata --format-version 1 --no-deps \
        | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])'
}

# release_binary: BIN = the release ezthrottle in $CARGO_TARGET_DIR (else
# cargo's own target dir), built first unless SKIP_BUILD=1 (and built anyway
# when missing).
release_binary() {
    local target
    target=$(cargo_target_dir)
    BIN="$target/release/ezthrottle"
    if [ "${SKIP_BUILD:-0}" != 1 ] || [ ! -x "$BIN" ]; then
        log "cargo build --release (target dir $target)"
        release_build --bin ezthrottle
    fi
    [ -x "$BIN" ] || die "no binary at $BIN"
}

# floor_binary: FLOOR, unless already set, = examples/pingora_floor.rs
# (pingora with empty hooks, the floor under ezthrottle) built without the
# profile: a reference point, not what ships, and comparable with the
# passes before the profile was committed. It is built in a target dir of
# its own (<target>/floor), where its flags do not rebuild the release
# build's dependencies and the other way round. Built first unless
# SKIP_BUILD=1 (and built anyway when missing).
floor_binary() {
    if [ -n "${FLOOR:-}" ]; then
        [ -x "$FLOOR" ] || die "no binary at FLOOR=$FLOOR"
        return 0
    fi
    local target
    target=$(cargo_target_dir)/floor
    FLOOR="$target/release/examples/pingora_floor"
    if [ "${SKIP_BUILD:-0}" != 1 ] || [ ! -x "$FLOOR" ]; then
        log "cargo build --release --example pingora_floor (target dir $target, without the profile)"
        CARGO_TARGET_DIR="$target" cargo build --release --example pingora_floor >&2
    fi
    [ -x "$FLOOR" ] || die "no binary at $FLOOR"
}

# free_ports N: N distinct free loopback ports on one line (held open
# together while they are picked, so they differ).
free_ports() {
    python3 - "${1:-1}" <<'PY'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
PY
}

# ---- scratch dir, background processes, cleanup ------------------------------------
PIDS=()   # every background process the script started: stopped on exit

# stop_pid PID: TERM, a bounded wait (10 s), KILL.
stop_pid() {
    kill -TERM "$1" 2>/dev/null || true
    local _
    for _ in $(seq 100); do kill -0 "$1" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
}

bench_cleanup() {
    local rc=$? pid _
    trap - EXIT INT TERM
    [ -z "${BEFORE_CLEANUP:-}" ] || "$BEFORE_CLEANUP"
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do
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

# scratch_dir NAME: TMP = a new temp dir (mode 755: nginx workers may run as
# an unprivileged user), removed on exit (kept when the script fails and
# KEEP_ON_FAIL is set) after every process in PIDS is stopped (and, first,
# whatever the function named in BEFORE_CLEANUP stops, when it is set).
scratch_dir() {
    TMP=$(mktemp -d "${TMPDIR:-/tmp}/$1.XXXXXX")
    chmod 755 "$TMP"
    trap bench_cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
}

# show_logs [NAME...]: the tails of $TMP/NAME.out and .err (default: every
# ezthrottle's), and nginx's logs.
show_logs() {
    local names=("$@") name
    if [ "${#names[@]}" -eq 0 ]; then
        for name in "$TMP"/*.out; do [ -e "$name" ] && names+=("$(basename "$name" .out)"); done
    fi
    for name in "${names[@]}"; do
        log "$name stdout:"; tail -n 20 "$TMP/$name.out" >&2 2>/dev/null || true
        log "$name stderr:"; tail -n 40 "$TMP/$name.err" >&2 2>/dev/null || true
    done
    if [ -d "$TMP/nginx" ]; then
        log "nginx:"; tail -n 20 "$TMP/nginx/stderr.log" "$TMP/nginx/error.log" >&2 2>/dev/null || true
    fi
}

# ---- ezthrottle ---------------------------------------------------------------------------
# The [limits] section of a bench config: the throttle far out of the way,
# so a run measures the proxy.
OPEN_LIMITS='[limits]
rps = 1000000.0
max_concurrent = 10000
rps_ceiling = 10000000.0
concurrency_ceiling = 100000
queue_capacity = 100000'

# wait_line PID FILE PATTERN: a bounded wait (60 s) for a line matching
# PATTERN (grep) in FILE, the process's output; fails at once if the
# process exits first.
wait_line() {
    local _
    for _ in $(seq 600); do
        grep -q "$3" "$2" 2>/dev/null && return 0
        kill -0 "$1" 2>/dev/null || { log "exited before printing $3"; return 1; }
        sleep 0.1
    done
    grep -q "$3" "$2" 2>/dev/null && return 0
    log "no $3 within 60 s"
    return 1
}

# wait_ready PID OUT: the same for ezthrottle's ready line.
wait_ready() { wait_line "$1" "$2" '^ezthrottle ready proxy='; }

# start_ezthrottle NAME CONFIG: run "$BIN run --config CONFIG" in the
# background (logs at $EZTHROTTLE_LOG, default warn), output in
# $TMP/NAME.out and .err; EZT_PID is its pid (also in PIDS). Returns once it
# is ready; dies (with its logs) if it does not get there.
start_ezthrottle() {
    local name=$1 config=$2
    EZTHROTTLE_LOG=${EZTHROTTLE_LOG:-warn} "$BIN" run --config "$config" \
        >"$TMP/$name.out" 2>"$TMP/$name.err" &
    EZT_PID=$!
    PIDS+=("$EZT_PID")
    wait_ready "$EZT_PID" "$TMP/$name.out" || { show_logs "$name"; die "$name did not get ready"; }
}

# wait_http URL [PID]: a bounded wait (10 s) until URL answers at all (for
# servers without a ready line); fails at once if PID exits.
wait_http() {
    local _
    for _ in $(seq 100); do
        curl -s -o /dev/null --max-time 5 --noproxy '*' "$1" && return 0
        [ -z "${2:-}" ] || kill -0 "$2" 2>/dev/null || return 1
        sleep 0.1
    done
    return 1
}

# check_body WHAT WANT CURL-ARGS...: one curl; dies (with the logs) unless it
# answers exactly WANT.
check_body() {
    local what=$1 want=$2 got
    shift 2
    got=$(curl -sS --max-time 10 "$@") || { show_logs; die "$what: curl failed"; }
    [ "$got" = "$want" ] || { show_logs; die "$what: unexpected body: ${got:0:200}"; }
}

# ---- TLS ----------------------------------------------------------------------------------
# origin_cert DIR HOST [NAME...]: a throwaway CA (DIR/origin-ca.pem) and a
# server leaf it signed for HOST and 127.0.0.1 (DIR/origin.pem,
# DIR/origin.key), and one more such leaf for each NAME (DIR/NAME.pem,
# DIR/NAME.key).
origin_cert() {
    local dir=$1 host=$2
    shift 2
    (
        cd "$dir"
        openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
            -keyout origin-ca.key -out origin-ca.pem -days 2 -subj "/CN=ezthrottle bench CA" \
            -addext "basicConstraints=critical,CA:TRUE" \
            -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
        printf '%s\n' "subjectAltName=DNS:$host,IP:127.0.0.1" "basicConstraints=critical,CA:FALSE" \
            "keyUsage=critical,digitalSignature" "extendedKeyUsage=serverAuth" > origin.ext
        local name
        for name in origin "$@"; do
            openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
                -keyout "$name.key" -out "$name.csr" -subj "/CN=$host" 2>/dev/null
            openssl x509 -req -in "$name.csr" -CA origin-ca.pem -CAkey origin-ca.key -CAcreateserial \
                -days 2 -extfile origin.ext -out "$name.pem" 2>/dev/null
        done
    ) || die "could not make the origin's certificate"
}

# ---- load and CPU -------------------------------------------------------------------------
# wrk_script OUT HOST PORT PATH: a wrk script that sends proxy-form requests
# for http://HOST:PORT/PATH (run it against the proxy's address) and whose
# done() hook prints one line `JSON {...}`: requests, ok (not non-2xx/3xx),
# errors (transport), non_2xx, seconds, rps (all answers), ok_rps, and
# latency p50/p90/p99 in ms. Without HOST, plain requests for PATH.
wrk_script() {
    local out=$1 host=${2:-} port=${3:-} path=${4:-/}
    {
        if [ -n "$host" ]; then
            printf 'wrk.path = "http://%s:%s%s"\n' "$host" "$port" "$path"
            printf 'wrk.headers["Host"] = "%s:%s"\n' "$host" "$port"
        fi
        cat <<'LUA'
done = function(summary, latency, requests)
    local e = summary.errors
    local secs = summary.duration / 1e6
    local ok = summary.requests - e.status
    io.write(string.format(
        '\nJSON {"requests":%d,"ok":%d,"errors":%d,"non_2xx":%d,"seconds":%.3f,"rps":%.1f,"ok_rps":%.1f,"p50_ms":%.3f,"p90_ms":%.3f,"p99_ms":%.3f}\n',
        summary.requests, ok, e.connect + e.read + e.write + e.timeout, e.status, secs,
        summary.requests / secs, ok / secs,
        latency:percentile(50) / 1000, latency:percentile(90) / 1000, latency:percentile(99) / 1000))
end
LUA
    } > "$out"
}

CLK_TCK=$(getconf CLK_TCK)

# cpu_ticks PID: its user + system CPU time in clock ticks (CLK_TCK a
# second), from /proc (the fields after the command name, which may hold
# spaces).
cpu_ticks() {
    awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$1/stat"
}
