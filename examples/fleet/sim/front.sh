#!/usr/bin/env bash
# The load balancer's stand-in: a front nginx in the root namespace with the hosts as one upstream, passive
# health (max_fails, fail_timeout) and retries on the next host (proxy_next_upstream), as an ALB retries a
# target that refused a connection.
#
#   front.sh init DIR PORT IP...          write DIR/conf/nginx.conf (listen 127.0.0.1:PORT) with the hosts registered
#   front.sh deregister DIR IP            mark the host down, reload, wait until the old workers are gone (drained)
#   front.sh register DIR IP              put the host back, reload, wait until the new workers run
#
# deregister/register are what the playbook's lb_deregister_command/lb_register_command run in the simulation;
# on AWS they are `aws elbv2 deregister-targets` + `wait target-deregistered` and `register-targets` +
# `wait target-in-service`.
set -euo pipefail
export PATH="$PATH:/usr/sbin"
cmd=$1 dir=$2
shift 2

render() { # the upstream file from DIR/targets (one "IP on|off" per line)
    {
        echo "# written by front.sh from $dir/targets"
        echo "upstream fleet {"
        while read -r ip st; do
            if [ "$st" = on ]; then
                echo "    server $ip:80 max_fails=2 fail_timeout=5s;"
            else
                echo "    server $ip:80 down;  # deregistered"
            fi
        done <"$dir/targets"
        echo "    keepalive 16;"
        echo "}"
    } >"$dir/conf/fleet.upstream.conf.new"
    mv "$dir/conf/fleet.upstream.conf.new" "$dir/conf/fleet.upstream.conf"
}

workers() { # pids of the master's worker processes
    local master=$1 p
    for p in $(cat "/proc/$master/task/$master/children" 2>/dev/null); do
        grep -q 'worker process' "/proc/$p/cmdline" 2>/dev/null && echo "$p"
    done
    return 0
}

reload_and_drain() { # reload the front; wait until none of the old workers runs (at most 60 s)
    local master old p i left
    master=$(cat "$dir/logs/nginx.pid")
    old=$(workers "$master")
    nginx -p "$dir/" -c conf/nginx.conf -t -q
    kill -HUP "$master"
    for ((i = 0; i < 600; i++)); do
        left=0
        for p in $old; do [ -e "/proc/$p" ] && left=1; done
        [ "$left" = 0 ] && return 0
        sleep 0.1
    done
    echo "front.sh: old front workers still running after 60 s" >&2
    return 1
}

set_target() { # ip on|off
    exec 9>"$dir/targets.lock"
    flock 9
    grep -q "^$1 " "$dir/targets" || {
        echo "front.sh: $1 is not a target of this front" >&2
        exit 2
    }
    sed -i "s/^$1 .*/$1 $2/" "$dir/targets"
    render
    reload_and_drain
}

case "$cmd" in
init)
    port=$1
    shift
    : >"$dir/targets"
    for ip in "$@"; do echo "$ip on" >>"$dir/targets"; done
    render
    cat >"$dir/conf/nginx.conf" <<CONF
# The load balancer's stand-in: nginx -p $dir/ -c conf/nginx.conf
worker_processes 2;
pid logs/nginx.pid;
error_log logs/error.log;
events { worker_connections 2048; }
http {
    log_format front '\$msec \$status "\$upstream_addr" "\$upstream_status" \$request_time';
    access_log logs/access.log front;
    client_body_temp_path temp/body;
    proxy_temp_path temp/proxy;
    fastcgi_temp_path temp/fastcgi;
    uwsgi_temp_path temp/uwsgi;
    scgi_temp_path temp/scgi;
    include $dir/conf/fleet.upstream.conf;
    server {
        listen 127.0.0.1:$port;
        location / {
            proxy_pass http://fleet;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_next_upstream error timeout http_502 http_503;
            proxy_next_upstream_tries 3;
            proxy_connect_timeout 2s;
            proxy_read_timeout 30s;
            add_header X-Fleet-Upstream \$upstream_addr always;
        }
    }
}
CONF
    ;;
deregister) set_target "$1" off ;;
register) set_target "$1" on ;;
*)
    echo "usage: front.sh init DIR PORT IP... | deregister DIR IP | register DIR IP" >&2
    exit 2
    ;;
esac
