"""Document events for end-to-end runs: :func:`stream` (a fixed stream over many documents
with increasing versions), :class:`DocumentTraffic` (an endless one) and
:class:`SteadyProducer` (a thread that publishes at a steady rate).
"""

from __future__ import annotations

import asyncio
import json
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from devtools.stack import document_event
from worker.settings import WorkerSettings

# --------------------------------------------------------------------------- traffic


def stream(docs: int, versions: int, *, doc_prefix: str = "doc") -> list[dict[str, Any]]:
    """Events of ``docs`` documents, each with versions 1..``versions``
    (created, then updates), version-major so every document moves forward
    throughout the stream."""
    events = []
    for v in range(1, versions + 1):
        for d in range(docs):
            kind = "created" if v == 1 else "updated"
            events.append(document_event(kind, f"{doc_prefix}-{d}", v, collection=f"c{d % 3}"))
    return events


def last_versions(events: Iterable[Mapping[str, Any]]) -> dict[str, tuple[int, str]]:
    """``{doc_id: (last version, its event_id)}`` of a stream."""
    out: dict[str, tuple[int, str]] = {}
    for event in events:
        doc, version = str(event["doc_id"]), int(event["doc_version"])
        if doc not in out or version > out[doc][0]:
            out[doc] = (version, str(event["event_id"]))
    return out


class DocumentTraffic:
    """An endless, realistic event mix over ``docs`` documents: a document is
    created, updated (sometimes with chunk hashes, sometimes with tags),
    deleted now and then and created again; versions only go up."""

    def __init__(self, docs: int, *, doc_prefix: str = "soak", seed: int = 7) -> None:
        self.docs = docs
        self.doc_prefix = doc_prefix
        self._rng = random.Random(seed)
        self._version: dict[str, int] = {}
        self._deleted: set[str] = set()
        self.last: dict[str, tuple[int, str]] = {}
        """``{doc_id: (last version, its event_id)}`` of everything generated."""

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return self

    def __next__(self) -> dict[str, Any]:
        rng = self._rng
        doc = f"{self.doc_prefix}-{rng.randrange(self.docs)}"
        version = self._version.get(doc, 0) + 1
        self._version[doc] = version
        extra: dict[str, Any] = {}
        if version == 1 or doc in self._deleted:
            kind = "created"
            self._deleted.discard(doc)
        elif rng.random() < 0.08:
            kind = "deleted"
            self._deleted.add(doc)
        else:
            kind = "updated"
            if rng.random() < 0.5:
                extra["chunks"] = [
                    {"chunk_id": f"c{i}", "content_hash": f"sha256:{version}-{i % 3}"}
                    for i in range(rng.randrange(1, 6))
                ]
            if rng.random() < 0.2:
                extra["tags"] = [f"team-{rng.randrange(20)}"]
        number = int(doc.rsplit("-", 1)[1])
        event = document_event(kind, doc, version, collection=f"c{number % 5}", **extra)
        self.last[doc] = (version, event["event_id"])
        return event


class SteadyProducer(threading.Thread):
    """Publishes ``events`` (keyed by doc_id) at ``rate`` events/s from a thread
    with its own event loop and one producer, until the events run out or
    :meth:`stop` is called. ``published`` counts acknowledged events."""

    def __init__(
        self,
        settings: WorkerSettings,
        events: Iterable[Mapping[str, Any]],
        rate: float,
        *,
        tick: float = 0.05,
        on_sent: Callable[[Mapping[str, Any]], None] | None = None,
    ) -> None:
        super().__init__(name="steady-producer", daemon=True)
        self.settings = settings
        self._events = iter(events)
        self.rate = rate
        self.tick = tick
        self._on_sent = on_sent
        self._stop_event = threading.Event()
        self.published = 0
        self.error: BaseException | None = None
        self.started_at: float | None = None
        self.finished_at: float | None = None

    def stop(self) -> None:
        self._stop_event.set()

    def run(self) -> None:
        try:
            asyncio.run(self._run())
        except BaseException as exc:  # reported by finish()
            self.error = exc
        finally:
            self.finished_at = time.monotonic()

    def finish(self, timeout: float = 120.0) -> int:
        """Wait until everything is published; re-raise a producer error."""
        self.join(timeout)
        if self.is_alive():
            raise TimeoutError(f"producer still running after {timeout}s")
        if self.error is not None:
            raise RuntimeError(f"producer failed: {self.error!r}") from self.error
        return self.published

    async def _run(self) -> None:
        from aiokafka import AIOKafkaProducer

        from worker.kafka import client_config

        producer = AIOKafkaProducer(
            bootstrap_servers=self.settings.kafka_bootstrap,
            acks="all",
            linger_ms=5,
            **client_config(self.settings),
        )
        await producer.start()
        try:
            start = self.started_at = time.monotonic()
            sent = 0
            exhausted = False
            while not exhausted and not self._stop_event.is_set():
                due = int((time.monotonic() - start) * self.rate) - sent
                futures = []
                for _ in range(max(0, due)):
                    event = next(self._events, None)
                    if event is None:
                        exhausted = True
                        break
                    value = json.dumps(event).encode("utf-8")
                    key = str(event["doc_id"]).encode("utf-8")
                    futures.append(await producer.send(self.settings.events_topic, value, key=key))
                    if self._on_sent is not None:
                        self._on_sent(event)
                    sent += 1
                if futures:
                    await asyncio.gather(*futures)
                    self.published += len(futures)
                await asyncio.sleep(self.tick)
        finally:
            await producer.stop()
