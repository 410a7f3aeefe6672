"""The framework's ceiling for the worker: how fast faust, configured exactly as the
worker is (:func:`worker.app.faust_app`: same consumer settings, ``noack_take`` with the
worker's batch size and window, manual acks), hands a backlog of events to an agent that
does nothing but acknowledge them.  No parsing, no Redis, no audits: whatever the worker
does per event comes on top of this, in the same Python thread.

``run`` pre-produces the events to a topic of their own, then runs this module as a
subprocess (``python -m bench.faust_ceiling``, settings from ``CACHEBUS_*``, the event
count from ``CEILING_EVENTS``), which prints one JSON line: events, seconds from the
first batch received to the last event acknowledged, and the rate.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from typing import Any

from worker.settings import WorkerSettings

from .client_layers import BenchError

RESULT = "CEILING "


def _agent_main() -> None:
    import faust

    from worker.app import faust_app

    settings = WorkerSettings.from_env()
    expected = int(os.environ["CEILING_EVENTS"])
    app, topic = faust_app(settings, f"ceiling-{os.getpid()}")

    @app.agent(topic, concurrency=1)
    async def drain(stream: Any) -> None:
        manual = stream.noack()
        first = 0.0
        count = 0
        async for events in manual.noack_take(settings.batch_max, settings.batch_wait_ms / 1000):
            first = first or time.perf_counter()
            for event in events:
                await manual.ack(event)
            count += len(events)
            if count >= expected:
                seconds = time.perf_counter() - first
                line = {"events": count, "seconds": round(seconds, 3)}
                line["per_s"] = round(count / seconds, 1)
                print(RESULT + json.dumps(line), flush=True)
                os._exit(0)

    faust.Worker(app, loglevel="WARNING", quiet=True).execute_from_commandline()


async def _produce(settings: WorkerSettings, events: list[tuple[bytes, bytes]]) -> None:
    from aiokafka import AIOKafkaProducer

    from worker.kafka import client_config, ensure_topics

    await ensure_topics(settings)
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap,
        acks="all",
        linger_ms=5,
        max_batch_size=256 * 1024,
        **client_config(settings),
    )
    await producer.start()
    try:
        futures = [await producer.send(settings.events_topic, v, key=k) for k, v in events]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


def run(base: WorkerSettings, events: list[tuple[bytes, bytes]], runs: int) -> dict[str, Any]:
    """Produce ``events`` to a fresh topic once; drain it ``runs`` times, each with a new
    consumer group (so each run reads the whole backlog)."""
    from devtools.stack import settings_env

    topic = f"{base.events_topic}.ceiling"
    settings = base.with_(
        events_topic=topic, audit_topic=f"{topic}.audit", dlq_topic=f"{topic}.dlq"
    )
    asyncio.run(_produce(settings, events))
    results = []
    for i in range(runs):
        group = f"{base.consumer_group}-ceiling-{os.getpid()}-{i}"
        env = {
            **os.environ,
            **settings_env(settings.with_(consumer_group=group, worker_id=group)),
            "CEILING_EVENTS": str(len(events)),
        }
        proc = subprocess.run(
            [sys.executable, "-m", "bench.faust_ceiling", "worker"],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        found = [
            line.split(RESULT, 1)[1]
            for line in (proc.stdout + proc.stderr).splitlines()
            if RESULT in line
        ]
        if not found:
            raise BenchError(f"faust ceiling run {i + 1} printed no result:\n{proc.stderr[-2000:]}")
        results.append(json.loads(found[-1]))
    rates = [r["per_s"] for r in results]
    return {"events": len(events), "runs": results, "best_per_s": max(rates)}


if __name__ == "__main__":
    _agent_main()
