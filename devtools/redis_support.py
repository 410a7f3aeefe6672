"""What the Redis server helpers share: the binaries, free loopback ports, log tails and a
raw RESP ping (so servers with ``requirepass`` or ACLs still count as up).
"""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

ENV_REDIS_SERVER_BIN = "CACHEBUS_REDIS_SERVER_BIN"
ENV_TEST_REDIS_URL = "CACHEBUS_TEST_REDIS_URL"

LOOPBACK = "127.0.0.1"
CLUSTER_SLOTS = 16384
# Redis Cluster's bus listens on data port + 10000 (unless cluster-port is set, which
# Redis < 7 does not support), so cluster node ports must leave room for it.
CLUSTER_BUS_PORT_OFFSET = 10000

_INSTALL_HINT = "install it with `apt-get install -y redis-server` (or `make setup`)"
_LOG_TAIL_LINES = 40


# --------------------------------------------------------------------------- binaries


def find_redis_server() -> str:
    """Return the absolute path of the ``redis-server`` binary.

    ``$CACHEBUS_REDIS_SERVER_BIN`` wins if set (it must point at an executable file);
    otherwise ``redis-server`` is looked up on ``PATH``.

    Raises:
        RuntimeError: if no usable binary is found.
    """
    override = os.environ.get(ENV_REDIS_SERVER_BIN)
    if override:
        if os.path.isfile(override) and os.access(override, os.X_OK):
            return os.path.abspath(override)
        resolved = shutil.which(override)
        if resolved:
            return resolved
        raise RuntimeError(
            f"redis-server not found: ${ENV_REDIS_SERVER_BIN}={override!r} is not an "
            f"executable; {_INSTALL_HINT}"
        )
    found = shutil.which("redis-server")
    if found is None:
        raise RuntimeError(f"redis-server not found; {_INSTALL_HINT}")
    return found


def find_redis_cli() -> str:
    """Return the absolute path of the ``redis-cli`` binary.

    Looks next to the ``redis-server`` override first (so a custom build's tools match
    each other), then on ``PATH``.

    Raises:
        RuntimeError: if no usable binary is found.
    """
    override = os.environ.get(ENV_REDIS_SERVER_BIN)
    if override:
        sibling = Path(find_redis_server()).with_name("redis-cli")
        if sibling.is_file() and os.access(sibling, os.X_OK):
            return str(sibling)
    found = shutil.which("redis-cli")
    if found is None:
        raise RuntimeError(f"redis-cli not found; {_INSTALL_HINT}")
    return found


# --------------------------------------------------------------------------- ports


def _port_is_free(port: int) -> bool:
    """True if we can bind a listening socket to 127.0.0.1:port right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # SO_REUSEADDR mirrors what redis-server does, so TIME_WAIT leftovers of a
        # previous server on the same port do not make us reject a perfectly usable port.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((LOOPBACK, port))
        except OSError:
            return False
    return True


def _free_port() -> int:
    """Ask the kernel for a currently free loopback port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def _free_cluster_ports(count: int) -> list[int]:
    """Pick ``count`` distinct ports whose cluster bus port (port + 10000) is free too."""
    chosen: list[int] = []
    for _ in range(count * 200):
        port = _free_port()
        if port + CLUSTER_BUS_PORT_OFFSET > 65535 or port in chosen:
            # Kernel ephemeral ports are usually 32768-60999: retry until the bus fits.
            continue
        bus = port + CLUSTER_BUS_PORT_OFFSET
        if bus in chosen or any(bus == p + CLUSTER_BUS_PORT_OFFSET for p in chosen):
            continue
        if _port_is_free(bus):
            chosen.append(port)
            if len(chosen) == count:
                return chosen
    raise RuntimeError(f"could not find {count} free port pairs (port, port+10000) on loopback")


# --------------------------------------------------------------------------- helpers


def _tail(path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"<no {path.name}>"
    return "\n".join(text.splitlines()[-lines:])


def _quote_conf(value: str) -> str:
    """Quote a value for redis.conf (paths may contain spaces)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _resp_ping(host: str, port: int, timeout: float) -> str | None:
    """Send a raw PING; return the first reply line, or None if nothing answered.

    Raw RESP instead of redis-py so that servers configured with ``requirepass`` or ACLs
    (which answer ``-NOAUTH``) still count as "up" without us knowing credentials.
    """
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(b"*1\r\n$4\r\nPING\r\n")
            data = b""
            while b"\r\n" not in data:
                chunk = sock.recv(256)
                if not chunk:
                    return None
                data += chunk
    except OSError:
        return None
    return data.split(b"\r\n", 1)[0].decode(errors="replace")
