#!/usr/bin/env bash
# Start a real single-node Apache Kafka (KRaft) on loopback from Maven Central jars (cached in
# ~/.cache/cachebus; KAFKA_HOME's jars if set) and run until Ctrl-C. Its first line of output is
#   export CACHEBUS_KAFKA_BOOTSTRAP=127.0.0.1:<port>
# the variable the cachebus CLI and Settings.from_env() read: paste it into the shell that
# runs cachebus.
set -euo pipefail
cd "$(dirname "$0")/.."
# The broker process stays this script's process (signals reach it); its KAFKA_BOOTSTRAP=
# line is rewritten on the way out.
exec "${PYTHON:-python3}" -u -m devtools.kafka_broker kafka run "$@" \
  > >(sed -u 's/^KAFKA_BOOTSTRAP=/export CACHEBUS_KAFKA_BOOTSTRAP=/')
