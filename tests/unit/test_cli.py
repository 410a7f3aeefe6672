"""The CLI's pure parts: error lines, URL and file checks, the worker extra's module list,
audit tail's option semantics and its time-ordered merge."""

from __future__ import annotations

import argparse
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

from cachebus.errors import CacheUnavailableError, ConfigError
from worker import audit_tail, cli
from worker.settings import WorkerSettings, check_kafka_files

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Rec:
    partition: int
    offset: int
    timestamp: int
    value: bytes | None = b"{}"


# -- errors ------------------------------------------------------------------------


def test_worker_extra_modules_match_pyproject() -> None:
    """The modules the CLI checks for are those of the extra pyproject.toml declares."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    dists = [
        d.split(">")[0].split("=")[0].split("[")[0].strip()
        for d in project["optional-dependencies"]["worker"]
    ]
    import_names = {"faust-streaming": "faust", "jsonschema-rs": "jsonschema_rs"}
    assert sorted(import_names.get(d, d.replace("-", "_")) for d in dists) == sorted(
        cli.WORKER_EXTRA_MODULES
    )


def test_missing_extra_names_the_command_and_the_install() -> None:
    error = ModuleNotFoundError("No module named 'orjson'", name="orjson")
    line = cli.describe_error(error, None, "audit")
    assert line == (
        "`cachebus audit tail` needs the worker extra (module 'orjson' is not installed): "
        "pip install 'cachebus[worker]'"
    )
    other = ModuleNotFoundError("No module named 'app'", name="app")
    assert "worker extra" not in cli.describe_error(other, None, "warm")


def test_kafka_errors_are_one_line_with_the_bootstrap() -> None:
    from aiokafka.errors import KafkaConnectionError, TopicAuthorizationFailedError

    settings = WorkerSettings(kafka_bootstrap="nosuchhost.invalid:9092")
    boot = KafkaConnectionError(
        "Unable to bootstrap from [('nosuchhost.invalid', 9092, <AddressFamily.AF_UNSPEC: 0>)]"
    )
    assert cli.describe_error(boot, settings, "publish") == (
        "cannot reach Kafka at nosuchhost.invalid:9092 (--bootstrap / "
        "CACHEBUS_KAFKA_BOOTSTRAP): no bootstrap server answered"
    )
    denied = cli.describe_error(TopicAuthorizationFailedError(), settings, "publish")
    assert denied.startswith("Kafka at nosuchhost.invalid:9092: TopicAuthorizationFailedError")
    assert "\n" not in denied


def test_secrets_never_reach_the_line() -> None:
    settings = WorkerSettings(
        redis_url="redis://app:hunter22@db:6379/0", kafka_sasl_password="kafka-pass-1"
    )
    for text in ("auth hunter22 refused", "sasl kafka-pass-1 refused"):
        line = cli.describe_error(RuntimeError(text), settings, "stats")
        assert "hunter22" not in line and "kafka-pass-1" not in line and "***" in line
    line = cli.describe_error(CacheUnavailableError("multi\nline\n  text"), settings, "gc")
    assert line == "multi line text"


def test_file_errors_name_the_path() -> None:
    error = FileNotFoundError(2, "No such file or directory", "nope.jsonl")
    assert cli.describe_error(error, None, "publish") == "nope.jsonl: No such file or directory"


@pytest.mark.parametrize(
    ("url", "needle"),
    [
        ("http://user:s3cret@host:6379/0", "scheme 'http://'"),
        ("localhost:6379", "no scheme"),
        (":s3cret@localhost:6379", "no scheme"),
        ("redis://:s3cret@host:abc/0", "port 'abc' is not a number"),
    ],
)
def test_bad_redis_urls_are_refused_without_the_password(url: str, needle: str) -> None:
    with pytest.raises(ConfigError) as caught:
        cli.check_redis_url(url)
    assert needle in str(caught.value) and "s3cret" not in str(caught.value)
    assert "CACHEBUS_REDIS_URL" in str(caught.value)


@pytest.mark.parametrize(
    "url",
    ["redis://127.0.0.1:6379/0", "rediss://u:p@h:6380", "unix:///tmp/r.sock", "redis://[::1]:7000"],
)
def test_good_redis_urls_pass(url: str) -> None:
    cli.check_redis_url(url)


def test_kafka_cafile_is_checked_with_its_path(tmp_path: Path) -> None:
    check_kafka_files(WorkerSettings())  # not set: nothing to check
    with pytest.raises(ConfigError, match=r"CACHEBUS_KAFKA_SSL_CAFILE '/nope\.pem': no such file"):
        check_kafka_files(
            WorkerSettings(kafka_security_protocol="SSL", kafka_ssl_cafile="/nope.pem")
        )
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    with pytest.raises(ConfigError, match="no usable PEM CA certificate"):
        check_kafka_files(WorkerSettings(kafka_security_protocol="SSL", kafka_ssl_cafile=str(junk)))


def test_debug_flag_works_before_and_after_the_command() -> None:
    parser = cli.build_parser()
    assert parser.parse_args(["--debug", "gc"]).debug is True
    assert parser.parse_args(["gc", "--debug"]).debug is True
    assert parser.parse_args(["gc"]).debug is False


# -- audit tail ----------------------------------------------------------------------


def _tail_options(*argv: str) -> audit_tail.TailOptions:
    parser = argparse.ArgumentParser()
    audit_tail.register(parser.add_subparsers(dest="command"), cli._add_common)
    return audit_tail.options_from(parser.parse_args(["audit", "tail", *argv]))


def test_tail_flags() -> None:
    """No flag follows; -n / --from-beginning print what is there and exit unless -f;
    -m is a separate "stop after N"."""
    assert _tail_options() == audit_tail.TailOptions(follow=True)
    assert _tail_options("-n", "5") == audit_tail.TailOptions(last=5, follow=False)
    assert _tail_options("-n", "5", "-f").follow
    assert _tail_options("--from-beginning") == audit_tail.TailOptions(
        from_beginning=True, follow=False
    )
    assert _tail_options("-m", "3") == audit_tail.TailOptions(max_count=3, follow=True)
    with pytest.raises(ConfigError, match="-n -1"):
        _tail_options("-n", "-1")


def test_time_merge_releases_in_timestamp_order_only_when_certain() -> None:
    merge = audit_tail.TimeMerge([0, 1])
    merge.push(0, [Rec(0, 0, 10), Rec(0, 1, 30)])
    assert list(merge.ready()) == []  # partition 1 may still hold something older
    assert merge.wanted() == [1]
    merge.push(1, [Rec(1, 0, 5), Rec(1, 1, 20)])
    assert [r.timestamp for r in merge.ready()] == [5, 10, 20]  # then p1 is empty again
    assert merge.wanted() == [1]
    merge.done(1)
    assert [r.timestamp for r in merge.ready()] == [30]
    merge.done(0)
    assert merge.finished


def test_time_merge_breaks_ties_by_partition_and_offset() -> None:
    merge = audit_tail.TimeMerge([0, 1])
    merge.push(1, [Rec(1, 7, 1)])
    merge.push(0, [Rec(0, 9, 1)])
    merge.done(0)
    merge.done(1)
    assert [(r.partition, r.offset) for r in merge.ready()] == [(0, 9), (1, 7)]


def test_last_n_over_partitions_oldest_first() -> None:
    p0 = [Rec(0, i, t) for i, t in enumerate([1, 4, 9])]
    p1 = [Rec(1, i, t) for i, t in enumerate([2, 3, 8, 10])]
    assert [r.timestamp for r in audit_tail.last_n([p0, p1], 3)] == [8, 9, 10]
    assert audit_tail.last_n([p0, p1], 0) == []
    assert len(audit_tail.last_n([p0, p1], 100)) == 7
