"""Rows of the report, the context a scenario runs in, and the scenario registry.

A scenario is a callable ``(ctx: RunContext) -> list[Row]`` registered under a name::

    from consistency.model import Row, RunContext, register

    @register("replica-failover", title="failover to a replica that missed the invalidation")
    def replica_failover(ctx: RunContext) -> list[Row]:
        ...  # start its own servers, run the workload, stop them
        return [Row(scenario=..., redis_config=..., topology="standalone", code=ctx.code, ...)]

``register(..., baseline=True)`` also runs the scenario on today's library (git
``077cbd4``, see :mod:`consistency.baseline`) and shows its stale reads and hit rate next
to the new code's. Such a scenario must work with both APIs: pass settings that only the
new code has through :func:`make_settings` (it drops them for the baseline), and look up
new-only errors by name (:func:`error_named`).

Every scenario runs in a subprocess of its own (``python -m consistency.entry``), once per
library, so scenarios share no state; a scenario starts and stops its own redis-servers.
"""

from __future__ import annotations

import dataclasses
import importlib
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

Code = Literal["new", "baseline"]
CODES: tuple[Code, ...] = ("new", "baseline")

SCENARIO_MODULES: tuple[str, ...] = (
    "consistency.eviction",
    "consistency.loss",
    "consistency.cluster_loss",
)
"""Modules whose import registers scenarios, in report order (missing ones are skipped)."""


@dataclass
class Row:
    """One line of the report: one workload on one Redis configuration and one library.

    A read is *stale* when it returned a value computed from a version older than one
    whose invalidation call had returned before the read started (see
    :mod:`consistency.oracle`).
    """

    scenario: str
    """What happened, in words (``"12k tagged entries, 200 doc invalidations + 1 bump, ..."``)."""
    redis_config: str
    """The Redis (and, where it matters, library) configuration of the run."""
    topology: str
    """``standalone``, ``cluster (3 primaries)``, ``primary + replica``, ..."""
    code: str
    """``new`` (the working tree) or ``baseline`` (git 077cbd4)."""
    entries: int
    """Cached entries the invalidations were about (written before them)."""
    invalidations: int
    """Invalidation calls that completed (documents, tags and bumps)."""
    reads: int
    """Reads checked by the oracle."""
    stale_reads: int
    hits: int
    notes: str = ""
    outcome: str = ""
    """Set when the row has no measurement of its own, e.g. ``"refused by Settings"``;
    the report shows it in place of the stale-read count."""
    case: str = ""
    """Pairs a new-code row with the baseline row of the same case in the report
    (default: the scenario name and topology)."""
    seconds: float = 0.0

    @property
    def hit_rate(self) -> float | None:
        return self.hits / self.reads if self.reads else None

    @property
    def key(self) -> str:
        return self.case or f"{self.scenario} | {self.topology}"

    def as_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["hit_rate"] = self.hit_rate
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Row:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass(frozen=True)
class RunContext:
    """What a scenario is asked to do: which library, how big, where to put artifacts."""

    code: Code
    quick: bool
    out_dir: Path
    scenario: str = ""
    seed: int = 20261126
    started: float = field(default_factory=time.monotonic)

    def progress(self, message: str) -> None:
        """One progress line on stderr, prefixed with the scenario and the library."""
        elapsed = time.monotonic() - self.started
        print(
            f"[{elapsed:6.1f}s] {self.scenario or '?'} ({self.code}): {message}",
            file=sys.stderr,
            flush=True,
        )


ScenarioFn = Callable[[RunContext], list[Row]]


@dataclass(frozen=True)
class Scenario:
    """A registered scenario: callable like the function it wraps."""

    name: str
    fn: ScenarioFn
    baseline: bool = False
    """Also run it on today's library and show that next to the new code's rows."""
    title: str = ""
    exclusive: bool = False
    """Timing-sensitive: run alone, after the scenarios that may share the machine."""

    def __call__(self, ctx: RunContext) -> list[Row]:
        return self.fn(ctx)


SCENARIOS: dict[str, Scenario] = {}


def register(
    name: str, *, baseline: bool = False, title: str = "", exclusive: bool = False
) -> Callable[[ScenarioFn], ScenarioFn]:
    """Register ``fn`` as scenario ``name`` (unique; used by ``--only`` and the entry).
    ``baseline``: also run on today's library; ``exclusive``: never run next to another
    scenario (``--jobs``), for scenarios whose timing matters."""

    def decorate(fn: ScenarioFn) -> ScenarioFn:
        if name in SCENARIOS and SCENARIOS[name].fn is not fn:
            raise ValueError(f"scenario {name!r} is registered twice")
        doc = (fn.__doc__ or "").strip().splitlines()
        SCENARIOS[name] = Scenario(
            name, fn, baseline, title or (doc[0] if doc else name), exclusive
        )
        return fn

    return decorate


def load_scenarios() -> dict[str, Scenario]:
    """Import every module of :data:`SCENARIO_MODULES` that exists; the registry."""
    for module in SCENARIO_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:  # the module exists but one of its imports does not
                raise
    return SCENARIOS


def make_settings(code: Code, **overrides: Any) -> Any:
    """``cachebus.Settings(**overrides).validated()`` of the library under test.

    For the baseline, fields that today's ``Settings`` does not have (``durability_*``,
    ``fence_check_interval``, ...) are dropped: the run measures what today's library
    does with the rest. For the new code an unknown field is an error, as usual.
    """
    from cachebus import Settings

    if code == "baseline":
        known = {f.name for f in dataclasses.fields(Settings)}
        overrides = {k: v for k, v in overrides.items() if k in known}
    return Settings(**overrides).validated()


def error_named(name: str) -> type[BaseException] | None:
    """An error class of ``cachebus.errors`` that may not exist in the baseline
    (``RedisFullError``, ``DurabilityError``): the class, or None."""
    import cachebus.errors

    found = getattr(cachebus.errors, name, None)
    return found if isinstance(found, type) and issubclass(found, BaseException) else None
