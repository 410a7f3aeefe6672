"""Data-loss rows: failover to a replica that missed invalidations, a crash that cuts
the AOF back to its last fsync or restarts from an old RDB, a lost sequence with the
server clock stepped back, and a failover to a replica whose clock is 120 s behind.

Each row writes ``entries`` tagged search results (five documents each) through
lookup -> ticket -> set, lets Redis make them durable (replicated, fsynced, snapshot),
then invalidates ``invalidated`` documents (each call returns: the invalidation is
*completed* for the oracle), loses those writes the way the row says, and reads every
entry once through a fresh client (what the search service does after the failover or
restart). A read is stale iff it serves a value computed before a completed
invalidation. Then every entry is read again with refills, to show caching recovers.

What the new library does against each loss:

* **durability on** (``durability_replicas=1``): while replication is stalled the
  invalidation raises ``DurabilityError`` and is not completed; the caller retries it on
  the new primary after the failover (the worker does: it acks nothing meanwhile);
* **fence**: the invalidator remembers every primary's witness counter; after the loss
  its ``check_fence()`` (the worker runs it every ``fence_check_interval``, 1 s) sees the
  counter went back and writes a new epoch: every entry written before is a miss. Reads
  here start after that check.

The baseline (today's library) has neither and is read the same way.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .model import Code, Row, RunContext, error_named, make_settings, register
from .oracle import Oracle
from .workload import Workload

COLLECTION = "main"


@dataclass(frozen=True)
class Size:
    entries: int
    docs: int
    invalidated: int


FULL = Size(entries=2_000, docs=500, invalidated=200)
QUICK = Size(entries=400, docs=100, invalidated=40)


def size_of(ctx: RunContext) -> Size:
    return QUICK if ctx.quick else FULL


def queries(size: Size) -> list[str]:
    return [f"q{i}" for i in range(size.entries)]


def loss_settings(code: Code, **extra: Any) -> Any:
    return make_settings(code, prefix="cb", **extra)


def loss_workload(client: Any, settings: Any, oracle: Oracle, size: Size, monitor: Any) -> Workload:
    """A workload whose invalidator shares ``monitor`` (the new library's FenceMonitor:
    the process keeps what it saw across reconnects, as the worker does)."""
    w = Workload(client, settings, oracle, docs=size.docs)
    if monitor is not None:
        from cachebus.invalidation import Invalidator

        w.bus.invalidator = Invalidator(client, settings=settings, fence=monitor)
    return w


def fence_monitor(code: Code) -> Any:
    if code == "baseline":
        return None
    from cachebus.durability import FenceMonitor

    return FenceMonitor("cb")


def fill(w: Workload, size: Size) -> None:
    for q in queries(size):
        w.write_search(COLLECTION, q)


def victims(size: Size) -> list[str]:
    return [f"doc-{i:05d}" for i in range(size.invalidated)]


def invalidate_victims(w: Workload, size: Size) -> list[str]:
    """Invalidate the victims one call each; returns those whose call did not complete."""
    failed = []
    for doc in victims(size):
        if not w.invalidate_documents([doc]).counted:
            failed.append(doc)
    return failed


def check_fence(w: Workload) -> int:
    """The fence check the worker runs every ``fence_check_interval``; returns fences."""
    check = getattr(w.bus.invalidator, "check_fence", None)
    if check is None:
        return 0
    report = check()
    return len(getattr(report, "fences", []) or [])


def retry_failed(w: Workload, failed: list[str], *, attempts: int = 10) -> int:
    """Send each failed invalidation again until it counts, as the worker does with a
    batch it never acked (up to ``attempts`` tries each, 0.2 s apart: a replica that
    just resynced may take a moment to acknowledge ``WAIT``). Returns how many
    completed."""
    completed = 0
    for doc in failed:
        for attempt in range(attempts):
            if attempt:
                time.sleep(0.2)
            if w.retry_documents([doc]).counted:
                completed += 1
                break
    return completed


def read_passes(w: Workload, size: Size) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """Every entry read once without refills (right after the loss), then once with
    refills, then once more: (first pass, the two later passes)."""
    first = read_all(w, size, refill=False)
    second = read_all(w, size, refill=True)
    third = read_all(w, size, refill=False)
    return first, (second[0] + third[0], second[1] + third[1], second[2] + third[2])


def read_all(w: Workload, size: Size, *, refill: bool) -> tuple[int, int, int]:
    before = w.oracle.total()
    reads0, hits0, stale0 = before.reads, before.hits, before.stale
    for q in queries(size):
        w.read_search(COLLECTION, q, refill=refill)
    after = w.oracle.total()
    return after.reads - reads0, after.hits - hits0, after.stale - stale0


def loss_row(
    ctx: RunContext,
    *,
    scenario: str,
    config: str,
    topology: str,
    size: Size,
    oracle: Oracle,
    first: tuple[int, int, int],
    again: tuple[int, int, int],
    notes: str,
    case: str,
) -> Row:
    reads, hits, stale = first[0] + again[0], first[1] + again[1], first[2] + again[2]
    notes = (
        f"{notes}; first read after the loss: {first[1]}/{first[0]} hits, {first[2]} stale; "
        f"then a pass with refills and one more: {again[1]}/{again[0]} hits, {again[2]} stale"
    )
    if oracle.examples:
        notes += "; e.g. " + "; ".join(oracle.examples[:2])
    return Row(
        scenario=scenario,
        redis_config=config,
        topology=topology,
        code=ctx.code,
        entries=size.entries,
        invalidations=oracle.invalidations,
        reads=reads,
        stale_reads=stale,
        hits=hits,
        notes=notes,
        case=case,
    )


# --------------------------------------------------------------------------- failover


def _failover_case(
    ctx: RunContext,
    *,
    durable: bool,
    replica_config: list[str],
    label: str,
    replica_bin: str | None = None,
) -> Row:
    from .servers import ReplicatedRedis

    size = size_of(ctx)
    oracle = Oracle()
    monitor = fence_monitor(ctx.code)
    extra: dict[str, Any] = {}
    if durable:
        extra = {"durability_replicas": 1, "durability_timeout_ms": 200}
    settings = loss_settings(ctx.code, **extra)
    durability_error = error_named("DurabilityError")
    with ReplicatedRedis(replica_config=replica_config, replica_server_bin=replica_bin) as pair:
        client = pair.client()
        w = loss_workload(client, settings, oracle, size, monitor)
        ctx.progress(f"{label}: {size.entries} entries on the primary")
        fill(w, size)
        pair.wait_synced()
        pair.stall_replication()
        ctx.progress(f"{label}: replication stalled; {size.invalidated} invalidations")
        failed = invalidate_victims(w, size)
        errors = dict(w.errors)
        ctx.progress(f"{label}: failover (primary SIGKILLed, replica promoted)")
        pair.failover()
        client.close()
        client = pair.client()
        replacement = None
        if durable:
            # A replacement replica joins the new primary (Sentinel or an operator does):
            # without one no invalidation can be durable, and the retries keep waiting.
            replacement = _replica_of(pair.url)
        w2 = loss_workload(client, settings, oracle, size, monitor)
        retried = retry_failed(w2, failed)
        fences = check_fence(w2)
        first, again = read_passes(w2, size)
        client.close()
        if replacement is not None:
            replacement.stop()
    failed_note = (
        f"{len(failed)} invalidations raised {', '.join(sorted(errors))} while stalled, "
        f"{retried} completed on retry after the failover"
        if failed
        else "every invalidation returned OK while stalled"
    )
    if durability_error is None and durable:
        failed_note += " (no durability setting in this library)"
    return loss_row(
        ctx,
        scenario=f"failover after stalled replication{label and ': ' + label}",
        config=(
            "primary + replica, link stalled, primary killed, replica promoted; "
            + ("durability_replicas=1" if durable else "durability off")
            + ("" if ctx.code == "baseline" else f"; fence check ({fences} fence)")
        ),
        topology="primary + replica",
        size=size,
        oracle=oracle,
        first=first,
        again=again,
        notes=failed_note,
        case=f"failover {label}" + ("" if durable or ctx.code == "baseline" else " (fence)"),
    )


@register(
    "failover",
    baseline=True,
    title="primary + replica: replication stalled, invalidations, failover to the replica",
)
def failover(ctx: RunContext) -> list[Row]:
    rows = [_failover_case(ctx, durable=False, replica_config=[], label="")]
    if ctx.code == "new":
        rows.append(_failover_case(ctx, durable=True, replica_config=[], label=""))
    return rows


@register(
    "failover-clock-behind",
    baseline=True,
    title="failover to a replica whose clock is 120 s behind",
)
def failover_clock_behind(ctx: RunContext) -> list[Row]:
    with skewed_redis_binary(-120) as (binary, _):
        return [
            _failover_case(
                ctx,
                durable=ctx.code == "new",
                replica_config=[],
                label="replica clock -120 s",
                replica_bin=binary,
            )
        ]


def _replica_of(url: str) -> Any:
    """A new redis-server replicating ``url``'s server, in sync."""
    from urllib.parse import urlsplit

    from devtools.redis_servers import RedisServer

    parts = urlsplit(url)
    server = RedisServer(
        use_env=False, extra_config=[f"replicaof {parts.hostname} {parts.port}"]
    ).start()
    replica = server.client()
    deadline = time.monotonic() + 10
    try:
        while replica.info("replication").get("master_link_status") != "up":
            if time.monotonic() > deadline:
                server.stop()
                raise TimeoutError("replacement replica did not sync within 10 s")
            time.sleep(0.02)
    finally:
        replica.close()
    return server


# --------------------------------------------------------------------------- crashes


CRASH_MODES: dict[str, tuple[list[str], str]] = {
    "aof": (
        ["appendonly yes", "appendfsync everysec", "aof-use-rdb-preamble no"],
        "appendfsync everysec, machine crash: AOF cut back to its last fsync",
    ),
    "rdb": (
        ['save ""', "appendonly no", "dbfilename dump.rdb"],
        "RDB only: restart from the last snapshot",
    ),
}
"""Redis configuration and row label of each crash mode."""


def _crash_case(ctx: RunContext, *, mode: str) -> Row:
    """``mode``: ``aof`` (appendfsync everysec; the AOF is cut back to the state of its
    last fsync before the invalidations) or ``rdb`` (snapshot before the invalidations)."""
    from devtools.redis_servers import RedisServer

    size = size_of(ctx)
    oracle = Oracle()
    monitor = fence_monitor(ctx.code)
    settings = loss_settings(ctx.code)
    config, label = CRASH_MODES[mode]
    with RedisServer(use_env=False, extra_config=config) as server:
        client = server.client()
        w = loss_workload(client, settings, oracle, size, monitor)
        ctx.progress(f"{mode}: {size.entries} entries")
        fill(w, size)
        assert server.directory is not None
        saved = Path(tempfile.mkdtemp(prefix="cb-loss-"))
        try:
            if mode == "aof":
                time.sleep(1.2)  # everysec: the entries are fsynced by now
                shutil.copytree(server.directory / "appendonlydir", saved / "appendonlydir")
            else:
                client.save()
            ctx.progress(f"{mode}: {size.invalidated} invalidations after the durable point")
            invalidate_victims(w, size)
            client.close()
            server.kill()
            if mode == "aof":
                shutil.rmtree(server.directory / "appendonlydir")
                shutil.copytree(saved / "appendonlydir", server.directory / "appendonlydir")
            server.restart()
        finally:
            shutil.rmtree(saved, ignore_errors=True)
        client = server.client()
        w2 = loss_workload(client, settings, oracle, size, monitor)
        fences = check_fence(w2)
        first, again = read_passes(w2, size)
        client.close()
    return loss_row(
        ctx,
        scenario=f"crash and restart: {label}",
        config=", ".join(config)
        + ("" if ctx.code == "baseline" else f"; fence check ({fences} fence)"),
        topology="standalone",
        size=size,
        oracle=oracle,
        first=first,
        again=again,
        notes="invalidations after the durable point are lost with the crash",
        case=f"crash {mode}",
    )


@register("crash-aof", baseline=True, title="AOF everysec, machine crash cuts the AOF")
def crash_aof(ctx: RunContext) -> list[Row]:
    return [_crash_case(ctx, mode="aof")]


@register("crash-rdb", baseline=True, title="RDB only, restart from the last snapshot")
def crash_rdb(ctx: RunContext) -> list[Row]:
    return [_crash_case(ctx, mode="rdb")]


# --------------------------------------------------------------------------- clock


CLOCKSHIFT_SOURCE = Path(__file__).with_name("clockshift.c")


def clockshift_library() -> Path:
    """Build (once, cached by source hash) the LD_PRELOAD shim that shifts a process's
    wall clock by an offset read from a file. Debian's libfaketime cannot be used:
    under it redis-server recurses into clock_gettime from jemalloc and never starts."""
    import hashlib
    import subprocess

    source = CLOCKSHIFT_SOURCE.read_bytes()
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "cachebus"
    target = cache / f"clockshift-{hashlib.sha256(source).hexdigest()[:12]}.so"
    if not target.exists():
        cache.mkdir(parents=True, exist_ok=True)
        gcc = shutil.which("gcc") or shutil.which("cc")
        if gcc is None:
            raise RuntimeError("gcc not found: make setup installs it (clock-skew scenarios)")
        tmp = target.with_suffix(f".{os.getpid()}.tmp")
        subprocess.run(
            [gcc, "-O2", "-shared", "-fPIC", "-o", str(tmp), str(CLOCKSHIFT_SOURCE)],
            check=True,
            capture_output=True,
        )
        tmp.replace(target)
    return target


@contextmanager
def skewed_redis_binary(offset_s: float) -> Iterator[tuple[str, Callable[[float], None]]]:
    """A redis-server wrapper whose wall clock is ``offset_s`` seconds off; the
    offset can change at run time (``set_offset(-120)``). Monotonic clocks stay true."""
    from devtools.redis_servers import find_redis_server

    lib = clockshift_library()
    folder = Path(tempfile.mkdtemp(prefix="cb-clock-"))
    offset_file = folder / "offset"
    offset_file.write_text(f"{offset_s}\n")
    wrapper = folder / "redis-server"
    wrapper.write_text(
        "#!/bin/sh\n"
        f"export LD_PRELOAD={lib}\n"
        f"export CB_CLOCK_OFFSET_FILE={offset_file}\n"
        f'exec {find_redis_server()} "$@"\n'
    )
    wrapper.chmod(0o755)

    def set_offset(value: float) -> None:
        tmp = folder / "offset.tmp"
        tmp.write_text(f"{value}\n")
        tmp.replace(offset_file)

    try:
        yield str(wrapper), set_offset
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@register(
    "sequence-lost-clock-back",
    baseline=True,
    title="the sequence is lost and the server clock steps back 120 s",
)
def sequence_lost_clock_back(ctx: RunContext) -> list[Row]:
    from devtools.redis_servers import RedisServer

    size = size_of(ctx)
    oracle = Oracle()
    settings = loss_settings(ctx.code)
    with (
        skewed_redis_binary(0) as (binary, set_offset),
        RedisServer(use_env=False, redis_server_bin=binary) as server,
    ):
        client = server.client()
        w = loss_workload(client, settings, oracle, size, None)
        w.invalidate_documents(["unrelated"])  # the sequence exists, near the clock
        ctx.progress(f"{size.entries} entries")
        fill(w, size)
        # The sequence key is lost (evicted, or a partial restore) and the host
        # clock steps back 120 s (NTP correction, VM migration).
        client.delete(b"cb:seq")
        set_offset(-120)
        time.sleep(0.05)  # the shim re-reads the offset every 5 ms
        ctx.progress(f"clock -120 s, sequence lost; {size.invalidated} invalidations")
        invalidate_victims(w, size)
        first, again = read_passes(w, size)
        client.close()
    return [
        loss_row(
            ctx,
            scenario="sequence lost, then the server clock steps back 120 s",
            config="standalone, no persistence, redis-server's clock shifted by an LD_PRELOAD shim",
            topology="standalone",
            size=size,
            oracle=oracle,
            first=first,
            again=again,
            notes="the invalidations run after the loss and the clock step",
            case="sequence lost clock back",
        )
    ]
