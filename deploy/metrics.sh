#!/bin/sh
# Print /metrics of every gateway and of presence in a compose cluster, each
# line prefixed with its container name: a quick look without Prometheus.
#
#   deploy/metrics.sh                       # everything
#   deploy/metrics.sh | grep -E ' chinwag_(ready|connections) '
#
# Scraped from inside each container (its HTTP port, CHINWAG_HTTP_PORT=9100),
# because the compose file publishes no gateway port.  Environment: DOCKER
# (default docker), COMPOSE_PROJECT_NAME (default chinwag).
set -eu

DOCKER=${DOCKER:-docker}
PROJECT=${COMPOSE_PROJECT_NAME:-chinwag}
SCRAPE='import os, urllib.request; print(urllib.request.urlopen("http://127.0.0.1:%s/metrics" % os.environ["CHINWAG_HTTP_PORT"], timeout=5).read().decode(), end="")'

found=0
for service in gateway presence; do
    for id in $($DOCKER ps -q --filter "label=com.docker.compose.project=$PROJECT" \
                  --filter "label=com.docker.compose.service=$service"); do
        name=$($DOCKER inspect -f '{{.Name}}' "$id" | sed 's#^/##')
        $DOCKER exec "$id" python -c "$SCRAPE" | sed "s#^#$name #"
        found=$((found + 1))
    done
done
[ "$found" -gt 0 ] || { echo "metrics: no gateway or presence running in project $PROJECT" >&2; exit 1; }
