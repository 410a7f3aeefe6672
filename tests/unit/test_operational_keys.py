"""The metrics and query-log keys come from the key scheme, like every other key."""

from __future__ import annotations

from datetime import date

from cachebus.keys import KeyScheme
from cachebus.metrics_store import metrics_key, registry_key
from cachebus.querylog import QueryLogKeys

KEYS = KeyScheme("cb")


def test_metrics_keys() -> None:
    assert KEYS.metrics("search_results") == "cb:metrics:{search_results}"
    assert KEYS.metrics_layers() == "cb:metrics:layers"
    assert metrics_key(KEYS, "search_results") == KEYS.metrics("search_results")
    assert registry_key(KEYS) == KEYS.metrics_layers()
    assert KEYS.owns(KEYS.metrics("a b")) and "a b" not in KEYS.metrics("a b")


def test_query_log_keys_share_their_shard_slot() -> None:
    log = QueryLogKeys(KEYS)
    day = log.day(3, date(2026, 1, 2))
    temp = log.temp(3)
    assert day == "cb:ql:{q3}:20260102" == KEYS.query_log_day(3, "20260102")
    assert temp.startswith("cb:ql:{q3}:tmp:") and temp != log.temp(3)
    assert KEYS.owns(day) and KEYS.owns(temp)
