#!/bin/sh
# Restart (or upgrade) every gateway of a running compose cluster, one at a
# time, without losing or doubling a message.  deploy/README.md explains it.
#
#   deploy/rolling-restart.sh            # restart each gateway in place
#   deploy/rolling-restart.sh replace    # remove and recreate each one: after
#                                        # `docker compose build`, an upgrade
#
# Each gateway is stopped with SIGTERM: it turns unready (HAProxy sends it no
# new clients), closes its sockets with 1001 so clients resume on the other
# gateways, and exits.  The next one is only touched once HAProxy reports
# every gateway UP again, so there are always N-1 gateways serving.
#
# Environment: DOCKER (default docker), COMPOSE (default "docker compose"),
# COMPOSE_PROJECT_NAME (default chinwag), WAIT (seconds per step, default 120).
# tests/deploy runs it with DOCKER=podman and COMPOSE=podman-compose.
set -eu

DOCKER=${DOCKER:-docker}
COMPOSE=${COMPOSE:-docker compose}
PROJECT=${COMPOSE_PROJECT_NAME:-chinwag}
WAIT=${WAIT:-120}
MODE=${1:-restart}

case "$MODE" in restart|replace) ;; *) echo "usage: $0 [restart|replace]" >&2; exit 2;; esac

service_ids() {
    $DOCKER ps -q --filter "label=com.docker.compose.project=$PROJECT" \
        --filter "label=com.docker.compose.service=$1"
}

# Gateways HAProxy reports UP (its stats CSV: column 1 proxy, 2 server, 18 status).
up_count() {
    $DOCKER exec "$LB" wget -q -O - 'http://127.0.0.1:8404/stats;csv' 2>/dev/null \
        | awk -F, '$1 == "gateways" && $2 != "BACKEND" && $18 == "UP"' | wc -l
}

# wait_for DESCRIPTION TEST...: poll TEST once a second, give up after $WAIT s.
wait_for() {
    what=$1; shift
    deadline=$(( $(date +%s) + WAIT ))
    until "$@"; do
        if [ "$(date +%s)" -ge "$deadline" ]; then
            echo "rolling-restart: gave up after ${WAIT}s waiting for $what" >&2
            exit 1
        fi
        sleep 1
    done
}
all_up() { [ "$(up_count)" -eq "$N" ]; }
one_down() { [ "$(up_count)" -lt "$N" ]; }

LB=$(service_ids lb | head -n 1)
[ -n "$LB" ] || { echo "rolling-restart: no running lb in project $PROJECT" >&2; exit 1; }
GATEWAYS=$(service_ids gateway)
N=$(echo "$GATEWAYS" | grep -c . || true)
[ "$N" -ge 2 ] || { echo "rolling-restart: needs at least 2 running gateways, found $N" >&2; exit 1; }
wait_for "all $N gateways UP before starting" all_up

for id in $GATEWAYS; do
    echo "rolling-restart: $MODE gateway ${id}"
    $DOCKER stop -t 30 "$id" >/dev/null
    wait_for "HAProxy to take ${id} out" one_down
    if [ "$MODE" = replace ]; then
        $DOCKER rm "$id" >/dev/null
        # shellcheck disable=SC2086  # COMPOSE is a command with arguments
        $COMPOSE up -d --no-deps --no-recreate --no-build --scale "gateway=$N" gateway >/dev/null
    else
        $DOCKER start "$id" >/dev/null
    fi
    wait_for "all $N gateways UP again" all_up
done
echo "rolling-restart: done, $N gateways UP"
