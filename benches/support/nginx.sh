# The nginx origin the benchmarks share (sourced by benches/support/common.sh):
# a fixed small body on 127.0.0.1:<port>, plus whatever server blocks the
# caller adds, under a scratch dir.
NGINX_BODY='ezthrottle passthrough benchmark: a small fixed body of some 64 bytes.'

# nginx_conf DIR HTTP [WORKER_CONNECTIONS [KEEPALIVE_TIMEOUT [NOFILE]]]:
# DIR/nginx.conf for one worker with its pid, logs and temp files under
# DIR/nginx, no access log and long-lived keep-alive (WORKER_CONNECTIONS
# default 4096, KEEPALIVE_TIMEOUT default 60s, worker_rlimit_nofile NOFILE
# when given), then HTTP (directives and server blocks) inside http {}.
nginx_conf() {
    local dir=$1 http=$2 conns=${3:-4096} keepalive=${4:-60s} nofile=${5:-}
    mkdir -p "$dir/nginx"
    {
        echo 'worker_processes 1;'
        [ -z "$nofile" ] || echo "worker_rlimit_nofile $nofile;"
        cat <<NGINX
pid $dir/nginx/nginx.pid;
error_log $dir/nginx/error.log warn;
events { worker_connections $conns; }
http {
    access_log off;
    client_body_temp_path $dir/nginx/body;
    proxy_temp_path $dir/nginx/proxy;
    fastcgi_temp_path $dir/nginx/fastcgi;
    uwsgi_temp_path $dir/nginx/uwsgi;
    scgi_temp_path $dir/nginx/scgi;
    keepalive_requests 1000000;
    keepalive_timeout $keepalive;
$http
}
NGINX
    } > "$dir/nginx.conf"
}

# write_nginx_conf DIR HTTP_PORT [SERVER_BLOCKS]: DIR/nginx.conf serving
# NGINX_BODY on 127.0.0.1:HTTP_PORT, plus SERVER_BLOCKS.
write_nginx_conf() {
    nginx_conf "$1" "    default_type text/plain;
    server {
        listen 127.0.0.1:$2;
        location / { return 200 \"$NGINX_BODY\\n\"; }
    }
${3:-}"
}

# start_nginx DIR HTTP_PORT [WRAPPER...]: run nginx on DIR/nginx.conf in the
# background (under WRAPPER, e.g. taskset -c 1, when given; NGINX_PID, also
# in PIDS) and wait (bounded) until HTTP_PORT answers.
start_nginx() {
    "${@:3}" "$(command -v nginx || echo /usr/sbin/nginx)" -p "$1/nginx" -c "$1/nginx.conf" -g 'daemon off;' 2>"$1/nginx/stderr.log" &
    NGINX_PID=$!
    PIDS+=("$NGINX_PID")
    wait_http "http://127.0.0.1:$2/" "$NGINX_PID" || { show_logs; die "nginx did not start"; }
}

# kib_origin_conf DIR HTTP_PORT TLS_PORT CERT_DIR: DIR/nginx.conf answering
# a 1 KiB body on 127.0.0.1:HTTP_PORT and, with CERT_DIR/origin.pem and
# origin.key (origin_cert), over TLS on 127.0.0.1:TLS_PORT (instructions.sh
# and scripts/build-pgo).
kib_origin_conf() {
    local body
    body=$(python3 -c 'print("x" * 1023)')
    nginx_conf "$1" "    default_type text/plain;
    server {
        listen 127.0.0.1:$2;
        location / { return 200 \"$body\"; }
    }
    server {
        listen 127.0.0.1:$3 ssl;
        ssl_certificate $4/origin.pem;
        ssl_certificate_key $4/origin.key;
        location / { return 200 \"$body\"; }
    }"
}
