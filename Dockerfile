# cachebus invalidation worker.
#   docker build -t cachebus .
#   docker run --rm --init -e CACHEBUS_REDIS_URL=redis://redis:6379/0 \
#     -e CACHEBUS_KAFKA_BOOTSTRAP=kafka:9092 cachebus            # = cachebus worker

ARG PYTHON_IMAGE=python:3.11-slim

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
# Unprivileged user; its home is the working directory, so faust's local data
# directory (created relative to the working directory) is writable.
RUN groupadd --system --gid 10001 cachebus \
 && useradd --system --uid 10001 --gid cachebus --home-dir /var/lib/cachebus \
        --create-home --shell /usr/sbin/nologin cachebus
COPY --from=build /opt/venv /opt/venv
USER 10001:10001
WORKDIR /var/lib/cachebus
ENTRYPOINT ["cachebus"]
CMD ["worker"]
