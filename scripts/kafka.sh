#!/usr/bin/env bash
# Start a real single-node Apache Kafka (KRaft) on loopback from Maven Central jars (cached in
# ~/.cache/cachebus; KAFKA_HOME's jars if set). Prints KAFKA_BOOTSTRAP=... and runs until Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-python3}" -m worker.testing kafka run "$@"
