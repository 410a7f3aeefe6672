"""The worker's settings: :class:`WorkerSettings`, the library's
:class:`~cachebus.settings.Settings` plus Kafka, topics, batching and the worker's web
port, read from the same ``CACHEBUS_*`` variables.

A subclass, not a second object: ``from_env``, ``with_``, ``validated`` and the redacted
``repr`` are inherited, and every library API (``CacheBus``, ``Invalidator``, ...)
accepts a ``WorkerSettings`` as it is. The library itself never reads these fields.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Self

from cachebus.errors import ConfigError
from cachebus.settings import Settings


@dataclass(frozen=True, slots=True, repr=False)
class WorkerSettings(Settings):
    """What the worker and the ``cachebus`` CLI read on top of the library's settings.

    Each field maps to ``CACHEBUS_<FIELD_NAME_UPPER>`` (the README's configuration
    table, worker section).
    """

    kafka_bootstrap: str = "127.0.0.1:9092"
    kafka_security_protocol: str = "PLAINTEXT"
    kafka_sasl_mechanism: str = ""
    kafka_sasl_username: str = ""
    kafka_sasl_password: str = ""
    kafka_ssl_cafile: str = ""
    events_topic: str = "documents.events"
    audit_topic: str = "cache.audit"
    dlq_topic: str = "documents.events.dlq"
    topic_partitions: int = 6
    consumer_group: str = "cachebus-worker"
    kafka_session_timeout: float = 10.0
    """Seconds before the group gives a silent (crashed) worker's partitions to others."""
    max_event_bytes: int = 1_000_000
    """Larger events are dead-lettered (reason ``oversize``)."""
    batch_max: int = 500
    """The worker applies up to this many events per batch."""
    batch_wait_ms: int = 5
    """...waiting at most this long to fill a batch."""
    worker_id: str = ""
    web_port: int = 6066
    """Health and Prometheus metrics port of the worker (0 turns it off)."""
    log_level: str = "info"

    secret_fields: ClassVar[frozenset[str]] = frozenset({"kafka_sasl_password"})

    def validated(self) -> Self:
        """The library's checks, then the worker's: values with which no worker could
        run. Checks that read files (:func:`check_kafka_files`) or need the security
        protocol's rules (:func:`worker.kafka.client_config`) run where Kafka is used,
        not here: every CLI command reads these settings, also the Redis-only ones."""
        # Explicit base call: zero-argument super() does not work in a slots dataclass.
        Settings.validated(self)
        for name in ("topic_partitions", "batch_max", "max_event_bytes"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be 1 or more")
        if self.batch_wait_ms < 0:
            raise ConfigError("batch_wait_ms must be 0 or more")
        if self.kafka_session_timeout <= 0:
            raise ConfigError("kafka_session_timeout must be a positive number of seconds")
        if not 0 <= self.web_port <= 65535:
            raise ConfigError("web_port must be 0 (off) or a TCP port (1-65535)")
        return self


def check_kafka_files(settings: WorkerSettings) -> None:
    """Raise :class:`ConfigError` naming ``CACHEBUS_KAFKA_SSL_CAFILE`` and its path when
    it is set and cannot be loaded as CA certificates (``ssl`` itself reports a missing
    file without its path)."""
    path = settings.kafka_ssl_cafile
    if not path:
        return
    import ssl

    try:
        ssl.create_default_context(cafile=path)
    except FileNotFoundError:
        raise ConfigError(f"CACHEBUS_KAFKA_SSL_CAFILE {path!r}: no such file") from None
    except ssl.SSLError as exc:
        raise ConfigError(
            f"CACHEBUS_KAFKA_SSL_CAFILE {path!r} holds no usable PEM CA certificate: "
            f"{exc.reason or exc}"
        ) from None
    except OSError as exc:
        raise ConfigError(
            f"CACHEBUS_KAFKA_SSL_CAFILE {path!r} cannot be read: {exc.strerror or exc}"
        ) from None
