"""The worker's lifecycle on real processes (``python -m worker.cli worker``, as a
user runs it), real redis-servers and real Kafka brokers:

* SIGTERM during a Redis outage and during a Kafka outage: exit 0 (``EXIT_STOPPED``)
  well within Kubernetes' 30 s, nothing acknowledged that was not applied and
  audited, and everything applied after a restart;
* SIGTERM while the worker still waits for Kafka at startup;
* a malformed rules file: one line, exit 2, before any connection to Kafka;
* ``/livez`` and ``/readyz`` with Kafka up, down and back;
* every line a worker writes in an end-to-end run is one JSON object.

The times measured are printed (``-s``).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import pytest

from cachebus.keys import KeyScheme
from devtools.kafka_broker import LocalKafka
from devtools.redis_servers import RedisServer
from devtools.stack import LocalStack, WorkerProcess, by_event_id, document_event, settings_env
from worker.lifecycle import EXIT_CONFIG, EXIT_STOPPED
from worker.settings import WorkerSettings

GRACE_S = 30.0
"""Kubernetes' default terminationGracePeriodSeconds: the limit every stop must meet."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _settings(**overrides: Any) -> WorkerSettings:
    uid = uuid.uuid4().hex[:8]
    return WorkerSettings(
        prefix=f"l{uid}",
        events_topic=f"events-{uid}",
        audit_topic=f"audit-{uid}",
        dlq_topic=f"dlq-{uid}",
        consumer_group=f"group-{uid}",
        batch_wait_ms=10,
        **overrides,
    )


def _stream(docs: int, versions: int) -> list[dict[str, Any]]:
    return [
        document_event("created" if v == 1 else "updated", f"doc-{d}", v, collection=f"c{d % 3}")
        for v in range(1, versions + 1)
        for d in range(docs)
    ]


def _sigterm(worker: WorkerProcess | subprocess.Popen[bytes]) -> tuple[int, float]:
    """SIGTERM; (exit code, seconds until the process was gone). Fails after GRACE_S."""
    proc = worker.proc if isinstance(worker, WorkerProcess) else worker
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        code = proc.wait(GRACE_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)
        pytest.fail(f"worker still running {GRACE_S:.0f} s after SIGTERM")
    return code, time.monotonic() - started


def _get(port: int, path: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _until(what: str, check: Callable[[], Any], timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout:.0f} s")
        time.sleep(0.2)


def _log_has(worker: WorkerProcess, text: str) -> bool:
    return text in worker.log_path.read_text("utf-8", "replace")


def _json_lines(path: Path) -> list[dict[str, Any]]:
    """Every line of a worker's combined stdout+stderr, each parsed as JSON (fails
    on the first line that is not one JSON object)."""
    records = []
    for number, line in enumerate(path.read_text("utf-8").splitlines(), 1):
        try:
            record = json.loads(line)
        except ValueError:
            pytest.fail(f"{path.name} line {number} is not JSON: {line[:300]!r}")
        assert isinstance(record, dict), f"line {number}: {line[:300]!r}"
        assert {"event", "level", "timestamp"} <= set(record), f"line {number}: {record}"
        records.append(record)
    return records


async def _committed(settings: WorkerSettings, partitions: int) -> dict[int, int]:
    """The consumer group's committed offset per partition (absent: none)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=settings.consumer_group,
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        out = {}
        for p in range(partitions):
            offset = await consumer.committed(TopicPartition(settings.events_topic, p))
            if offset is not None:
                out[p] = offset
        return out
    finally:
        await consumer.stop()


def _spawn(settings: WorkerSettings, log_path: Path, **env: str) -> subprocess.Popen[bytes]:
    """``python -m worker.cli worker`` with these settings, output to ``log_path``."""
    full = {**os.environ, **settings_env(settings), "PYTHONUNBUFFERED": "1", **env}
    full.setdefault("CACHEBUS_MONITOR_SAMPLE_RATE", "0")
    with log_path.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "worker.cli", "worker"],
            env=full, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )


# --------------------------------------------------------------------------- Redis outage


@pytest.fixture
def durable_redis() -> Iterator[RedisServer]:
    """A redis-server of this test's own (append-only, fsync always) to stop and start."""
    server = RedisServer(use_env=False, extra_config=["appendonly yes", "appendfsync always"])
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_sigterm_during_redis_outage_acks_nothing_unapplied_and_restart_applies_all(
    durable_redis: RedisServer, kafka_broker: LocalKafka, tmp_path: Path
) -> None:
    """Redis dies mid-stream; the worker retries a batch; SIGTERM: it exits 0 within
    the grace period, its committed offsets cover only audited events, and a worker
    started after Redis is back applies and audits every event."""
    settings = _settings(redis_timeout=0.5)
    with LocalStack(
        redis=durable_redis, kafka=kafka_broker, settings=settings, log_dir=tmp_path
    ) as stack:
        docs, versions = 40, 5
        events = _stream(docs, versions)
        worker = stack.start_worker(batch_max=20)
        stack.publish(events[:80])
        stack.read_audits(count=80)
        durable_redis.kill()  # gone, its append-only file stays
        stack.publish(events[80:])
        _until("a batch retried against the dead Redis",
               lambda: _log_has(worker, "redis unavailable; retrying batch"))
        time.sleep(1.0)  # a few retries
        audited_before = stack.count_records(stack.settings.audit_topic)

        code, seconds = _sigterm(worker)
        print(f"\nSIGTERM during a Redis outage: exit {code} after {seconds:.2f} s")
        assert code == EXIT_STOPPED, worker.log_tail()
        assert seconds < GRACE_S
        assert _log_has(worker, "stopping with unfinished work")
        _json_lines(worker.log_path)  # no plain-text traceback or table
        assert stack.count_records(stack.settings.audit_topic) == audited_before < len(events)

        # Nothing acknowledged that was not applied: every offset below a partition's
        # committed offset has an audit (audits are delivered before the ack).
        audits = stack.read_audits(count=audited_before)
        audited = {(a["source"]["partition"], a["source"]["offset"]) for a in audits}
        committed = asyncio.run(_committed(stack.settings, stack.settings.topic_partitions))
        assert sum(committed.values()) < len(events)
        for partition, offset in committed.items():
            missing = [o for o in range(offset) if (partition, o) not in audited]
            assert missing == [], f"partition {partition}: committed {offset}, unaudited {missing}"

        durable_redis.start()  # back, same port, data from the append-only file
        stack.start_worker("w2", batch_max=20)
        wanted = {e["event_id"] for e in events}
        audits = stack.read_audits(
            count=len(events), timeout=90,
            until=lambda got: wanted <= {a["event_id"] for a in got},
        )
        grouped = by_event_id(audits)
        assert all(
            "applied" in [a["outcome"] for a in grouped[e["event_id"]]] for e in events
        ), "an event has no applied audit"
        client = durable_redis.client()
        keys = KeyScheme(stack.settings.prefix)
        marks = cast(list[bytes | None], client.mget([keys.hwm(f"doc-{d}") for d in range(docs)]))
        client.close()
        assert all(m is not None and int(m.split(b":")[0]) == versions for m in marks)


# --------------------------------------------------------------------------- Kafka outage


def test_probes_and_sigterm_during_kafka_outage(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """/livez and /readyz with the broker up, killed, back and killed again; then
    SIGTERM with the broker down: exit 0 within the grace period."""
    broker = LocalKafka()
    broker.start()
    try:
        with LocalStack(
            redis=redis_server, kafka=broker, settings=_settings(), log_dir=tmp_path
        ) as stack:
            worker = stack.start_worker()
            port = worker.settings.web_port
            stack.publish(_stream(10, 1))
            stack.read_audits(count=10)

            _, body = _until("ready", lambda: (r := _get(port, "/readyz"))[0] == 200 and r)
            assert body["ready"] and body["kafka_ok"] and body["redis_ok"]
            assert body["partitions"] >= 1 and body["events_processed"] == 10
            assert _get(port, "/health")[0] == 200  # /health answers as /readyz
            assert _get(port, "/livez")[0] == 200

            broker.kill()  # the broker is gone
            down = _until(
                "readyz 503 for Kafka",
                lambda: (r := _get(port, "/readyz"))[0] == 503 and r[1], timeout=30,
            )
            assert not down["ready"] and not down["kafka_ok"] and down["redis_ok"]
            assert any(r.startswith("kafka:") for r in down["reasons"]), down
            assert _get(port, "/health")[0] == 503
            live_status, live = _get(port, "/livez")
            assert live_status == 200 and live["status"] == "alive"

            broker.start()  # back: same port and data
            _until("readyz 200 after Kafka is back",
                   lambda: _get(port, "/readyz")[0] == 200, timeout=90)

            broker.kill()
            _until("readyz 503 again", lambda: _get(port, "/readyz")[0] == 503, timeout=30)
            code, seconds = _sigterm(worker)
            print(f"\nSIGTERM during a Kafka outage: exit {code} after {seconds:.2f} s")
            assert code == EXIT_STOPPED, worker.log_tail()
            assert seconds < GRACE_S
            lines = _json_lines(worker.log_path)  # no plain-text traceback or table
            # aiokafka retries a dead broker every 100 ms, an ERROR each: rate-limited.
            errors = [r for r in lines if r["level"] == "error"]
            assert len(errors) < 60, f"{len(errors)} error lines"
    finally:
        broker.stop()


def test_sigterm_while_waiting_for_kafka_at_startup(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """No broker at the bootstrap address: the worker retries with one line per
    attempt and a growing, bounded wait, answers /livez 200 and /readyz 503
    meanwhile, and exits 0 at once on SIGTERM."""
    with socket.socket() as closed:  # a port nothing listens on
        closed.bind(("127.0.0.1", 0))
        bootstrap = f"127.0.0.1:{closed.getsockname()[1]}"
    port = _free_port()
    settings = _settings(
        kafka_bootstrap=bootstrap, redis_url=redis_server.url, web_port=port, worker_id="early"
    )
    log_path = tmp_path / "early.log"
    proc = _spawn(settings, log_path)
    try:
        def attempts() -> list[dict[str, Any]]:
            lines = [json.loads(x) for x in log_path.read_text("utf-8").splitlines()]
            return [x for x in lines if x["event"] == "kafka unavailable; retrying"]

        tries = _until("three attempts", lambda: len(a := attempts()) >= 3 and a, timeout=60)
        assert [t["attempt"] for t in tries[:3]] == [1, 2, 3]
        assert [t["retry_in_s"] for t in tries[:3]] == [0.5, 1.0, 2.0]
        assert all(bootstrap in t["bootstrap"] and t["error"] for t in tries)
        assert _get(port, "/livez")[0] == 200
        status, body = _get(port, "/readyz")
        assert status == 503 and body["phase"] == "waiting_for_kafka"
        assert any("kafka" in r for r in body["reasons"]), body

        code, seconds = _sigterm(proc)
        print(f"\nSIGTERM while waiting for Kafka at startup: exit {code} after {seconds:.2f} s")
        assert code == EXIT_STOPPED
        assert seconds < 5.0
        records = _json_lines(log_path)
        assert records[-1]["event"] == "worker stopped"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# --------------------------------------------------------------------------- configuration


def test_malformed_rules_file_one_line_before_any_kafka_connection(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """A rules file that is not TOML: one line naming it, exit 2, and not a single
    connection to the Kafka bootstrap address (a socket of ours listens there)."""
    rules = tmp_path / "rules.toml"
    rules.write_text("[created\nbump_collection = true\n", encoding="utf-8")
    with socket.socket() as kafka:
        kafka.bind(("127.0.0.1", 0))
        kafka.listen(8)
        kafka.setblocking(False)
        settings = _settings(
            kafka_bootstrap=f"127.0.0.1:{kafka.getsockname()[1]}",
            redis_url=redis_server.url,
            rules_file=str(rules),
            web_port=_free_port(),
        )
        env = {**os.environ, **settings_env(settings)}
        started = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-m", "worker.cli", "worker"],
            env=env, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
        )
        seconds = time.monotonic() - started
        with pytest.raises(BlockingIOError):
            kafka.accept()  # nobody connected
    lines = [x for x in (done.stdout + done.stderr).splitlines() if x.strip()]
    print(f"\nmalformed rules file: exit {done.returncode} after {seconds:.2f} s: {lines}")
    assert done.returncode == EXIT_CONFIG
    assert len(lines) == 1, lines
    assert str(rules) in lines[0] and "Traceback" not in lines[0]


# --------------------------------------------------------------------------- logs


def test_every_log_line_of_an_end_to_end_run_is_json(
    stack: LocalStack, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Start, process (applied and dead-lettered events), probes, SIGTERM: every line
    the worker wrote (stdout and stderr) is one JSON object; ResourceWarnings are
    shown and there is none (no "Unclosed ..."); the coordinator lookup retried on
    a fresh group is a warning, not an error. faust's data directory is
    CACHEBUS_DATA_DIR."""
    monkeypatch.setenv("PYTHONWARNINGS", "default")  # ResourceWarning shown, as JSON
    data_dir = tmp_path / "faust-data"
    monkeypatch.setenv("CACHEBUS_DATA_DIR", str(data_dir))
    worker = stack.start_worker()
    port = worker.settings.web_port
    events = _stream(20, 2)
    stack.publish([*events, b"not json"], key=None)
    stack.read_audits(count=len(events) + 1)
    stack.read_dead_letters(count=1)
    assert _get(port, "/readyz")[0] == 200
    assert _get(port, "/livez")[0] == 200
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        assert b"cachebus_events_total" in resp.read()

    code, seconds = _sigterm(worker)
    records = _json_lines(worker.log_path)
    print(f"\nend-to-end run: {len(records)} log lines, all JSON; exit {code}, {seconds:.2f} s")
    assert code == EXIT_STOPPED
    assert len(records) > 20
    text = worker.log_path.read_text("utf-8")
    assert "Unclosed" not in text and "unclosed" not in text and "Traceback" not in text
    events_logged = [r["event"] for r in records]
    assert "[^Worker]: Ready" in events_logged and "worker ready" in events_logged
    assert "event dead-lettered" in events_logged
    assert events_logged[-1] in ("[^Worker]: Closing event loop", "worker stopped")
    assert "worker stopped" in events_logged
    coordinator = [r for r in records if r["event"].startswith("Group Coordinator Request failed")]
    assert all(r["level"] == "warning" for r in coordinator), coordinator
    levels = {r["level"] for r in records}
    assert levels <= {"debug", "info", "warning", "error", "critical"}, levels
    configured = next(r for r in records if r["event"] == "worker configured")
    assert configured["data_dir"] == str(data_dir) and data_dir.is_dir()


def test_data_dir_is_the_same_on_every_start(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without CACHEBUS_DATA_DIR: <tmp>/cachebus-faust-<worker id or host name>, never
    the pid (which made a new directory per restart)."""
    import tempfile

    from worker.lifecycle import data_dir

    monkeypatch.delenv("CACHEBUS_DATA_DIR", raising=False)
    base = Path(tempfile.gettempdir())
    assert data_dir(WorkerSettings(worker_id="w-1")) == base / "cachebus-faust-w-1"
    assert data_dir(WorkerSettings(worker_id="a/b c")) == base / "cachebus-faust-a_b_c"
    assert data_dir(WorkerSettings()) == base / f"cachebus-faust-{socket.gethostname()}"
    monkeypatch.setenv("CACHEBUS_DATA_DIR", "/var/lib/cachebus")
    assert data_dir(WorkerSettings(worker_id="w-1")) == Path("/var/lib/cachebus")
