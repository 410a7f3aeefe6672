#!/usr/bin/env bash
# Start a real redis-server on a free loopback port (installs it with apt if missing) and
# run until Ctrl-C. Its first line of output is
#   export CACHEBUS_REDIS_URL=redis://127.0.0.1:<port>/0
# the variable the cachebus CLI and Settings.from_env() read: paste it into the shell that
# runs cachebus (or `eval "$(scripts/redis-server.sh | head -1)"` from a script that keeps
# the server running elsewhere). Extra arguments go to `python -m devtools.redis_servers redis`.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v redis-server >/dev/null 2>&1; then
  echo "redis-server missing; installing with apt-get" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
fi
# The server process stays this script's process (signals reach it); its REDIS_URL= line
# is rewritten on the way out.
exec "${PYTHON:-python3}" -u -m devtools.redis_servers redis "$@" \
  > >(sed -u 's/^REDIS_URL=/export CACHEBUS_REDIS_URL=/')
