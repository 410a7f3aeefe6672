"""The ``cachebus`` command's subcommands, one module each (:mod:`worker.cli` is the entry
point: parsing, configuration checks, one-line errors, exit codes).

One convention: every command module exposes ``register(subparsers, add_common)``, which
adds its subcommand, calls ``add_common`` on it (``--bootstrap``, ``--redis-url``,
``--prefix``, ``--debug``) and sets ``run(settings, args) -> exit code`` as the parser
default. Importing a command module needs the base dependencies only (redis, numpy): what
the worker extra provides (faust, aiokafka, ...) is imported inside ``run``, so ``--help``
and the library commands work without the extra.

The commands that exist only as commands live here (``worker``, ``publish``, ``acl``,
``gc``); the others are modules of their own concern that also register a command.
"""

from __future__ import annotations

COMMAND_MODULES: tuple[str, ...] = (
    "worker.commands.worker",
    "worker.commands.publish",
    "worker.audit_tail",
    "worker.replay",
    "worker.stats",
    "worker.warm",
    "worker.commands.acl",
    "worker.commands.gc",
    "worker.verify",
)
"""Every command module, in ``cachebus --help`` order."""
