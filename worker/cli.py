"""The ``cachebus`` command: worker, publish, audit tail, replay, warm, stats, verify,
acl, gc.

Errors are one line on stderr (``cachebus: ...``) and a non-zero exit; ``--debug``
adds the traceback. Exit codes:

* 0: done;
* 1: the command ran and the answer is no: ``verify`` found violations (or too few
  checks), ``publish`` refused invalid lines, ``warm`` found a bad input line;
* 2: it could not run: a usage error, bad configuration, a missing file, Redis or Kafka
  unreachable or refusing, the worker extra not installed;
* 130: interrupted (Ctrl-C), except ``audit tail``, which exits 0 on Ctrl-C / SIGTERM;
* ``cachebus worker`` itself: see docs/operations.md (70 after an unexpected error).

Only the base dependencies (redis, numpy) are imported at start: ``--help``,
``--version``, ``stats``, ``verify``, ``warm``, ``acl`` and ``gc`` work without the
worker extra; ``worker``, ``publish``, ``audit tail`` and ``replay`` say which extra to
install.

Every subcommand is a module with ``register(subparsers, add_common)``, listed in
:data:`worker.commands.COMMAND_MODULES` (the convention is stated there); this module
parses, checks the configuration and turns errors into one line.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import logging
import os
import sys
import traceback
from collections.abc import Sequence
from typing import Any, Final

from cachebus.errors import CacheBusError, ConfigError
from cachebus.settings import redact_url

from .audit_tail import format_audit as format_audit
from .commands import COMMAND_MODULES as COMMAND_MODULES
from .settings import WorkerSettings, check_kafka_files

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_ERROR: Final = 2
EXIT_INTERRUPTED: Final = 130

WORKER_EXTRA_INSTALL: Final = "pip install 'cachebus[worker]'"
WORKER_EXTRA_MODULES: Final = (
    "faust",
    "aiokafka",
    "structlog",
    "jsonschema_rs",
    "orjson",
    "prometheus_client",
    "tqdm",
)
"""Top-level modules of the ``worker`` extra's distributions (pyproject.toml)."""
_EXTRA_IMPORTS: Final = frozenset({*WORKER_EXTRA_MODULES, "mode", "aiohttp"})
"""A ModuleNotFoundError for one of these means the worker extra is missing."""

WORKER_COMMANDS: Final = frozenset({"worker", "publish", "audit", "replay"})
"""Commands that need the worker extra."""
REDIS_COMMANDS: Final = frozenset({"worker", "replay", "stats", "warm", "gc", "verify"})
KAFKA_COMMANDS: Final = frozenset({"worker", "publish", "audit", "replay", "stats"})


def _settings(args: argparse.Namespace) -> WorkerSettings:
    overrides: dict[str, Any] = {}
    for name in ("kafka_bootstrap", "redis_url", "prefix", "rules_file", "consumer_group"):
        value = getattr(args, name, None)
        if value:
            overrides[name] = value
    return WorkerSettings.from_env(**overrides)


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bootstrap", dest="kafka_bootstrap", help="Kafka bootstrap servers")
    parser.add_argument("--redis-url", help="Redis URL (redis://, rediss:// or unix://)")
    parser.add_argument("--prefix", help="key prefix")
    parser.add_argument(
        "--debug",
        action="store_true",
        default=argparse.SUPPRESS,
        help="print the traceback of an error, and library log lines",
    )


# -- checks ------------------------------------------------------------------


def missing_worker_modules() -> list[str]:
    """The worker extra's modules that cannot be imported here."""
    return [name for name in WORKER_EXTRA_MODULES if importlib.util.find_spec(name) is None]


class MissingExtraError(CacheBusError):
    """A command needs the ``worker`` extra."""

    def __init__(self, command: str, module: str) -> None:
        name = "audit tail" if command == "audit" else command
        super().__init__(
            f"`cachebus {name}` needs the worker extra (module {module!r} is not "
            f"installed): {WORKER_EXTRA_INSTALL}"
        )


def _safe_url(url: str) -> str:
    """The URL for an error message: password replaced, also without a scheme."""
    if "://" in url:
        return redact_url(url)
    return "***@" + url.rpartition("@")[2] if "@" in url else url


def check_redis_url(url: str) -> None:
    """ConfigError naming the URL (password redacted) unless redis-py can use it."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in ("redis", "rediss", "unix"):
        got = f"scheme {scheme + '://'!r}" if sep else "no scheme"
        raise ConfigError(
            f"Redis URL {_safe_url(url)!r} (--redis-url / CACHEBUS_REDIS_URL) has {got}: "
            "use redis://, rediss:// (TLS) or unix://"
        )
    host = rest.split("/", 1)[0].rpartition("@")[2]
    port = host.rpartition("]")[2].partition(":")[2] if host.startswith("[") else (
        host.partition(":")[2]
    )
    if scheme.lower() != "unix" and port and not port.isdigit():
        raise ConfigError(
            f"Redis URL {_safe_url(url)!r} (--redis-url / CACHEBUS_REDIS_URL): port "
            f"{port!r} is not a number"
        )


def _preflight(command: str, args: argparse.Namespace, settings: WorkerSettings) -> None:
    if command in WORKER_COMMANDS:
        missing = missing_worker_modules()
        if missing:
            raise MissingExtraError(command, missing[0])
    if command in REDIS_COMMANDS or (command == "acl" and getattr(args, "apply", False)):
        check_redis_url(settings.redis_url)
    if command in KAFKA_COMMANDS and not getattr(args, "no_kafka", False):
        check_kafka_files(settings)


# -- errors ------------------------------------------------------------------


def _secrets(settings: WorkerSettings | None) -> list[str]:
    if settings is None:
        return []
    found = [settings.kafka_sasl_password]
    rest = settings.redis_url.partition("://")[2]
    userinfo = rest.rpartition("@")[0] if "@" in rest.split("/", 1)[0] else ""
    found.append(userinfo.partition(":")[2])
    return [s for s in found if len(s) >= 3]


def describe_error(exc: BaseException, settings: WorkerSettings | None, command: str) -> str:
    """One line for an error: what failed and, where it helps, what to check. Secrets
    (the Redis password, Kafka's SASL password) are replaced by ``***``."""
    if isinstance(exc, ModuleNotFoundError) and (exc.name or "").partition(".")[0] in (
        _EXTRA_IMPORTS
    ):
        text = str(MissingExtraError(command, exc.name or "?"))
    elif isinstance(exc, CacheBusError):
        text = str(exc)
    elif type(exc).__module__.startswith("aiokafka"):
        text = _kafka_error(exc, settings)
    elif isinstance(exc, OSError) and exc.filename is not None:
        text = f"{exc.filename}: {exc.strerror or exc}"
    elif isinstance(exc, ValueError) and "Redis URL" in str(exc) and settings is not None:
        text = f"Redis URL {_safe_url(settings.redis_url)!r}: {exc}"
    elif isinstance(exc, TimeoutError):
        text = f"timed out: {exc}" if str(exc) else "timed out"
    else:
        text = f"{type(exc).__name__}: {exc} (run with --debug for the traceback)"
    for secret in _secrets(settings):
        text = text.replace(secret, "***")
    return " ".join(text.split())


def _kafka_error(exc: BaseException, settings: WorkerSettings | None) -> str:
    where = f" at {settings.kafka_bootstrap}" if settings is not None else ""
    name = type(exc).__name__
    text = str(exc)
    if text.startswith(f"{name}: "):  # aiokafka's errors start with their class name
        text = text[len(name) + 2 :]
    if name == "KafkaConnectionError":
        if text.startswith("Unable to bootstrap"):
            text = "no bootstrap server answered"
        return (
            f"cannot reach Kafka{where} (--bootstrap / CACHEBUS_KAFKA_BOOTSTRAP): "
            f"{text or 'connection failed'}"
        )
    return f"Kafka{where}: {name}" + (f": {text}" if text else "")


def _configure_logging(debug: bool) -> None:
    """Library log lines (aiokafka's connection errors, redis retries) would add lines
    to a one-line error: shown with --debug only."""
    root = logging.getLogger()
    if debug:
        logging.basicConfig(
            level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr
        )
    else:
        root.addHandler(logging.NullHandler())
        root.setLevel(logging.CRITICAL)


# -- main --------------------------------------------------------------------


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("cachebus")
    except PackageNotFoundError:  # a source tree that is not installed
        from cachebus import __version__

        return __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cachebus",
        description="Event-driven cache invalidation for embedding caches.",
        epilog=(
            "Exit codes: 0 done; 1 the command's answer is no (verify found violations, "
            "publish refused lines); 2 it could not run (usage, configuration, a missing "
            "file, Redis or Kafka unreachable, the worker extra missing); 130 Ctrl-C."
        ),
    )
    parser.add_argument("--version", action="version", version=f"cachebus {_version()}")
    parser.add_argument(
        "--debug", action="store_true", help="print the traceback of an error, and log lines"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    # One convention for every command (see worker.commands).
    for module in COMMAND_MODULES:
        importlib.import_module(module).register(sub, _add_common)
    return parser


def _dispatch(args: argparse.Namespace, settings: WorkerSettings) -> int:
    code: int = args.run(settings, args)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    debug = bool(getattr(args, "debug", False))
    command = str(args.command)
    if command != "worker":  # the worker configures its own (JSON) logs
        _configure_logging(debug)
    settings: WorkerSettings | None = None
    try:
        settings = _settings(args)
        _preflight(command, args, settings)
        return _dispatch(args, settings)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # e.g. `cachebus audit tail | head`
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK
    except Exception as exc:
        if debug:
            traceback.print_exc()
        print(f"cachebus: {describe_error(exc, settings, command)}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    raise SystemExit(main())
