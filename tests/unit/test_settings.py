"""Settings refuse unsafe configurations and never print secrets."""

from __future__ import annotations

from dataclasses import fields

import pytest

from cachebus import ConfigError, Settings
from cachebus.services import check_model
from cachebus.settings import redact_url
from worker.settings import WorkerSettings


class TestSafeTtls:
    def test_entry_ttl_plus_ticket_age_must_fit_in_stamp_ttl(self) -> None:
        """An entry must not outlive the stamps that guard it, for every stamped layer."""
        from cachebus.settings import STAMPED_TTLS  # every tagged layer of the registry

        assert {"search_results_ttl", "rerank_scores_ttl", "document_embedding_ttl"} <= set(
            STAMPED_TTLS
        )
        base: dict[str, float] = {"stamp_ttl": 4, "max_ticket_age": 3}
        base.update(dict.fromkeys(STAMPED_TTLS, 1))
        Settings(**base).validated()  # 1 + 3 <= 4
        for name in STAMPED_TTLS:
            with pytest.raises(ConfigError, match=name):
                Settings(**{**base, name: 2}).validated()

    def test_issue_configuration_is_refused(self) -> None:
        """stamp_ttl 4 s, entry TTLs 4 s, max_ticket_age 3 s: refused."""
        with pytest.raises(ConfigError, match=r"exceeds stamp_ttl"):
            Settings(
                stamp_ttl=4,
                search_results_ttl=4,
                rerank_scores_ttl=4,
                document_embedding_ttl=4,
                max_ticket_age=3,
            ).validated()

    def test_from_env_validates(self) -> None:
        with pytest.raises(ConfigError):
            Settings.from_env({"CACHEBUS_STAMP_TTL": "3600"})  # < 30 d document embeddings

    def test_durability_settings(self) -> None:
        s = Settings.from_env(
            {"CACHEBUS_DURABILITY_REPLICAS": "2", "CACHEBUS_DURABILITY_FSYNC": "true"}
        )
        assert (s.durability_replicas, s.durability_fsync) == (2, True)
        with pytest.raises(ConfigError):
            Settings(durability_replicas=-1).validated()
        with pytest.raises(ConfigError):
            Settings(durability_timeout_ms=0).validated()


class TestSecrets:
    def test_repr_hides_passwords(self) -> None:
        """Both secrets, the Redis URL's password and Kafka's SASL password (a worker
        setting), are hidden in the worker's settings."""
        s = WorkerSettings(
            redis_url="redis://worker:s3cr3t@redis:6379/0", kafka_sasl_password="k@fka-pw"
        )
        text = repr(s)
        assert text.startswith("WorkerSettings(")
        assert "s3cr3t" not in text and "k@fka-pw" not in text
        assert "redis://worker:***@redis:6379/0" in text and "kafka_sasl_password='***'" in text
        assert str(s) == text

    def test_library_repr_hides_the_redis_password(self) -> None:
        s = Settings(redis_url="rediss://:s3cr3t@redis:6380/0")
        text = repr(s)
        assert text.startswith("Settings(") and "s3cr3t" not in text
        assert "rediss://:***@redis:6380/0" in text
        assert str(s) == text

    def test_repr_of_settings_from_env_hides_both_passwords(self) -> None:
        s = WorkerSettings.from_env(
            {
                "CACHEBUS_REDIS_URL": "redis://u:s3cr3t@redis/0",
                "CACHEBUS_KAFKA_SASL_PASSWORD": "k@fka-pw",
            }
        ).with_(batch_max=7)
        text = repr(s)
        assert "s3cr3t" not in text and "k@fka-pw" not in text and "batch_max=7" in text

    @pytest.mark.parametrize(
        ("url", "shown"),
        [
            ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
            ("rediss://:pw@host/0", "rediss://:***@host/0"),
            ("redis://user@host/0", "redis://user@host/0"),
            ("redis://u:p:q@host/0", "redis://u:***@host/0"),
        ],
    )
    def test_redact_url(self, url: str, shown: str) -> None:
        assert redact_url(url) == shown


WORKER_FIELDS = {
    "kafka_bootstrap",
    "kafka_security_protocol",
    "kafka_sasl_mechanism",
    "kafka_sasl_username",
    "kafka_sasl_password",
    "kafka_ssl_cafile",
    "events_topic",
    "audit_topic",
    "dlq_topic",
    "topic_partitions",
    "consumer_group",
    "kafka_session_timeout",
    "max_event_bytes",
    "batch_max",
    "batch_wait_ms",
    "worker_id",
    "web_port",
    "log_level",
}


class TestLibraryAndWorkerSettings:
    """The library's settings hold only what the library reads; the worker's add Kafka,
    topics, batching and the web port on top (as arq keeps ``RedisSettings`` apart)."""

    def test_library_settings_have_no_worker_fields(self) -> None:
        library = {f.name for f in fields(Settings)}
        assert not library & WORKER_FIELDS
        assert not any(
            name.startswith("kafka_") or name.endswith("_topic") or name.startswith("web_")
            for name in library
        ), library
        assert {"redis_url", "prefix", "rules_file", "lease_ms", "strict"} <= library

    def test_worker_settings_are_library_settings_plus_the_worker_fields(self) -> None:
        assert issubclass(WorkerSettings, Settings)
        library = {f.name for f in fields(Settings)}
        assert {f.name for f in fields(WorkerSettings)} == library | WORKER_FIELDS

    def test_library_from_env_ignores_worker_variables(self) -> None:
        s = Settings.from_env({"CACHEBUS_PREFIX": "lib", "CACHEBUS_KAFKA_BOOTSTRAP": "k:1"})
        assert type(s) is Settings and s.prefix == "lib"
        assert not hasattr(s, "kafka_bootstrap")

    def test_worker_from_env_reads_library_and_worker_variables(self) -> None:
        s = WorkerSettings.from_env(
            {
                "CACHEBUS_REDIS_URL": "redis://r:6380/1",
                "CACHEBUS_PREFIX": "w",
                "CACHEBUS_LEASE_MS": "700",
                "CACHEBUS_STRICT": "yes",
                "CACHEBUS_KAFKA_BOOTSTRAP": "kafka:9093",
                "CACHEBUS_EVENTS_TOPIC": "docs",
                "CACHEBUS_TOPIC_PARTITIONS": "12",
                "CACHEBUS_BATCH_WAIT_MS": "20",
                "CACHEBUS_KAFKA_SESSION_TIMEOUT": "4.5",
                "CACHEBUS_WEB_PORT": "0",
            },
            worker_id="w-9",
        )
        assert type(s) is WorkerSettings
        assert (s.redis_url, s.prefix, s.lease_ms, s.strict) == ("redis://r:6380/1", "w", 700, True)
        assert (s.kafka_bootstrap, s.events_topic, s.topic_partitions) == ("kafka:9093", "docs", 12)
        assert (s.batch_wait_ms, s.kafka_session_timeout, s.web_port) == (20, 4.5, 0)
        assert s.worker_id == "w-9"
        with pytest.raises(ConfigError, match="CACHEBUS_TOPIC_PARTITIONS"):
            WorkerSettings.from_env({"CACHEBUS_TOPIC_PARTITIONS": "many"})

    def test_worker_settings_are_validated_as_library_settings(self) -> None:
        with pytest.raises(ConfigError):
            WorkerSettings.from_env({"CACHEBUS_STAMP_TTL": "3600"})
        with pytest.raises(ConfigError):
            WorkerSettings(batch_max=3).with_(durability_replicas=-1)
        assert type(WorkerSettings().with_(prefix="x")) is WorkerSettings

    @pytest.mark.parametrize(
        ("name", "value"),
        [
            ("topic_partitions", 0),
            ("batch_max", 0),
            ("max_event_bytes", 0),
            ("batch_wait_ms", -1),
            ("kafka_session_timeout", 0),
            ("web_port", 70000),
        ],
    )
    def test_worker_values_no_worker_could_run_with_are_refused(
        self, name: str, value: float
    ) -> None:
        with pytest.raises(ConfigError, match=name):
            WorkerSettings.from_env({f"CACHEBUS_{name.upper()}": str(value)})
        with pytest.raises(ConfigError, match=name):
            WorkerSettings().with_(**{name: value})

    def test_library_apis_accept_worker_settings(self) -> None:
        """No connection is made: building the buses and the invalidator only binds
        the client's timeouts and keys."""
        import redis

        from cachebus import AsyncCacheBus, CacheBus
        from cachebus.invalidation import Invalidator

        settings = WorkerSettings(prefix="wk", metrics_flush_interval=0, redis_timeout=1.5)
        client = redis.Redis(host="127.0.0.1", port=1)
        bus = CacheBus(client, settings)
        assert bus.settings is settings
        assert Invalidator(client, settings=settings).core.settings is settings
        aclient = redis.asyncio.Redis(host="127.0.0.1", port=1)
        assert AsyncCacheBus(aclient, settings).settings is settings
        client.close()


class _Embedder:
    model = "text-embedding-3-small"
    model_version = "7"


class _Core:
    def __init__(self, model: str, version: str) -> None:
        self.model, self.model_version = model, version


def test_embedding_service_refuses_another_model_version() -> None:
    """A cache keyed under version 1 must not serve an embedder of version 7."""
    check_model(_Core("text-embedding-3-small", "7"), _Embedder())
    with pytest.raises(ConfigError, match=r"version '7'.*version '1'"):
        check_model(_Core("text-embedding-3-small", "1"), _Embedder())
