# The nginx origin the pass-through benchmarks share (sourced by
# benches/passthrough.sh and benches/redis.sh): a fixed small body on
# 127.0.0.1:$2, plus whatever server blocks $3 holds, under the scratch dir $1.
# Sets NGINX_BODY; writes $1/nginx.conf; the caller starts nginx.
NGINX_BODY='ezthrottle passthrough benchmark: a small fixed body of some 64 bytes.'

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
