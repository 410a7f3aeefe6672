"""What the local Kafka broker process needs around it: fast single-node defaults, a
cluster id, free ports, properties files, its log4j2 config and error lines.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import signal
import socket
import uuid
from pathlib import Path

# Broker settings that make a throwaway single node fast to start and usable by small tests.
_FAST_DEFAULTS: dict[str, str] = {
    "num.partitions": "1",
    "default.replication.factor": "1",
    "min.insync.replicas": "1",
    "auto.create.topics.enable": "true",
    "offsets.topic.replication.factor": "1",
    # Fewer internal partitions: __consumer_offsets is created on the first group join.
    "offsets.topic.num.partitions": "6",
    "transaction.state.log.replication.factor": "1",
    "transaction.state.log.min.isr": "1",
    "transaction.state.log.num.partitions": "4",
    "share.coordinator.state.topic.replication.factor": "1",
    "share.coordinator.state.topic.min.isr": "1",
    # Without this, the first consumer group waits 3 s before its first rebalance.
    "group.initial.rebalance.delay.ms": "0",
    # The machine is small; the defaults (3 network + 8 io threads) only cost memory here.
    "num.network.threads": "2",
    "num.io.threads": "4",
    "background.threads": "4",
    "log.cleaner.threads": "1",
    "num.recovery.threads.per.data.dir": "1",
    # After kill() the restarted controller still holds the dead incarnation's registration
    # and refuses the new one until that session expires (9 s by default): keep it short.
    # 6 missed heartbeats on loopback is still far from a spurious fence.
    "broker.heartbeat.interval.ms": "500",
    "broker.session.timeout.ms": "3000",
}


def _free_ports(count: int) -> list[int]:
    # Hold every socket open until all are picked so the ports are distinct.
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _new_cluster_id() -> str:
    """A Kafka-valid cluster id: base64url of a random UUID, 22 chars, no padding."""
    while True:
        raw = uuid.uuid4().bytes
        text = base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")
        # Kafka's own generator rejects ids starting with '-' (they parse as CLI flags).
        if not text.startswith("-"):
            return text


def _read_properties(path: Path) -> dict[str, str]:
    props: dict[str, str] = {}
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return props
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", "!")) or "=" not in line:
            continue
        key, _, value = line.partition("=")
        props[key.strip()] = value.strip()
    return props


def _set_pdeathsig() -> None:  # pragma: no cover - runs in the forked child
    # If the Python process dies hard (SIGKILL, crash), take the broker down with it instead
    # of leaking a JVM that holds the ports. 1 == PR_SET_PDEATHSIG.
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)


def _error_lines(path: Path, limit: int = 5) -> list[str]:
    found: list[str] = []
    try:
        with path.open("r", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if "] ERROR " in line or "] FATAL " in line:
                    found.append(line.rstrip()[:500])
                    if len(found) >= limit:
                        break
    except OSError:
        pass
    return found


def _int_or_none(text: str | None) -> int | None:
    try:
        return int(text) if text else None
    except ValueError:
        return None


_LOG4J2_TEMPLATE = """\
# written by devtools.local_kafka.LocalKafka: everything goes to one file in the data dir.
status = warn
name = cachebus-local-kafka
appender.file.type = File
appender.file.name = FILE
appender.file.fileName = {log_file}
appender.file.append = true
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = FILE
# The request logger and state-change logger are very chatty at INFO.
logger.request.name = kafka.request.logger
logger.request.level = WARN
logger.statechange.name = state.change.logger
logger.statechange.level = WARN
"""
