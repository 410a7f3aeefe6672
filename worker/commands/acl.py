"""``cachebus acl``: print (or apply) the least-privilege Redis ACL user for a
key prefix and a role. See :mod:`cachebus.acl` and docs/security.md.

The password is read from an environment variable (``--password-env VAR``)
and only its SHA-256 is printed (``#<hex>``, which ``ACL SETUSER`` and ACL
files accept): the plain text never reaches the terminal, shell history or logs.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import Any, TextIO

from redis.exceptions import RedisError

from cachebus.acl import (
    DEFAULT_USER,
    ROLES,
    acl_file_line,
    acl_rules,
    commands_for,
    password_sha256,
    reasons,
    setuser_command,
    setuser_text,
    validate_user,
)
from cachebus.connection import connect
from cachebus.errors import ConfigError
from cachebus.runner import translate
from cachebus.settings import Settings

FORMATS = ("both", "command", "file", "rules")


def register(subparsers: Any, add_common: Callable[[argparse.ArgumentParser], None]) -> None:
    """Add ``cachebus acl``."""
    p = subparsers.add_parser(
        "acl",
        help="print the least-privilege Redis ACL user (ACL SETUSER / users.acl line)",
        description=(
            "Print the ACL SETUSER command and the equivalent users.acl / redis.conf line "
            "for a Redis user fenced to '<prefix>:*' keys with only the commands the role "
            "needs. The password is taken from an environment variable and printed only "
            "as its SHA-256."
        ),
    )
    add_common(p)
    p.add_argument("--user", default=DEFAULT_USER, help=f"ACL user name (default {DEFAULT_USER})")
    p.add_argument(
        "--role",
        choices=ROLES,
        default="worker",
        help="worker (worker, replay), library (search services, warming) or operator "
        "(everything, plus cachebus stats); default worker",
    )
    secret = p.add_mutually_exclusive_group()
    secret.add_argument(
        "--password-env",
        metavar="VAR",
        help="environment variable holding the user's password (never printed)",
    )
    secret.add_argument(
        "--nopass",
        action="store_true",
        help="a user without password (anyone who can connect may use it; not recommended)",
    )
    p.add_argument(
        "--redis-version",
        default="7.0",
        help="oldest Redis version the rules must load on (7.2+ adds CLIENT SETINFO); default 7.0",
    )
    p.add_argument(
        "--format",
        choices=FORMATS,
        default="both",
        help="both (default), command (ACL SETUSER), file (users.acl line) or rules (one a line)",
    )
    p.add_argument(
        "--explain", action="store_true", help="list each granted command and why, then exit"
    )
    p.add_argument(
        "--apply",
        action="store_true",
        help="run ACL SETUSER on the Redis of --redis-url / CACHEBUS_REDIS_URL (an admin "
        "user); on a cluster (CACHEBUS_REDIS_CLUSTER) on every node",
    )
    p.set_defaults(run=run)


def _rules(settings: Settings, args: argparse.Namespace) -> list[str]:
    if args.nopass:
        return acl_rules(
            settings.prefix, nopass=True, role=args.role, redis_version=args.redis_version
        )
    if not args.password_env:
        raise ConfigError(
            "cachebus acl needs --password-env VAR (the variable holding the password) "
            "or, explicitly, --nopass"
        )
    password = os.environ.get(args.password_env)
    if not password:
        raise ConfigError(f"--password-env {args.password_env}: the variable is unset or empty")
    return acl_rules(
        settings.prefix,
        password_sha256=password_sha256(password),
        role=args.role,
        redis_version=args.redis_version,
    )


def explain(role: str, redis_version: str = "7.0") -> str:
    """One line per granted command: the command and why the role needs it."""
    why = reasons()
    names = commands_for(role, redis_version=redis_version)
    width = max(len(n) for n in names) + 1
    return "\n".join(f"+{name:<{width}} {why[name]}" for name in names)


def apply(settings: Settings, user: str, rules: list[str]) -> int:
    """Run ``ACL SETUSER`` on the server (every node of a cluster). Returns the
    number of nodes changed."""
    command = setuser_command(user, rules)
    client = connect(settings)
    try:
        if settings.redis_cluster:
            nodes = client.get_nodes()  # type: ignore[union-attr]
            for node in nodes:
                node.redis_connection.execute_command(*command)
            return len(nodes)
        client.execute_command(*command)  # type: ignore[no-untyped-call]
        return 1
    except RedisError as exc:
        raise translate(exc) from exc
    finally:
        client.close()


def run(settings: Settings, args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Print the user's rules (and apply them with ``--apply``)."""
    out = out or sys.stdout
    user = validate_user(args.user)
    if args.explain:
        print(explain(args.role, args.redis_version), file=out)
        return 0
    rules = _rules(settings, args)
    if args.format in ("both", "command"):
        print(setuser_text(user, rules), file=out)
    if args.format in ("both", "file"):
        print(acl_file_line(user, rules), file=out)
    if args.format == "rules":
        print("\n".join(rules), file=out)
    if args.apply:
        nodes = apply(settings, user, rules)
        print(
            f"cachebus acl: user {user!r} (role {args.role}, keys {settings.prefix}:*) set on "
            f"{nodes} node(s); persist it with ACL SAVE (aclfile) or CONFIG REWRITE",
            file=sys.stderr,
        )
    return 0
