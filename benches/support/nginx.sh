# The nginx origin the benchmarks share (sourced by benches/support/common.sh):
# a fixed small body on 127.0.0.1:<port>, plus whatever server blocks the
# caller adds, under a scratch dir.
NGINX_BODY='ezthrottle passthrough benchmark: a small fixed body of some 64 bytes.'

# write_nginx_conf DIR HTTP_PORT [SERVER_BLOCKS]: DIR/nginx.conf serving
# NGINX_BODY on 127.0.0.1:HTTP_PORT, plus SERVER_BLOCKS.
write_nginx_conf() {
    local dir=$1 http_port=$2 extra_servers=${3:-}
    mkdir -p "$dir/nginx"
    cat > "$dir/nginx.conf" <<NGINX
worker_processes 1;
pid $dir/nginx/nginx.pid;
error_log $dir/nginx/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $dir/nginx/body;
    proxy_temp_path $dir/nginx/proxy;
    fastcgi_temp_path $dir/nginx/fastcgi;
    uwsgi_temp_path $dir/nginx/uwsgi;
    scgi_temp_path $dir/nginx/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 60s;
    default_type text/plain;
    server {
        listen 127.0.0.1:$http_port;
        location / { return 200 "$NGINX_BODY\n"; }
    }
$extra_servers
}
NGINX
}

# start_nginx DIR HTTP_PORT: run nginx on DIR/nginx.conf in the background
# (NGINX_PID, also in PIDS) and wait (bounded) until HTTP_PORT answers.
start_nginx() {
    "$(command -v nginx || echo /usr/sbin/nginx)" -p "$1/nginx" -c "$1/nginx.conf" -g 'daemon off;' 2>"$1/nginx/stderr.log" &
    NGINX_PID=$!
    PIDS+=("$NGINX_PID")
    wait_http "http://127.0.0.1:$2/" "$NGINX_PID" || { show_logs; die "nginx did not start"; }
}
