#!/usr/bin/env bash
# Start a real 3-primary Redis Cluster on free loopback ports (installs redis with apt if missing).
# Prints REDIS_CLUSTER_URL=... and runs until Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1; then
  echo "redis-server/redis-cli missing; installing with apt-get" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server redis-tools >/dev/null
fi
exec "${PYTHON:-python3}" -m devtools.redis_servers cluster "$@"
