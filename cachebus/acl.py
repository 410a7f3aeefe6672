"""Least-privilege Redis ACL users for cachebus.

:func:`acl_rules` builds the rule list of an ``ACL SETUSER`` for one key prefix
and one role. The user may touch only ``<prefix>:*`` keys, no pub/sub channels,
and only the commands that role was *measured* to need (every command of the
library, the worker, replay and ``cachebus stats`` was run as such a user on a
standalone Redis and on a 3-primary Redis Cluster, see
``tests/integration/test_security.py``). Nothing broad is ever granted: no
``KEYS``, ``FLUSHALL``/``FLUSHDB``, ``CONFIG``, ``DEBUG``, ``SHUTDOWN``,
``SCRIPT FLUSH``, ``EVAL`` of ad hoc scripts, ``ACL``, ``MONITOR``...

Roles (each a superset of what its processes run; see docs/security.md):

``library``
    a search service: the four cache layers, herd leases, tickets, the query
    log, cache warming, the metrics flush, and the tag / document / version-bump
    invalidation primitives (not ``scan_delete``: that needs ``SCAN``).
``worker``
    the invalidation worker and ``cachebus replay``: high-water marks, the tag /
    document / bump scripts and pattern-scan deletes (``SCAN`` + ``UNLINK``).
``operator``
    both of the above plus what ``cachebus stats`` reads (``INFO``, ``MEMORY
    USAGE``, the published metrics): for ``cachebus stats``, ``cachebus warm``
    and ``cachebus replay`` run by a person.

Lua scripts run their commands with the caller's permissions, so the commands
*inside* the scripts (``HSET``, ``HLEN``, ``UNLINK``, ``TIME``, ``INCR``...) are
granted too; scripts are called by ``EVALSHA`` and loaded by ``SCRIPT LOAD``
(only that subcommand of ``SCRIPT``).

Example::

    >>> acl_rules("cb", password="s3cret", role="worker")[:8]
    ['reset', 'on', '>s3cret', 'resetkeys', '~cb:*', 'resetchannels', '-@all', '+asking']
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from typing import Final, Literal, get_args

from .errors import ConfigError
from .keys import escape_glob, validate_prefix

Role = Literal["worker", "library", "operator"]
ROLES: Final[tuple[str, ...]] = get_args(Role)
DEFAULT_USER: Final = "cachebus"

_USER_RE = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_VERSION_RE = re.compile(r"^(\d+)\.(\d+)")

# Commands as ACL rule names (``cmd`` or ``cmd|subcommand``) with the reason each
# one is granted. Measured: a command is here because running cachebus as a
# restricted user was refused without it.

CONNECTION: Final[Mapping[str, str]] = {
    "ping": "cachebus.connect() probes the server; the worker's health check",
}
"""Every role. (``AUTH`` and ``HELLO`` need no grant: Redis lets every
connection run them.)"""

SCRIPTING: Final[Mapping[str, str]] = {
    "evalsha": "every Lua script is called by its SHA1",
    "script|load": "a server that does not know a script yet (NOSCRIPT) gets it loaded once",
}

CLUSTER: Final[Mapping[str, str]] = {
    "cluster|slots": "RedisCluster clients read the slot map at startup and after MOVED",
    "command": "RedisCluster clients read the command table (COMMAND) to route by key",
    "asking": "follow an ASK redirect while a slot is being migrated (resharding)",
}
"""Every role: a client cannot route anything without them. Read-only
metadata; granted on standalone servers too so one user works everywhere."""

INVALIDATION: Final[Mapping[str, str]] = {
    "mget": "read stamps, generations and high-water marks in one round trip",
    "get": "the sequence and generations (tickets); inside the stamp and HWM scripts",
    "set": "inside the stamp, sequence, generation and HWM scripts; the fence epoch",
    "incr": "inside the generation / sequence script (monotonic counters)",
    "time": "inside the sequence script (clock floor; tickets' age on the server clock)",
    "exists": "inside the script that re-creates missing stamps",
    "wait": "durable invalidations: CACHEBUS_DURABILITY_REPLICAS replicas hold them",
    "hlen": "inside the stamp script: count a deleted document's embeddings",
    "hkeys": "inside the stamp script: find a document's stale chunk embeddings",
    "hget": "inside the stamp script: compare a chunk's content hash",
    "hdel": "inside the stamp script: drop stale chunk embeddings",
    "unlink": "inside the stamp script; explicit UNLINK of entries",
}
"""Tag, document and version-bump invalidation (Invalidator, worker, replay)."""

LIBRARY: Final[Mapping[str, str]] = {
    "mget": "read entries together with the stamps and generations of their ticket",
    "get": "a namespace's generation; inside the lease-release script",
    "set": "write entries with SET .. EX; herd leases with SET NX PX",
    "del": "inside the lease-release script; the query log's temporary unions",
    "hmget": "read chunk embeddings of one document",
    "hset": "inside the conditional write of document embeddings",
    "expire": "TTL of document embeddings (in the script) and of query-log days (EXPIRE NX)",
    "pexpire": "the query log's temporary union keys",
    "zincrby": "count a query in the query log",
    "zunionstore": "merge a query-log shard's days for cachebus warm",
    "zrevrange": "the most frequent queries of a shard",
    "zrange": "ties at the cut-off score of the top queries",
    "sadd": "metrics flush: register the layer",
    "hincrby": "metrics flush: add this process's counters",
}
"""The cache layers, leases, query log, warming and metrics flush."""

PATTERN_SCAN: Final[Mapping[str, str]] = {
    "scan": "pattern-scan invalidation (SCAN MATCH <prefix>:..., never KEYS)",
    "unlink": "delete what the scan matched",
}
"""``Invalidator.scan_delete`` and the worker's pattern rules. SCAN cannot be
fenced by key patterns: it can list (not read) key names outside the prefix."""

STATS: Final[Mapping[str, str]] = {
    "scan": "count keys per layer",
    "memory|usage": "measure a sample of keys per layer",
    "info": "Redis used_memory (INFO memory) for cachebus stats and CacheBus.stats()",
    "smembers": "the layers that published metrics",
    "hgetall": "the published metrics of one layer",
}
"""``cachebus stats`` (and ``CacheBus.stats()``'s ``redis_used_memory``)."""

STAMP_GC: Final[Mapping[str, str]] = {
    "scan": "find tag stamps (SCAN MATCH <prefix>:stamp:*)",
    "object|idletime": "how long a stamp has not been used",
    "get": "a stamp's sequence value (under LFU policies, which track no idle time)",
    "time": "the server clock the stamp values are compared with",
    "unlink": "remove stamps unused for stamp_ttl",
}
"""``cachebus gc``."""

ROLE_GROUPS: Final[Mapping[str, tuple[Mapping[str, str], ...]]] = {
    "library": (CONNECTION, SCRIPTING, CLUSTER, INVALIDATION, LIBRARY),
    "worker": (CONNECTION, SCRIPTING, CLUSTER, INVALIDATION, PATTERN_SCAN),
    "operator": (
        CONNECTION,
        SCRIPTING,
        CLUSTER,
        INVALIDATION,
        LIBRARY,
        PATTERN_SCAN,
        STATS,
        STAMP_GC,
    ),
}

NEWER_SERVERS: Final[Mapping[tuple[int, int], Mapping[str, str]]] = {
    (7, 2): {
        "client|setinfo": "redis-py names itself on connect (refusals are ignored, "
        "but would fill the ACL LOG); the subcommand exists since Redis 7.2",
        "waitaof": "durable invalidations with CACHEBUS_DURABILITY_FSYNC (Redis 7.2+)",
    },
}
"""Grants that an older server would refuse as unknown commands."""

FORBIDDEN: Final[frozenset[str]] = frozenset(
    {
        "keys",
        "flushall",
        "flushdb",
        "config",
        "debug",
        "shutdown",
        "script",
        "script|flush",
        "script|kill",
        "eval",
        "eval_ro",
        "function",
        "fcall",
        "acl",
        "monitor",
        "save",
        "bgsave",
        "bgrewriteaof",
        "replicaof",
        "slaveof",
        "sync",
        "psync",
        "migrate",
        "restore",
        "move",
        "swapdb",
        "select",
        "module",
        "client",
        "client|kill",
        "cluster",
        "cluster|reset",
        "cluster|forget",
        "cluster|failover",
        "failover",
        "lastsave",
        "latency",
        "slowlog",
        "object",
        "publish",
        "subscribe",
        "psubscribe",
        "@all",
        "@admin",
        "@dangerous",
        "@keyspace",
        "@write",
        "@read",
    }
)
"""Never granted, whatever the role (checked by :func:`acl_rules` and the tests)."""


def commands_for(role: str, *, redis_version: str = "7.0") -> list[str]:
    """The sorted command grants (``cmd`` / ``cmd|sub``) of ``role``."""
    if role not in ROLE_GROUPS:
        raise ConfigError(f"unknown ACL role {role!r}; choose one of {', '.join(ROLES)}")
    version = _parse_version(redis_version)
    names: set[str] = set()
    for group in ROLE_GROUPS[role]:
        names.update(group)
    for since, extra in NEWER_SERVERS.items():
        if version >= since:
            names.update(extra)
    bad = names & FORBIDDEN
    if bad:  # pragma: no cover - a guard against a bad edit above
        raise AssertionError(f"forbidden commands in role {role}: {sorted(bad)}")
    return sorted(names)


def reasons() -> dict[str, str]:
    """command -> why it is granted (for the docs and ``cachebus acl --explain``)."""
    out: dict[str, list[str]] = {}
    groups = [g for role_groups in ROLE_GROUPS.values() for g in role_groups]
    for group in [*groups, *NEWER_SERVERS.values()]:
        for name, why in group.items():
            if why not in out.setdefault(name, []):
                out[name].append(why)
    return {name: "; ".join(whys) for name, whys in out.items()}


def key_pattern(prefix: str) -> str:
    """``~<prefix>:*``; the prefix is validated and glob-escaped, so it can never
    widen the pattern (``validate_prefix`` already refuses glob characters)."""
    return f"~{escape_glob(validate_prefix(prefix))}:*"


def password_sha256(password: str) -> str:
    """The hex SHA-256 Redis stores for a password (``#<hash>`` in ACL rules)."""
    return hashlib.sha256(password.encode("utf-8")).hexdigest()


def acl_rules(
    prefix: str,
    *,
    password: str | None = None,
    password_sha256: str | None = None,
    nopass: bool = False,
    role: Role | str = "worker",
    redis_version: str = "7.0",
) -> list[str]:
    """Rules of ``ACL SETUSER <user> <rules...>`` for one prefix and role.

    Exactly one of ``password`` (``>password``), ``password_sha256``
    (``#<hex sha256>``, keeps the plain text out of commands and files) or
    ``nopass=True`` (anyone may log in as the user: only for trusted networks,
    never the default) must be given.

    The list starts with ``reset``, so re-running the command replaces the user's
    passwords and permissions instead of adding to them. ``redis_version`` >= 7.2
    adds ``CLIENT SETINFO`` (unknown to older servers, which would refuse the rule).

    Raises:
        ConfigError: bad prefix, role or password arguments.
    """
    given = [password is not None, password_sha256 is not None, nopass]
    if sum(given) != 1:
        raise ConfigError(
            "give exactly one of password=, password_sha256= or nopass=True "
            "(a passwordless user must be asked for explicitly)"
        )
    if password is not None:
        if not password:
            raise ConfigError("the ACL password must not be empty")
        if any(c.isspace() for c in password):
            raise ConfigError("an ACL password must not contain whitespace (ACL files split on it)")
        secret = f">{password}"
    elif password_sha256 is not None:
        digest = password_sha256.lower()
        if not _SHA256_RE.match(digest):
            raise ConfigError("password_sha256 must be 64 hex digits (sha256 of the password)")
        secret = f"#{digest}"
    else:
        secret = "nopass"
    grants = commands_for(role, redis_version=redis_version)
    return [
        "reset",
        "on",
        secret,
        "resetkeys",
        key_pattern(prefix),
        "resetchannels",
        "-@all",
        *(f"+{name}" for name in grants),
    ]


def validate_user(name: str) -> str:
    """ACL user names: 1-64 of letters, digits and ``_ . @ -`` (no spaces)."""
    if not _USER_RE.match(name):
        raise ConfigError(
            f"ACL user name {name!r} must be 1-64 characters of letters, digits, '_', '.', '@', '-'"
        )
    return name


def setuser_command(user: str, rules: Sequence[str]) -> list[str]:
    """The argument vector of ``ACL SETUSER`` (for ``execute_command``)."""
    return ["ACL", "SETUSER", validate_user(user), *rules]


def setuser_text(user: str, rules: Sequence[str]) -> str:
    """``ACL SETUSER ...`` as one line for redis-cli (no rule needs quoting)."""
    return " ".join(setuser_command(user, rules))


def acl_file_line(user: str, rules: Sequence[str]) -> str:
    """The ``user ...`` line for ``redis.conf`` or an ``aclfile`` (users.acl)."""
    return " ".join(["user", validate_user(user), *rules])


def _parse_version(text: str) -> tuple[int, int]:
    match = _VERSION_RE.match(text.strip())
    if not match:
        raise ConfigError(f"redis version {text!r}: expected MAJOR.MINOR, e.g. 7.0")
    version = (int(match.group(1)), int(match.group(2)))
    if version < (7, 0):
        raise ConfigError("cachebus ACL users need Redis 7.0 or newer (subcommand rules)")
    return version
