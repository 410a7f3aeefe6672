"""Real, ephemeral Redis servers for tests (facade and command line).

Nothing here is mocked: every helper starts genuine ``redis-server`` processes on free
loopback ports, with persistence switched off, in throw-away directories.  That lets tests
exercise the things fakes get wrong -- restarts that lose data, hung servers, cluster
slot routing -- without any shared state between test runs.

Public API:

* :func:`find_redis_server` / :func:`find_redis_cli` -- locate the binaries.
* :class:`RedisServer` -- one standalone server (context manager), with ``restart()``,
  ``kill()``, ``suspend()`` / ``resume()`` to simulate failures.
* :class:`RedisClusterServers` -- an N-primary Redis Cluster (context manager).

Environment variables:

* ``CACHEBUS_REDIS_SERVER_BIN`` -- path to ``redis-server`` (``redis-cli`` is looked for
  next to it first).
* ``CACHEBUS_TEST_REDIS_URL`` -- use this existing server instead of starting one
  (:class:`RedisServer` then never starts or stops anything).

Command line (for manual testing / benchmarks)::

    python -m devtools.redis_servers redis      # prints REDIS_URL=redis://127.0.0.1:P/0
    python -m devtools.redis_servers cluster    # prints REDIS_CLUSTER_URL=redis://127.0.0.1:P/0

Both stay in the foreground until SIGINT/SIGTERM, then stop the servers.

The helpers depend only on the standard library and redis-py, so they can be imported
before (and independently of) the rest of cachebus. They live in
:mod:`devtools.redis_support`, :mod:`devtools.redis_server` and :mod:`devtools.redis_cluster`;
this module re-exports them.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from types import FrameType

from devtools.redis_cluster import RedisClusterServers
from devtools.redis_server import RedisServer
from devtools.redis_support import (
    CLUSTER_BUS_PORT_OFFSET,
    CLUSTER_SLOTS,
    ENV_REDIS_SERVER_BIN,
    ENV_TEST_REDIS_URL,
    LOOPBACK,
    find_redis_cli,
    find_redis_server,
)

__all__ = [
    "CLUSTER_BUS_PORT_OFFSET",
    "CLUSTER_SLOTS",
    "ENV_REDIS_SERVER_BIN",
    "ENV_TEST_REDIS_URL",
    "LOOPBACK",
    "RedisClusterServers",
    "RedisServer",
    "find_redis_cli",
    "find_redis_server",
    "main",
]


# --------------------------------------------------------------------------- CLI


@contextlib.contextmanager
def _until_signalled() -> Iterator[threading.Event]:
    """Install SIGINT/SIGTERM handlers that set the yielded event; restore them after."""
    event = threading.Event()

    def handler(signum: int, frame: FrameType | None) -> None:
        event.set()

    old = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield event
    finally:
        for sig, previous in old.items():
            signal.signal(sig, previous)


def _serve(servers: Sequence[RedisServer], stop: threading.Event) -> int:
    """Block until signalled (exit 0) or until a server dies on its own (exit 1)."""
    while not stop.wait(0.5):
        dead = [s for s in servers if not s.running]
        if dead:
            print(f"redis-server died:\n{dead[0].log_tail()}", file=sys.stderr, flush=True)
            return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m devtools.redis_servers``."""
    parser = argparse.ArgumentParser(
        prog="python -m devtools.redis_servers",
        description="Run ephemeral Redis servers in the foreground until SIGINT/SIGTERM.",
    )
    sub = parser.add_subparsers(dest="mode", required=True)
    p_redis = sub.add_parser("redis", help="one standalone server; prints REDIS_URL=...")
    p_redis.add_argument("--port", type=int, default=None, help="default: a free port")
    p_redis.add_argument(
        "--config", action="append", default=[], metavar="LINE", help="extra redis.conf line"
    )
    p_cluster = sub.add_parser("cluster", help="a Redis Cluster; prints REDIS_CLUSTER_URL=...")
    p_cluster.add_argument("--nodes", type=int, default=3, help="number of primaries (>= 3)")
    args = parser.parse_args(argv)

    with _until_signalled() as stop:
        try:
            if args.mode == "redis":
                # The CLI exists to start a server, so the external-URL override is ignored.
                server = RedisServer(port=args.port, extra_config=args.config, use_env=False)
                with server:
                    print(f"REDIS_URL={server.url}", flush=True)
                    return _serve([server], stop)
            with RedisClusterServers(nodes=args.nodes) as cluster:
                print(f"REDIS_CLUSTER_URL={cluster.url}", flush=True)
                print(
                    "REDIS_CLUSTER_NODES=" + ",".join(f"{LOOPBACK}:{p}" for p in cluster.ports),
                    flush=True,
                )
                return _serve(cluster.servers, stop)
        except RuntimeError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1


if __name__ == "__main__":
    sys.exit(main())
