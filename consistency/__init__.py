"""The failure-mode suite (``make consistency``): cachebus on real redis-servers that
evict, run out of memory, lose writes or are configured unsafely, and a report of how
many reads returned a value computed before an invalidation that had completed.

* :mod:`consistency.model` -- :class:`~consistency.model.Row` (one line of the report),
  :class:`~consistency.model.RunContext`, the scenario registry and ``@register``.
* :mod:`consistency.oracle` -- what every cached value was computed from, which
  invalidations have completed, and whether a read was stale (no clocks involved).
* :mod:`consistency.workload` -- a search service's four caches on one client through
  the public API (``lookup()`` -> ticket, compute, ``set(..., ticket=)``), with the oracle.
* :mod:`consistency.nodes` -- servers for a scenario, INFO / CONFIG SET on every primary.
* :mod:`consistency.eviction` -- the eviction, full-memory and settings rows (standalone
  and cluster); :mod:`consistency.loss` -- replication, persistence and clock rows (with
  :mod:`consistency.servers`: a TCP proxy and a primary + replica pair).
* :mod:`consistency.baseline` -- today's library (git ``077cbd4``) for the comparison
  columns; :mod:`consistency.entry` runs one scenario on one library in a subprocess.
* :mod:`consistency.run` -- ``python -m consistency.run [--quick] [--only NAME ...]``;
  :mod:`consistency.report` renders the Markdown from the run's JSON.

Scenario modules listed in :data:`consistency.model.SCENARIO_MODULES` register
themselves on import; a module that does not exist yet is skipped.
"""
