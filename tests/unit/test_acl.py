"""acl_rules and ``cachebus acl`` without a server (the rules are exercised on real
servers in tests/integration/test_security.py)."""

from __future__ import annotations

import argparse
import hashlib
import io

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cachebus.acl import (
    FORBIDDEN,
    ROLES,
    acl_file_line,
    acl_rules,
    commands_for,
    key_pattern,
    password_sha256,
    reasons,
    setuser_command,
    setuser_text,
)
from cachebus.errors import ConfigError
from cachebus.settings import Settings
from worker.cli import _add_common
from worker.commands import acl as acl_cli

BROAD = {
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
    "acl",
    "monitor",
    "select",
    "client|kill",
    "cluster|reset",
}


@pytest.mark.parametrize("role", ROLES)
def test_no_broad_commands_in_any_role(role: str) -> None:
    rules = acl_rules("cb", password="pw", role=role, redis_version="8.0")
    grants = {r[1:] for r in rules if r.startswith("+")}
    assert not grants & BROAD
    assert not grants & FORBIDDEN
    assert not any(g.startswith("@") for g in grants)  # no categories, only commands
    # Subcommand grants only where the container command is dangerous.
    assert "script|load" in grants and "script" not in grants
    assert "memory|usage" not in grants or role == "operator"
    for word in ("allkeys", "allcommands", "allchannels", "~*", "&*", "+@all", "nocommands"):
        assert word not in rules


@pytest.mark.parametrize("role", ROLES)
def test_rule_order_and_fences(role: str) -> None:
    rules = acl_rules("cb", password="pw", role=role)
    assert rules[:7] == ["reset", "on", ">pw", "resetkeys", "~cb:*", "resetchannels", "-@all"]
    assert all(r.startswith("+") for r in rules[7:])
    assert rules[7:] == sorted(rules[7:])
    assert [r for r in rules if r.startswith(("~", "%", "&"))] == ["~cb:*"]


def test_roles_differ_as_documented() -> None:
    lib, work, ops = (set(commands_for(r)) for r in ("library", "worker", "operator"))
    assert lib <= ops and work <= ops
    assert "scan" in work and "scan" not in lib  # pattern-scan invalidation
    assert "zincrby" in lib and "zincrby" not in work  # the query log
    assert {"info", "memory|usage", "hgetall", "smembers"} <= ops - lib - work  # cachebus stats
    # The Lua scripts' inner commands are granted to everyone who calls them.
    for role in (lib, work):
        assert {"evalsha", "script|load", "get", "set", "incr", "time", "hlen", "unlink"} <= role
        assert {"cluster|slots", "command", "asking", "ping"} <= role
    assert {"hset", "expire", "del"} <= lib  # conditional write, lease release


def test_every_grant_has_a_reason() -> None:
    why = reasons()
    for role in ROLES:
        for name in commands_for(role, redis_version="7.2"):
            assert why[name].strip()


def test_client_setinfo_only_for_redis_7_2_and_newer() -> None:
    assert "client|setinfo" not in commands_for("worker", redis_version="7.0")
    assert "client|setinfo" in commands_for("worker", redis_version="7.2")
    assert "client|setinfo" in commands_for("worker", redis_version="8.2.1")
    for bad in ("6.2", "seven", ""):
        with pytest.raises(ConfigError):
            commands_for("worker", redis_version=bad)


@pytest.mark.parametrize(
    "prefix", ["", "a*", "a?", "a[b]", "a\\b", "a b", "a:b", "{cb}", "x" * 65, "é"]
)
def test_prefix_is_validated(prefix: str) -> None:
    with pytest.raises(ConfigError):
        acl_rules(prefix, password="pw")


@given(st.from_regex(r"[A-Za-z0-9_.-]{1,64}", fullmatch=True))
def test_key_pattern_is_exactly_the_prefix(prefix: str) -> None:
    pattern = key_pattern(prefix)
    assert pattern == f"~{prefix}:*"
    assert not any(c in pattern[1:-1] for c in "*?[]\\")  # only the trailing '*' is a glob


def test_password_choices() -> None:
    assert ">s3cret" in acl_rules("cb", password="s3cret")
    digest = hashlib.sha256(b"s3cret").hexdigest()
    assert password_sha256("s3cret") == digest
    assert f"#{digest}" in acl_rules("cb", password_sha256=digest.upper())
    assert "nopass" in acl_rules("cb", nopass=True)
    with pytest.raises(ConfigError, match="exactly one"):
        acl_rules("cb")  # no silent passwordless user
    with pytest.raises(ConfigError, match="exactly one"):
        acl_rules("cb", password="pw", nopass=True)
    for bad in ("", "has space", "tab\there"):
        with pytest.raises(ConfigError):
            acl_rules("cb", password=bad)
    with pytest.raises(ConfigError, match="64 hex"):
        acl_rules("cb", password_sha256="abc")
    with pytest.raises(ConfigError, match="role"):
        acl_rules("cb", password="pw", role="admin")


def test_command_and_file_line() -> None:
    rules = acl_rules("cb", password="pw", role="worker")
    assert setuser_command("cachebus", rules) == ["ACL", "SETUSER", "cachebus", *rules]
    assert setuser_text("cachebus", rules) == "ACL SETUSER cachebus " + " ".join(rules)
    assert acl_file_line("cachebus", rules) == "user cachebus " + " ".join(rules)
    for bad in ("", "with space", "a;b", "x" * 65):
        with pytest.raises(ConfigError):
            acl_file_line(bad, rules)


# -- cachebus acl ---------------------------------------------------------------


def _run(*argv: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    parser = argparse.ArgumentParser(prog="cachebus")
    acl_cli.register(parser.add_subparsers(dest="command"), _add_common)
    args = parser.parse_args(["acl", *argv])
    settings = Settings.from_env(env or {}, **({"prefix": args.prefix} if args.prefix else {}))
    out = io.StringIO()
    code = acl_cli.run(settings, args, out)
    return code, out.getvalue()


def test_cli_prints_command_and_file_line_without_the_password(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CB_PW", "very-secret-pw")
    code, out = _run("--prefix", "search", "--user", "svc", "--password-env", "CB_PW")
    assert code == 0
    command, line = out.strip().splitlines()
    digest = hashlib.sha256(b"very-secret-pw").hexdigest()
    assert command.startswith("ACL SETUSER svc reset on #" + digest)
    assert line.startswith("user svc reset on #" + digest)
    assert "~search:*" in command and "+scan" in command  # role worker by default
    assert "very-secret-pw" not in out


def test_cli_roles_formats_and_prefix_from_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CB_PW", "pw")
    code, out = _run("--role", "library", "--password-env", "CB_PW", "--format", "command")
    assert code == 0 and out.count("\n") == 1 and "~cb:*" in out and "+zincrby" in out
    code, out = _run("--nopass", "--format", "rules", "--prefix", "p1")
    assert out.splitlines()[:3] == ["reset", "on", "nopass"] and "~p1:*" in out
    code, out = _run("--role", "operator", "--explain")
    assert "+info" in out and "INFO memory" in out and "+keys" not in out


def test_cli_refuses_missing_password(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="--password-env"):
        _run()
    monkeypatch.delenv("CB_UNSET", raising=False)
    with pytest.raises(ConfigError, match="unset or empty"):
        _run("--password-env", "CB_UNSET")
    with pytest.raises(SystemExit):
        _run("--password-env", "X", "--nopass")  # mutually exclusive
    with pytest.raises(SystemExit):
        _run("--role", "root", "--nopass")
