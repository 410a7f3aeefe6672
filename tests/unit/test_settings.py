"""Settings refuse unsafe configurations and never print secrets."""

from __future__ import annotations

import pytest

from cachebus import ConfigError, Settings
from cachebus.services import check_model
from cachebus.settings import redact_url


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
        s = Settings(
            redis_url="redis://worker:s3cr3t@redis:6379/0", kafka_sasl_password="k@fka-pw"
        )
        text = repr(s)
        assert "s3cr3t" not in text and "k@fka-pw" not in text
        assert "redis://worker:***@redis:6379/0" in text and "kafka_sasl_password='***'" in text
        assert str(s) == text

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
