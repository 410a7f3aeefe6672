"""Test and development infrastructure of cachebus, kept out of what users install.

The wheel packages only ``cachebus`` and ``worker`` (``[tool.hatch.build.targets.wheel]
packages`` in pyproject.toml), so nothing here ships. It runs from a checkout (the
tests put the repository root on ``sys.path``).

* :mod:`devtools.scripted`: drive cachebus programs against a script of expected
  steps and replies, without Redis (unit tests of the programs and the runners).
* :mod:`devtools.redis_servers`: real, ephemeral ``redis-server`` processes and Redis
  Clusters (:mod:`~devtools.redis_server`, :mod:`~devtools.redis_cluster`,
  :mod:`~devtools.redis_support`); ``python -m devtools.redis_servers redis|cluster``.
* :mod:`devtools.kafka_broker`: a real single-node Apache Kafka broker
  (:mod:`~devtools.local_kafka`, :mod:`~devtools.kafka_jars`, :mod:`~devtools.kafka_admin`,
  :mod:`~devtools.kafka_process`); ``python -m devtools.kafka_broker kafka fetch|run``.
* :mod:`devtools.stack`: Redis + Kafka + worker processes on loopback (``LocalStack``).
* :mod:`devtools.demo`: ``make demo``.
* CDC: :mod:`devtools.postgres_server` (a private PostgreSQL with ``wal_level=logical``),
  :mod:`devtools.kafka_connect` (Kafka Connect with Debezium's Postgres connector; jars by
  :mod:`devtools.connect_jars`), :mod:`devtools.connect_cdc` (the documents table, topic
  tails) and :mod:`devtools.demo_cdc` (``make demo-cdc``).
* :mod:`devtools.openai_server`: a scriptable OpenAI-compatible ``/v1/embeddings`` server on
  loopback (errors, rate limits) for the embedder's tests.
* :mod:`devtools.traffic`, :mod:`devtools.audit_check`, :mod:`devtools.fault_report`:
  steady traffic, end-to-end audit checks and fault reports for the soak run and the
  fault and scale-out tests.

No public testing helper ships with the library: its tests run on real services, and a
user's tests can run ``CacheBus`` on any ``redis.Redis`` they already test against.
"""
