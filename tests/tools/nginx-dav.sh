# start_nginx_dav WORKDIR ROOT PORT: nginx serving the directory ROOT on
# 127.0.0.1:PORT with WebDAV PUT and DELETE and a JSON autoindex (what the
# http:// store needs), its configuration, logs and temporary files under
# WORKDIR.  Starts it in the background and sets NGINX_PID; the caller waits
# for the port and ends the process.  Source this file.
start_nginx_dav() {
  local work=$1 root=$2 port=$3
  mkdir -p "$work/logs" "$work/tmp" "$root"
  # Workers run as root under root: the scratch directories are private to
  # the user running the test or benchmark.
  cat >"$work/nginx.conf" <<EOF
daemon off;
master_process on;
worker_processes 1;
$( [ "$(id -u)" = 0 ] && echo "user root root;" )
pid $work/nginx.pid;
error_log $work/logs/error.log warn;
events { worker_connections 512; }
http {
  access_log off;
  client_body_temp_path $work/tmp/body;
  proxy_temp_path $work/tmp/proxy;
  fastcgi_temp_path $work/tmp/fastcgi;
  uwsgi_temp_path $work/tmp/uwsgi;
  scgi_temp_path $work/tmp/scgi;
  client_max_body_size 64m;
  keepalive_requests 100000;
  server {
    listen 127.0.0.1:$port;
    root $root;
    location / {
      dav_methods PUT DELETE;
      create_full_put_path on;
      dav_access user:rw group:r all:r;
      autoindex on;
      autoindex_format json;
    }
  }
}
EOF
  nginx -t -p "$work" -c "$work/nginx.conf" -e "$work/logs/error.log" >"$work/nginx-t.log" 2>&1 || {
    cat "$work/nginx-t.log" >&2
    echo "nginx rejected its configuration $work/nginx.conf" >&2
    return 1
  }
  nginx -p "$work" -c "$work/nginx.conf" -e "$work/logs/error.log" &
  NGINX_PID=$!
}
