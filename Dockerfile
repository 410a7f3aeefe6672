# cachebus invalidation worker.
#   docker build -t cachebus .
#   docker run --rm --init -e CACHEBUS_REDIS_URL=redis://redis:6379/0 \
#     -e CACHEBUS_KAFKA_BOOTSTRAP=kafka:9092 cachebus            # = cachebus worker

# Pinned (Python patch release and Debian release): a rebuild gets the same base
# until this line changes. Bump it deliberately, e.g. for a security release.
ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm

# ---- build: install the project and its worker extra into a virtualenv ----
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH="/opt/venv/bin:${PATH}"
WORKDIR /src
# Only what the wheel needs (see [tool.hatch.build] in pyproject.toml); the
# schemas are packaged into the wheel as worker/schemas.
COPY pyproject.toml README.md ./
COPY cachebus/ cachebus/
COPY worker/ worker/
COPY schemas/ schemas/
RUN pip install ".[worker]"

# ---- runtime ----
FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="cachebus" \
      org.opencontainers.image.description="Event-driven cache invalidation worker (Kafka -> Redis)" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PATH="/opt/venv/bin:${PATH}" \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
# Unprivileged user; its home is the working directory and the data directory.
RUN groupadd --system --gid 10001 cachebus \
 && useradd --system --uid 10001 --gid cachebus --home-dir /var/lib/cachebus \
        --create-home --shell /usr/sbin/nologin cachebus
COPY --from=build /opt/venv /opt/venv
# faust's data directory is CACHEBUS_DATA_DIR: this one directory on every start and
# restart of the container (no new directory per start). faust keeps nothing durable
# there (the worker's state is in Redis and Kafka), so no volume is needed.
ENV CACHEBUS_DATA_DIR=/var/lib/cachebus
USER 10001:10001
WORKDIR /var/lib/cachebus
# Liveness, readiness and Prometheus metrics (CACHEBUS_WEB_PORT).
EXPOSE 6066
# Docker's health status follows liveness (/livez: the process and its event loop
# answer; never Kafka or Redis, so an outage does not mark the worker for restart).
# Readiness is GET /readyz (docker-compose.yml uses it). No curl in the slim image.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/livez' % (os.environ.get('CACHEBUS_WEB_PORT') or '6066'), timeout=4)"]
ENTRYPOINT ["cachebus"]
CMD ["worker"]
