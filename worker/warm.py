"""``cachebus warm``: pre-embed popular queries (from the query log) or
documents (from a JSONL file) off-peak. See :mod:`cachebus.warming`."""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any, TextIO

from cachebus.connection import connect
from cachebus.document_embeddings import DocumentEmbeddingCache
from cachebus.embedders import Embedder
from cachebus.errors import ConfigError
from cachebus.query_embeddings import QueryEmbeddingCache
from cachebus.querylog import QueryLog
from cachebus.settings import Settings
from cachebus.warming import WarmReport, warm_documents, warm_queries

DEMO_EMBEDDER = "cachebus.embedders:HashingEmbedder"
"""``--demo-embedder``: deterministic feature hashing, not semantic (demos and tests)."""


def embedder_spec(settings: Settings, flag: str | None, demo: bool) -> str:
    """Which embedder to load: ``--embedder``, else ``CACHEBUS_EMBEDDER`` when set, else
    the demo embedder only if ``--demo-embedder`` asks for it. Never a silent default:
    vectors of another model than the services' would fill the cache unused."""
    if flag:
        return flag
    configured = settings.embedder
    if configured and (
        "CACHEBUS_EMBEDDER" in os.environ or configured != Settings().embedder
    ):
        return configured
    if demo:
        return DEMO_EMBEDDER
    raise ConfigError(
        "cachebus warm needs the embedder your services use: --embedder module:attr (or "
        f"CACHEBUS_EMBEDDER); --demo-embedder warms with {DEMO_EMBEDDER}, which is not "
        "semantic (demos and tests only)"
    )


def load_embedder(
    spec: str, *, model: str | None = None, model_version: str | None = None
) -> Embedder:
    """``module:attr`` -> an embedder. A class or factory is called (with
    ``model``/``model_version`` keywords when given); an instance is used as is.
    The result must report the requested model and version."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"--embedder {spec!r}: expected 'module:attr'")
    # Like uvicorn and gunicorn: `--embedder app:Embedder` finds ./app.py.
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)
    try:
        target: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            target = getattr(target, part)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"--embedder {spec!r}: {exc}") from None
    if inspect.isclass(target) or (callable(target) and not hasattr(target, "embed")):
        kwargs = {k: v for k, v in (("model", model), ("model_version", model_version)) if v}
        try:
            target = target(**kwargs)
        except TypeError as exc:
            raise ConfigError(f"--embedder {spec!r} could not be built: {exc}") from None
    embedder = target
    if not callable(getattr(embedder, "embed", None)):
        raise ConfigError(f"--embedder {spec!r} has no embed(texts) method")
    for name, wanted in (("model", model), ("model_version", model_version)):
        actual = getattr(embedder, name, None)
        if not isinstance(actual, str):
            raise ConfigError(f"--embedder {spec!r} has no {name} string")
        if wanted and actual != wanted:
            raise ConfigError(f"--embedder {spec!r} reports {name} {actual!r}, not {wanted!r}")
    result: Embedder = embedder
    return result


def read_documents(stream: TextIO) -> Iterator[dict[str, Any]]:
    """Documents from JSONL, lazily; a bad line raises ``ValueError`` naming it."""
    for number, line in enumerate(stream, 1):
        if not line.strip():
            continue
        try:
            doc = json.loads(line)
        except ValueError as exc:
            raise ValueError(f"line {number}: not JSON: {exc}") from None
        if not isinstance(doc, dict):
            raise ValueError(f"line {number}: expected a JSON object")
        yield doc


def _progress(out: TextIO) -> Callable[[WarmReport], None]:
    def show(report: WarmReport) -> None:
        print(
            f"batch {report.batches}: {report.considered} considered, "
            f"warmed {report.warmed}, already cached {report.already_cached}, "
            f"{report.seconds:.1f} s",
            file=out,
            flush=True,
        )

    return show


def summary(report: WarmReport) -> str:
    """The final report line."""
    line = (
        f"warmed {report.warmed}, already cached {report.already_cached}, "
        f"provider calls {report.provider_calls}, {report.seconds:.1f} s, "
        f"{report.rate:.1f}/s"
    )
    if report.refused:
        line += f", refused {report.refused} (invalidated while embedding)"
    return line


def register(subparsers: Any, add_common: Callable[[argparse.ArgumentParser], None]) -> None:
    """Add ``cachebus warm``."""
    p = subparsers.add_parser("warm", help="pre-embed popular queries or documents")
    add_common(p)
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--top", type=int, metavar="N", help="the N most frequent logged queries")
    what.add_argument("--documents", metavar="FILE.jsonl", help="documents ('-' for stdin)")
    p.add_argument("--days", type=int, default=7, help="query log window in days (default 7)")
    p.add_argument("--batch", type=int, default=64, help="texts per embedder call (default 64)")
    p.add_argument("--rate", type=float, default=None, help="max texts embedded per second")
    p.add_argument(
        "--embedder",
        default=None,
        help="module:attr of the embedder your services use, a class, factory or instance "
        "(default: CACHEBUS_EMBEDDER; modules are found in the current directory too)",
    )
    p.add_argument(
        "--demo-embedder",
        action="store_true",
        help=f"without --embedder / CACHEBUS_EMBEDDER: warm with {DEMO_EMBEDDER} "
        "(not semantic; demos and tests only)",
    )
    p.add_argument("--model", default=None, help="model name (passed to the embedder factory)")
    p.add_argument("--model-version", default=None, help="model version (likewise)")
    p.set_defaults(run=run)


def run(settings: Settings, args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Warm, print a progress line per batch on stderr and the report on ``out``."""
    out = out or sys.stdout
    if args.batch <= 0 or (args.rate is not None and args.rate <= 0):
        print("cachebus warm: --batch and --rate must be positive", file=sys.stderr)
        return 2
    spec = embedder_spec(settings, args.embedder, args.demo_embedder)
    embedder = load_embedder(spec, model=args.model, model_version=args.model_version)
    # Opened before connecting: a missing file is an error of its own (exit 2).
    stream = None
    if args.documents is not None:
        stream = sys.stdin if args.documents == "-" else open(args.documents, encoding="utf-8")  # noqa: SIM115
    try:
        client = connect(settings)
        try:
            if stream is None:
                report = warm_queries(
                    QueryEmbeddingCache(
                        client, embedder.model, embedder.model_version, settings=settings
                    ),
                    embedder,
                    QueryLog(client, settings),
                    args.top,
                    batch_size=args.batch,
                    rate_per_s=args.rate,
                    days=args.days,
                    progress=_progress(sys.stderr),
                )
            else:
                report = warm_documents(
                    DocumentEmbeddingCache(
                        client, embedder.model, embedder.model_version, settings=settings
                    ),
                    embedder,
                    read_documents(stream),
                    batch_size=args.batch,
                    rate_per_s=args.rate,
                    progress=_progress(sys.stderr),
                )
        finally:
            client.close()
    except ValueError as exc:  # a bad input line (read_documents, warm_documents)
        print(f"cachebus warm: {exc}", file=sys.stderr)
        return 1
    finally:
        if stream is not None and stream is not sys.stdin:
            stream.close()
    print(summary(report), file=out)
    return 0
