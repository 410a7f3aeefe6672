#!/usr/bin/env bash
# Start a real redis-server on a free loopback port (installs it with apt if missing).
# Prints REDIS_URL=... and runs until Ctrl-C. Extra arguments go to `python -m cachebus.testing redis`.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v redis-server >/dev/null 2>&1; then
  echo "redis-server missing; installing with apt-get" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
fi
exec "${PYTHON:-python3}" -m cachebus.testing redis "$@"
