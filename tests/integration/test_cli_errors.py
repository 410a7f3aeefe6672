"""Every bad input a newcomer or an operator hits gives one line on stderr naming the
problem, a non-zero exit and no traceback (``--debug`` adds it); secrets never show.

The CLI runs in a subprocess, as ``cachebus`` does. Services are real: an unreachable
Kafka is a name that does not resolve or a closed port; Redis is a real redis-server.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from devtools.redis_servers import RedisServer

ROOT = Path(__file__).resolve().parents[2]
NO_KAFKA = "nosuchhost.invalid:9092"
WORKER_EXTRA = ("faust", "aiokafka", "structlog", "jsonschema_rs", "orjson",
                "prometheus_client", "tqdm", "mode", "aiohttp")


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CACHEBUS_")}
    return {**env, **extra}


def _cli(*argv: str, env: dict[str, str] | None = None, timeout: float = 60,
         stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "worker.cli", *argv],
        capture_output=True, text=True, env=env or _env(), cwd=ROOT, timeout=timeout,
        input=stdin,
    )


def _without_extra(*argv: str, env: dict[str, str] | None = None,
                   timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """The CLI as in a base install: the worker extra's modules cannot be imported."""
    code = (
        "import sys\n"
        f"for name in {WORKER_EXTRA!r}: sys.modules[name] = None\n"
        "from worker.cli import main\n"
        "raise SystemExit(main(sys.argv[1:]))\n"
    )
    return subprocess.run(
        [sys.executable, "-c", code, *argv],
        capture_output=True, text=True, env=env or _env(), cwd=ROOT, timeout=timeout,
    )


def _one_line(result: subprocess.CompletedProcess[str], *needles: str, code: int = 2) -> str:
    """Exit ``code``, exactly one line on stderr containing every needle, no traceback."""
    lines = result.stderr.splitlines()
    assert result.returncode == code, (result.returncode, result.stderr)
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert "Unclosed" not in result.stderr
    line = lines[0]
    assert line.startswith("cachebus: "), line
    for needle in needles:
        assert needle in line, (needle, line)
    return line


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


# -- Kafka unreachable ---------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ("publish", "--bootstrap", NO_KAFKA),
        ("audit", "tail", "--bootstrap", NO_KAFKA),
        ("audit", "tail", "--from-beginning", "--bootstrap", NO_KAFKA),
        ("replay", "--dry-run", "--quiet", "--bootstrap", NO_KAFKA),
        ("replay", "--quiet", "--bootstrap", NO_KAFKA),
    ],
    ids=["publish", "audit-tail", "audit-tail-from-beginning", "replay-dry-run", "replay"],
)
def test_kafka_unreachable(argv: tuple[str, ...]) -> None:
    """`Unable to bootstrap`: one line naming the address, no `Unclosed AIOKafka...`."""
    result = _cli(*argv, stdin='{"event_type": "created"}\n')
    _one_line(result, f"cannot reach Kafka at {NO_KAFKA}", "CACHEBUS_KAFKA_BOOTSTRAP")


def test_kafka_closed_port_from_the_environment() -> None:
    bootstrap = f"127.0.0.1:{_closed_port()}"
    result = _cli("audit", "tail", "-n", "5", env=_env(CACHEBUS_KAFKA_BOOTSTRAP=bootstrap))
    _one_line(result, f"cannot reach Kafka at {bootstrap}")


# -- files -------------------------------------------------------------------------------


def test_publish_missing_file_names_it(tmp_path: Path) -> None:
    missing = tmp_path / "nope.jsonl"
    _one_line(_cli("publish", str(missing), "--bootstrap", NO_KAFKA), str(missing),
              "No such file or directory")


@pytest.mark.parametrize("protocol", ["SSL", "SASL_SSL", "PLAINTEXT"])
def test_missing_kafka_cafile_names_the_path(protocol: str) -> None:
    env = _env(CACHEBUS_KAFKA_SSL_CAFILE="/nope.pem", CACHEBUS_KAFKA_SECURITY_PROTOCOL=protocol,
               CACHEBUS_KAFKA_SASL_MECHANISM="PLAIN")
    for argv in (("publish",), ("audit", "tail"), ("replay", "--dry-run")):
        _one_line(_cli(*argv, "--bootstrap", NO_KAFKA, env=env, stdin=""),
                  "CACHEBUS_KAFKA_SSL_CAFILE '/nope.pem': no such file")


def test_warm_missing_documents_file(redis_server: RedisServer, tmp_path: Path) -> None:
    missing = tmp_path / "scheduled.jsonl"
    result = _cli("warm", "--documents", str(missing), "--demo-embedder",
                  "--redis-url", redis_server.url)
    _one_line(result, str(missing), "No such file or directory")


# -- Redis -------------------------------------------------------------------------------


@pytest.mark.parametrize("command", [("stats",), ("gc",), ("verify",), ("warm", "--top", "3",
                                      "--demo-embedder"), ("replay", "--dry-run")])
def test_http_redis_url_names_the_scheme_not_the_password(command: tuple[str, ...]) -> None:
    result = _cli(*command, "--redis-url", "http://app:s3cret-pw@cache:6379/0",
                  "--bootstrap", NO_KAFKA)
    line = _one_line(result, "'http://app:***@cache:6379/0'", "scheme 'http://'",
                     "redis://, rediss://")
    assert "s3cret-pw" not in line


def test_http_redis_url_from_the_environment() -> None:
    env = _env(CACHEBUS_REDIS_URL="http://:s3cret-pw@cache:6379/0")
    line = _one_line(_cli("gc", "--dry-run", env=env), "CACHEBUS_REDIS_URL", "scheme 'http://'")
    assert "s3cret-pw" not in line


def test_redis_unreachable_is_one_line_without_the_password() -> None:
    port = _closed_port()
    url = f"redis://:s3cret-pw@127.0.0.1:{port}/0"
    result = _cli("gc", "--redis-url", url)
    line = _one_line(result, "cannot reach Redis at redis://", f"***@127.0.0.1:{port}")
    assert "s3cret-pw" not in line


def test_redis_wrong_password() -> None:
    """A server with a password, the wrong one given: one line, the password hidden."""
    with RedisServer(extra_config=["requirepass right-pass"], use_env=False) as locked:
        url = locked.url.replace("redis://", "redis://:wrong-pass@", 1)
        line = _one_line(_cli("stats", "--no-kafka", "--redis-url", url), "refused the credentials")
    assert "wrong-pass" not in line and "right-pass" not in line


# -- configuration -----------------------------------------------------------------------


def test_bad_setting_from_the_environment() -> None:
    env = _env(CACHEBUS_TOPIC_PARTITIONS="six")
    _one_line(_cli("publish", env=env, stdin=""), "CACHEBUS_TOPIC_PARTITIONS='six'", "int")


def test_warm_without_an_embedder_is_refused(redis_server: RedisServer, tmp_path: Path) -> None:
    """No silent HashingEmbedder vectors in a real cache."""
    docs = tmp_path / "docs.jsonl"
    docs.write_text('{"doc_id": "d", "chunks": [{"chunk_id": "c", "text": "t"}]}\n')
    result = _cli("warm", "--documents", str(docs), "--redis-url", redis_server.url)
    _one_line(result, "--embedder module:attr", "CACHEBUS_EMBEDDER", "--demo-embedder")


def test_usage_error_exits_2() -> None:
    result = _cli("audit", "tail", "-n", "many")
    assert result.returncode == 2 and "invalid int value: 'many'" in result.stderr
    assert "Traceback" not in result.stderr


# -- --debug -------------------------------------------------------------------------------


def test_debug_prints_the_traceback_then_the_line(tmp_path: Path) -> None:
    missing = tmp_path / "nope.jsonl"
    result = _cli("publish", str(missing), "--debug")
    assert result.returncode == 2
    assert "Traceback (most recent call last)" in result.stderr
    assert result.stderr.splitlines()[-1] == f"cachebus: {missing}: No such file or directory"
    result = _cli("--debug", "audit", "tail", "--bootstrap", NO_KAFKA)
    assert result.returncode == 2 and "KafkaConnectionError" in result.stderr


# -- without the worker extra ----------------------------------------------------------------


def test_base_install_help_version_and_library_commands(redis_server: RedisServer) -> None:
    """With the worker extra absent: --help, --version, stats, verify, gc, warm and acl
    work; the worker's commands say which extra to install."""
    for argv in (("--help",), ("stats", "--help"), ("audit", "tail", "--help"),
                 ("replay", "--help"), ("publish", "--help")):
        result = _without_extra(*argv)
        assert result.returncode == 0 and "usage: cachebus" in result.stdout, result.stderr
    version = _without_extra("--version")
    assert version.returncode == 0 and version.stdout.startswith("cachebus 0.")

    url = ("--redis-url", redis_server.url, "--prefix", "baseinstall")
    stats = _without_extra("stats", "--no-kafka", *url)
    assert stats.returncode == 0 and "consistency" in stats.stdout, stats.stderr
    verify = _without_extra("verify", *url)
    assert verify.returncode == 0 and "consistency: no checks" in verify.stdout, verify.stderr
    gc = _without_extra("gc", "--dry-run", *url)
    assert gc.returncode == 0 and "stamps: 0 scanned" in gc.stdout, gc.stderr
    warm = _without_extra("warm", "--top", "5", "--demo-embedder", *url)
    assert warm.returncode == 0 and warm.stdout.startswith("warmed 0"), warm.stderr
    acl = _without_extra("acl", "--nopass", "--prefix", "baseinstall")
    assert acl.returncode == 0 and "~baseinstall:*" in acl.stdout, acl.stderr

    for argv, name in ((("publish", "x.jsonl"), "publish"), (("audit", "tail"), "audit tail"),
                       (("replay", "--dry-run"), "replay"), (("worker",), "worker")):
        _one_line(_without_extra(*argv), f"`cachebus {name}` needs the worker extra",
                  "pip install 'cachebus[worker]'")
