#!/usr/bin/env bash
# Writes one simulated host's nginx config and cutover config (examples/fleet/run.sh calls it per host):
#   host-files.sh HOST_DIR NAME IP FIXTURE SMALL
# The host's nginx listens on IP:80 in the host's network namespace and proxies to cutover's upstream; the
# fixture app binds 127.0.0.1 there, so every host uses the same app ports, as real hosts would. A release
# starts with the flags in HOST_DIR/flags/<release> when that file exists (e.g. --fail-health on one host), and
# a release whose HOST_DIR/flags/<release>.break-after-switch exists turns unhealthy once it has taken the traffic
# (the after_switch hook creates the file its --fail-health-when watches): a release that breaks after its deploy.
set -euo pipefail
H=$1 NAME=$2 IP=$3 FIXTURE=$4 SMALL=$5

cat >"$H/nginx/conf/nginx.conf" <<CONF
# nginx of simulated host $NAME: nginx -p $H/nginx/ -c conf/nginx.conf (inside its network namespace)
worker_processes 1;
pid logs/nginx.pid;
error_log logs/error.log;
events { worker_connections 1024; }
http {
    access_log off;
    client_body_temp_path temp/body;
    proxy_temp_path temp/proxy;
    fastcgi_temp_path temp/fastcgi;
    uwsgi_temp_path temp/uwsgi;
    scgi_temp_path temp/scgi;
    # cutover's upstream file: the upstream "shop" and the log format cutover_shop
    include $H/nginx/conf/shop.upstream.conf;
    server {
        listen $IP:80;
        # the JSON access log cutover's canary analysis reads (canary.access_log)
        access_log $H/nginx/logs/shop.cutover.log cutover_shop;
        location / {
            proxy_pass http://shop;
            proxy_set_header Host \$host;
        }
    }
}
CONF

if [ "$SMALL" = 1 ]; then min_requests=5; else min_requests=20; fi
cat >"$H/cutover.toml" <<TOML
# cutover on simulated host $NAME: the same config a real host would have, with paths under $H.
[app]
name = "shop"
start = "exec python3 $FIXTURE --port {{port}} --release {{release}} \$(cat $H/flags/{{release}} 2>/dev/null)"
stop_timeout = "5s"

[ports]
pool = [8081, 8082, 8083]
bind = "127.0.0.1"

[health]
path = "/health"
interval = "100ms"
deadline = "5s"
successes = 2

[nginx]
upstream_file = "$H/nginx/conf/shop.upstream.conf"
prefix = "$H/nginx"
conf = "conf/nginx.conf"

[deploy]
drain_timeout = "10s"
keep_previous = true
state_dir = "$H/state"
verify = "2s"

[runtime]
log_dir = "$H/logs"

[canary]
steps = [20, 50, 100]
interval = "2s"
max_error_rate = 0.01
min_requests = $min_requests
access_log = "$H/nginx/logs/shop.cutover.log"

[hooks]
after_switch = "if [ -e $H/flags/\$CUTOVER_RELEASE.break-after-switch ]; then touch $H/flags/\$CUTOVER_RELEASE.unhealthy; fi"
TOML
