#!/bin/sh
# Back up and restore the Redis of a compose cluster: all of Chinwag's state
# (accounts, history, inboxes, groups).  deploy/README.md explains it.
#
#   deploy/redis-backup.sh backup  > chinwag-redis.tar   # while running
#   deploy/redis-backup.sh restore < chinwag-redis.tar   # a rollback: see below
#
# backup: compacts the AOF (BGREWRITEAOF), waits for the rewrite to finish,
#   then streams /data/appendonlydir (base RDB + incremental AOF + manifest)
#   as a tar to stdout.  Writes that land during the copy may be cut at the
#   end of the incremental file; Redis loads such a truncated tail anyway
#   (aof-load-truncated, on by default) and drops only that last command.
# restore: stops the gateways, presence and Redis, replaces the volume's
#   appendonlydir with the tar from stdin, and starts them again.  Everything
#   written since the backup is gone, by design; connected clients are cut
#   and reconnect (resume positions newer than the backup find nothing).
#
# Environment: DOCKER (default docker), COMPOSE_PROJECT_NAME (default chinwag),
# WAIT (seconds, default 120).  tests/deploy runs it with DOCKER=podman.
set -eu

DOCKER=${DOCKER:-docker}
PROJECT=${COMPOSE_PROJECT_NAME:-chinwag}
WAIT=${WAIT:-120}

service_ids() {
    $DOCKER ps -a -q --filter "label=com.docker.compose.project=$PROJECT" \
        --filter "label=com.docker.compose.service=$1"
}

REDIS=$(service_ids redis | head -n 1)
[ -n "$REDIS" ] || { echo "redis-backup: no redis container in project $PROJECT" >&2; exit 1; }

case "${1:-}" in
backup)
    $DOCKER exec "$REDIS" redis-cli BGREWRITEAOF >&2
    deadline=$(( $(date +%s) + WAIT ))
    until $DOCKER exec "$REDIS" redis-cli INFO persistence \
            | grep -q '^aof_rewrite_in_progress:0'; do
        [ "$(date +%s)" -lt "$deadline" ] || { echo "redis-backup: AOF rewrite still running" >&2; exit 1; }
        sleep 1
    done
    # Also wait out a rewrite that was only scheduled (another one was running).
    until $DOCKER exec "$REDIS" redis-cli INFO persistence | grep -q '^aof_rewrite_scheduled:0'; do
        [ "$(date +%s)" -lt "$deadline" ] || { echo "redis-backup: AOF rewrite still scheduled" >&2; exit 1; }
        sleep 1
    done
    $DOCKER exec "$REDIS" tar -C /data -c appendonlydir
    ;;
restore)
    VOLUME=$($DOCKER inspect -f '{{range .Mounts}}{{if eq .Destination "/data"}}{{.Name}}{{end}}{{end}}' "$REDIS")
    IMAGE=$($DOCKER inspect -f '{{.Config.Image}}' "$REDIS")
    [ -n "$VOLUME" ] || { echo "redis-backup: redis has no /data volume" >&2; exit 1; }
    STOPPED="$(service_ids gateway) $(service_ids presence)"
    # shellcheck disable=SC2086  # lists of container ids
    $DOCKER stop -t 30 $STOPPED >&2
    $DOCKER stop -t 30 "$REDIS" >&2
    # The image's own user and tar; the stream on stdin is the backup.
    $DOCKER run --rm -i -v "$VOLUME:/data" "$IMAGE" \
        sh -c 'rm -rf /data/appendonlydir && tar -C /data -x -f -' >&2
    $DOCKER start "$REDIS" >&2
    # shellcheck disable=SC2086
    $DOCKER start $STOPPED >&2
    ;;
*)
    echo "usage: $0 backup > FILE | restore < FILE" >&2
    exit 2
    ;;
esac
