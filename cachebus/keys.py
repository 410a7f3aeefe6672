"""The key scheme: the one place that builds key strings and scan patterns.

Every user-supplied part (doc ids, collections, models, tags, chunk ids) is
percent-encoded so that only ``[A-Za-z0-9_.~%-]`` reaches a key: ``:`` ``{``
``}`` ``*`` ``?`` ``[`` ``]`` ``\\`` and whitespace can never change a key's
meaning, its Redis Cluster hash slot, or a pattern's reach.

Layout (prefix ``cb``; ``<x>`` is an encoded part, ``{...}`` a cluster hash tag)::

    cb:seq                                   global invalidation sequence (INCR)
    cb:epoch:{cb:seq}                        fence epoch (same slot as the sequence)
    cb:witness:{<tag>}                       per-primary write witness (rollback detection)
    cb:gen:{<ns>}                            namespace generation (version bump)
    cb:stamp:{<tag>}                         tag invalidation stamp
    cb:qe:<model>:<version>:g<N>:e<E>:{<d>}  query embedding (E: fence epoch; d: base64url SHA-256)
    cb:de:{d.<doc>}                          document embeddings (hash: chunk -> vector)
    cb:sr:<collection>:g<N>:{<digest>}       search results
    cb:rr:<model>:{<digest>}                 rerank scores
    cb:<segment>:<parts>:{<digest>}          any other layer's entries (:meth:`KeyScheme.entry`)
    cb:hwm:{d.<doc>}                         worker: document high-water mark
    cb:lease:<rest of an entry key>          herd-control lease (same slot as the entry)

A document's stamp, embeddings and high-water mark share the hash tag
``{d.<doc>}``, so one Lua script can update them atomically on a cluster;
query embeddings and search results are spread by their content hash so a hot
model or collection is not pinned to one slot.

Each layer's key segment (``qe``, ``de``, ...) comes from the layer registry
(:mod:`cachebus.registry`), which also reserves the control segments.
"""

from __future__ import annotations

import binascii
import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final
from urllib.parse import quote, unquote

from .errors import ConfigError, KeyEncodingError
from .registry import SEGMENTS, spec

MAX_PART_CHARS = 1024
_PREFIX_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_GLOB_SPECIAL = re.compile(r"([*?\[\]\\])")
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_UNRESERVED = re.compile(r"[A-Za-z0-9_.~-]+")
"""What percent-encoding leaves as it is (RFC 3986 unreserved characters)."""


def validate_prefix(prefix: str) -> str:
    """Prefixes are operator-chosen but still must not carry glob or hash-tag characters."""
    if not _PREFIX_RE.match(prefix):
        raise ConfigError(
            f"prefix {prefix!r} must be 1-64 characters of letters, digits, '_', '.', '-'"
        )
    return prefix


def encode_part(value: str) -> str:
    """Percent-encode one user-supplied part; reversible with :func:`decode_part`."""
    if not isinstance(value, str):
        raise KeyEncodingError(f"key part must be str, got {type(value).__name__}")
    if not value:
        raise KeyEncodingError("key part must not be empty")
    if len(value) > MAX_PART_CHARS:
        raise KeyEncodingError(f"key part longer than {MAX_PART_CHARS} characters")
    if _UNRESERVED.fullmatch(value):
        return value  # the common case, and what quote() would return
    try:
        return quote(value, safe="", errors="strict")
    except UnicodeEncodeError as exc:
        raise KeyEncodingError(f"key part is not valid Unicode text: {exc}") from None


def decode_part(encoded: str) -> str:
    return unquote(encoded, errors="strict")


def escape_glob(text: str) -> str:
    """Backslash-escape Redis glob specials (``* ? [ ] \\``) in a literal."""
    return _GLOB_SPECIAL.sub(r"\\\1", text)


def sha256_hex(data: str | bytes) -> str:
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
    return hashlib.sha256(raw).hexdigest()


def key_digest(data: str | bytes) -> str:
    """SHA-256 of content, as it goes into entry keys: unpadded base64url, 43
    characters (``[A-Za-z0-9_-]``, nothing a glob or hash tag reads) instead of
    64 hex characters. Keys are a large share of a small entry's memory: at
    dimension 384 an int8 vector is 400 bytes."""
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
    encoded = binascii.b2a_base64(hashlib.sha256(raw).digest(), newline=False)
    return encoded[:43].translate(_URLSAFE).decode("ascii")


_URLSAFE: Final = bytes.maketrans(b"+/", b"-_")

_DIGEST_MEMO: dict[str, str] = {}
_DIGEST_MEMO_MAX: Final = 16_384
"""Digests of the query texts seen last: a cache hit is a text seen before, and hot
queries repeat (Zipf), so their SHA-256 is computed once per process, not per lookup.
Bounded: emptied when full (at most ~16k short strings)."""


def _memo_digest(text: str) -> str:
    """:func:`key_digest` of a query text, memoized (the hot path of every lookup)."""
    found = _DIGEST_MEMO.get(text)
    if found is None:
        if len(_DIGEST_MEMO) >= _DIGEST_MEMO_MAX:
            _DIGEST_MEMO.clear()
        found = _DIGEST_MEMO[text] = key_digest(text)
    return found


_QE: Final = SEGMENTS["query_embeddings"]
_DE: Final = SEGMENTS["document_embeddings"]
_SR: Final = SEGMENTS["search_results"]
_RR: Final = SEGMENTS["rerank_scores"]


@dataclass(frozen=True, slots=True)
class Tag:
    """An invalidation tag. Build with :meth:`doc`, :meth:`collection` or :meth:`user`."""

    token: str
    """Encoded form, e.g. ``d.report%2A1`` (kind letter, dot, encoded value)."""

    @classmethod
    def doc(cls, doc_id: str) -> Tag:
        return cls("d." + encode_part(doc_id))

    @classmethod
    def collection(cls, name: str) -> Tag:
        return cls("c." + encode_part(name))

    @classmethod
    def user(cls, name: str) -> Tag:
        return cls("u." + encode_part(name))

    def __str__(self) -> str:
        kind, _, value = self.token.partition(".")
        label = {"d": "doc", "c": "collection", "u": "tag"}.get(kind, kind)
        return f"{label}:{decode_part(value)}"


class KeyScheme:
    """Builds every key and pattern for one prefix. Worker and library share it."""

    __slots__ = ("prefix",)

    def __init__(self, prefix: str = "cb") -> None:
        self.prefix = validate_prefix(prefix)

    # control state -------------------------------------------------------
    def seq(self) -> str:
        return f"{self.prefix}:seq"

    def epoch(self) -> str:
        """The fence epoch: a random token every entry is written under. It lives in
        the sequence's hash slot, so whatever loses the sequence loses the epoch too."""
        return f"{self.prefix}:epoch:{{{self.prefix}:seq}}"

    def witness(self, node_tag: str) -> str:
        """A counter on one primary (``node_tag`` hashes to a slot it owns), raised
        after every invalidation there: a value below one seen before means the
        primary lost writes (restart from old data, failover to a lagging replica)."""
        return f"{self.prefix}:witness:{{{node_tag}}}"

    def stamp(self, tag: Tag) -> str:
        return f"{self.prefix}:stamp:{{{tag.token}}}"

    def generation(self, namespace: str) -> str:
        return f"{self.prefix}:gen:{{{namespace}}}"

    def hwm(self, doc_id: str) -> str:
        return f"{self.prefix}:hwm:{{{Tag.doc(doc_id).token}}}"

    # namespaces (encoded, used in generation keys) -----------------------
    @staticmethod
    def namespace(head: str, *parts: str) -> str:
        """A generation namespace: a layer's ``bump_namespace`` and encoded parts."""
        return ".".join((head, *(encode_part(p) for p in parts)))

    @staticmethod
    def query_namespace(model: str, model_version: str) -> str:
        return KeyScheme.namespace(_bump_head("query_embeddings"), model, model_version)

    @staticmethod
    def search_namespace(collection: str) -> str:
        return KeyScheme.namespace(_bump_head("search_results"), collection)

    # cache entries -------------------------------------------------------
    def query_embedding(
        self, model: str, model_version: str, generation: int, text: str, epoch: str
    ) -> str:
        return self.query_embeddings(model, model_version, generation, (text,), epoch)[0]

    def query_embeddings(
        self, model: str, model_version: str, generation: int, texts: Iterable[str], epoch: str
    ) -> list[str]:
        """:meth:`query_embedding` of many texts (the common part built once). The
        fence epoch is part of the key: after a fence, older entries are unreachable."""
        head = (
            f"{self.prefix}:{_QE}:{encode_part(model)}:{encode_part(model_version)}"
            f":g{generation}:e{encode_part(epoch)}:"
        )
        return [f"{head}{{{_memo_digest(t)}}}" for t in texts]

    def document_embeddings(self, doc_id: str) -> str:
        return f"{self.prefix}:{_DE}:{{{Tag.doc(doc_id).token}}}"

    def search_results(self, collection: str, generation: int, digest: str) -> str:
        return f"{self.prefix}:{_SR}:{encode_part(collection)}:g{generation}:{{{digest}}}"

    def rerank_scores(self, model: str, digest: str) -> str:
        return f"{self.prefix}:{_RR}:{encode_part(model)}:{{{digest}}}"

    def entry(self, layer: str, parts: Iterable[str], digest: str) -> str:
        """An entry of registered layer ``layer``: its key segment, the encoded
        ``parts`` (model, version, ...), then the content ``digest`` (from
        :func:`key_digest`) as the hash tag, so entries spread over the cluster."""
        head = ":".join((self.prefix, SEGMENTS[layer], *(encode_part(p) for p in parts)))
        return f"{head}:{{{digest}}}"

    def lease(self, entry_key: str) -> str:
        """The lease key shares the entry's hash tag, hence its cluster slot."""
        head = f"{self.prefix}:"
        if not entry_key.startswith(head):
            raise KeyEncodingError(f"{entry_key!r} is not a key of prefix {self.prefix!r}")
        return f"{self.prefix}:lease:{entry_key[len(head) :]}"

    # patterns ------------------------------------------------------------
    def pattern(self, template: str, **parts: str) -> str:
        """Build a SCAN MATCH pattern under this prefix.

        ``template`` is operator-written glob text with ``{name}`` placeholders;
        each placeholder is filled with the *glob-escaped* raw value, so a doc id
        of ``*`` matches only the literal ``*``. Example::

            scheme.pattern("legacy:docembed:{doc_id}:*", doc_id="a*")
            # -> 'cb:legacy:docembed:a\\*:*'
        """
        for name, value in parts.items():
            if not isinstance(value, str) or not value:
                raise KeyEncodingError(f"pattern part {name!r} must be a non-empty string")

        def fill(match: re.Match[str]) -> str:
            name = match.group(1)
            if name not in parts:
                raise ConfigError(f"pattern template {template!r} needs part {name!r}")
            return escape_glob(parts[name])

        body = _PLACEHOLDER.sub(fill, template)
        return f"{escape_glob(self.prefix)}:{body}"

    def owns(self, key: str) -> bool:
        return key.startswith(f"{self.prefix}:")

    # operational data (metrics, query log) ---------------------------------
    def metrics(self, layer_name: str) -> str:
        """``<prefix>:metrics:{<layer>}``: a layer's counters summed over processes."""
        return f"{self.prefix}:metrics:{{{encode_part(layer_name)}}}"

    def metrics_layers(self) -> str:
        """``<prefix>:metrics:layers``: the set of layers that published metrics."""
        return f"{self.prefix}:metrics:layers"

    def query_log_day(self, shard: int, day: str) -> str:
        """``<prefix>:ql:{q<shard>}:<YYYYMMDD>``: one shard of a day's query counts. All
        days of a shard share the hash tag, so a week of it can be unioned on a cluster."""
        return f"{self.prefix}:ql:{{q{shard}}}:{day}"

    def query_log_temp(self, shard: int, token: str) -> str:
        """``<prefix>:ql:{q<shard>}:tmp:<token>``: scratch space in the shard's slot."""
        return f"{self.prefix}:ql:{{q{shard}}}:tmp:{token}"


def _bump_head(layer: str) -> str:
    head = spec(layer).bump_namespace
    if head is None:  # pragma: no cover - a registry error
        raise ConfigError(f"layer {layer!r} has no bump namespace")
    return head
