"""Replay throughput next to the live worker's, on local Kafka and Redis.

``python -m bench.replay [--quick]`` (run by ``make bench``): publishes a stream
of document events, lets one live worker process it (live throughput: first
send to last audit), then wipes Redis and rebuilds its control state with
``worker.replay`` (replay throughput, with audits and as a dry run), and checks
that the rebuilt control state equals the live one. Writes bench/replay.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path

from cachebus.control import read_control_state
from cachebus.keys import KeyScheme
from devtools.stack import LocalStack, document_event
from worker.replay import ReplayOptions, replay
from worker.settings import WorkerSettings

HERE = Path(__file__).resolve().parent


def _events(n: int, docs: int) -> list[dict[str, object]]:
    out: list[dict[str, object]] = []
    for i in range(n):
        version = i // docs + 1
        kind = "created" if version == 1 else ("deleted" if i % 17 == 0 else "updated")
        out.append(document_event(kind, f"doc-{i % docs}", version, collection=f"c{i % 7}"))
    return out


def run(n: int, docs: int) -> dict[str, float | int | bool]:
    with LocalStack(settings=WorkerSettings(prefix="bench-replay", topic_partitions=6)) as stack:
        worker = stack.start_worker()
        events = _events(n, docs)
        print(f"replay bench: publishing {n} events over {docs} documents", flush=True)
        started = time.perf_counter()
        stack.publish(events)
        while stack.count_records(stack.settings.audit_topic) < n:
            time.sleep(0.05)
        live_s = time.perf_counter() - started
        worker.stop()
        client = stack.redis.client()
        keys = KeyScheme(stack.settings.prefix)
        live = read_control_state(client, keys)

        dry = asyncio.run(replay(stack.settings, ReplayOptions(dry_run=True, progress=False)))
        client.flushall()  # the benchmark's own server: Redis lost everything
        print("replay bench: Redis wiped; replaying", flush=True)
        full = asyncio.run(replay(stack.settings, ReplayOptions(progress=False)))
        rebuilt = read_control_state(client, keys)
        client.close()
        return {
            "events": n,
            "documents": docs,
            "live_events_per_s": round(n / live_s, 1),
            "replay_events_per_s": round(full.rate, 1),
            "replay_dry_run_events_per_s": round(dry.rate, 1),
            "replay_vs_live": round(full.rate / (n / live_s), 2),
            "control_state_equal": rebuilt == live,
        }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a small stream (CI smoke)")
    args = parser.parse_args()
    n, docs = (3_000, 300) if args.quick else (50_000, 5_000)
    result = run(n, docs)
    table = "\n".join(
        [
            "# Replay throughput (bench/replay.py)",
            "",
            f"{result['events']:,} events over {result['documents']:,} documents, 6 partitions, "
            "one live worker; then Redis wiped and rebuilt by `cachebus replay` (with audits).",
            "",
            "| measure | events/s | × live worker |",
            "|---|---:|---:|",
            f"| live worker (first send to last audit) | {result['live_events_per_s']:,.0f} "
            "| 1.00 |",
            f"| replay (apply + audit) | {result['replay_events_per_s']:,.0f} | "
            f"{result['replay_vs_live']:.2f} |",
            f"| replay --dry-run | {result['replay_dry_run_events_per_s']:,.0f} | "
            f"{result['replay_dry_run_events_per_s'] / result['live_events_per_s']:.2f} |",
            "",
            f"Rebuilt control state equal to the live one: {result['control_state_equal']}.",
            "",
        ]
    )
    print(table)
    out = HERE / ("out/replay-quick.md" if args.quick else "replay.md")
    out.parent.mkdir(exist_ok=True)
    out.write_text(table)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2))
    return 0 if result["control_state_equal"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
