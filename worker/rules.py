"""The invalidation rules live in :mod:`cachebus.rules` (the library's ``document_*``
calls apply the same rules as the worker); re-exported here for the worker."""

from cachebus.rules import (
    EmbeddingDrop,
    EventRule,
    Rules,
    ScanRule,
    load_rules,
    merge_tables,
    parse_rules,
)

__all__ = [
    "EmbeddingDrop",
    "EventRule",
    "Rules",
    "ScanRule",
    "load_rules",
    "merge_tables",
    "parse_rules",
]
