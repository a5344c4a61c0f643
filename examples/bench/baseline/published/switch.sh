#!/usr/bin/env bash
# The published blue/green pattern (see SOURCE.md): switch_proxy, called by health.sh once the new release is
# healthy. It points $service_url at the idle port and reloads nginx: no `nginx -t` of its own, its exit code not
# checked, no check that the reload happened.
#
# Environment: SERVICE_URL_INC (original: /etc/nginx/conf.d/service-url.inc); NGINX_BIN, NGINX_PREFIX,
# NGINX_CONF (the private nginx; the original runs `sudo service nginx reload`).
here=$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")
# shellcheck source-path=SCRIPTDIR source=profile.sh
source "$here/profile.sh"

switch_proxy() {
    IDLE_PORT=$(find_idle_port)

    echo "> switching nginx to port $IDLE_PORT"
    echo "set \$service_url http://127.0.0.1:${IDLE_PORT};" | tee "$SERVICE_URL_INC"

    echo "> reloading nginx"
    "$NGINX_BIN" -p "$NGINX_PREFIX" -c "$NGINX_CONF" -s reload
}
