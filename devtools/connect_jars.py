"""Kafka Connect's and Debezium's jars, resolved once from Maven Central with ``mvn`` and
cached under ``${CACHEBUS_CACHE_DIR:-~/.cache/cachebus}/kafka-connect-<kafka>-debezium-<dbz>/``:

* ``libs/``: the Connect worker's classpath (``org.apache.kafka:connect-runtime`` and
  ``connect-json`` of the broker's Kafka version, plus a log4j2 backend);
* ``plugins/debezium-connector-postgres/``: Debezium's Postgres connector and its
  dependencies (what Kafka provides -- ``connect-api``, slf4j -- left out), loaded through
  the worker's ``plugin.path`` in its own class loader, as a Debezium plugin archive is.
"""

from __future__ import annotations

import fcntl
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from devtools.kafka_jars import (
    _MARKER,
    LOG4J_VERSION,
    _cache_root,
    _default_version,
    _read_text,
    maven_copy_dependencies,
)

#: Debezium release used unless ``CACHEBUS_DEBEZIUM_VERSION`` says otherwise. The 3.3 line is
#: built and tested against Kafka 4.1 (``version.kafka`` 4.1.0 in its build parent), the
#: broker's line (:data:`devtools.kafka_jars.DEFAULT_KAFKA_VERSION`).
DEFAULT_DEBEZIUM_VERSION = "3.3.2.Final"
#: Bumped whenever the embedded poms change, so stale caches are re-resolved.
_LAYOUT = "1"
#: The plugin directory's name under ``plugins/``.
POSTGRES_PLUGIN = "debezium-connector-postgres"

_POM_HEAD = """<?xml version="1.0" encoding="UTF-8"?>
<project xmlns="http://maven.apache.org/POM/4.0.0"
         xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"
         xsi:schemaLocation="http://maven.apache.org/POM/4.0.0
                             http://maven.apache.org/xsd/maven-4.0.0.xsd">
  <modelVersion>4.0.0</modelVersion>
  <groupId>cachebus.local</groupId>
  <artifactId>{artifact}</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
{dependencies}
  </dependencies>
</project>
"""

_DEPENDENCY = """    <dependency>
      <groupId>{group}</groupId>
      <artifactId>{artifact}</artifactId>
      <version>{version}</version>
    </dependency>"""


def _progress(message: str) -> None:
    print(f"[devtools.connect] {message}", file=sys.stderr, flush=True)


def default_debezium_version() -> str:
    return os.environ.get("CACHEBUS_DEBEZIUM_VERSION") or DEFAULT_DEBEZIUM_VERSION


@dataclass(frozen=True)
class ConnectJars:
    """Where the resolved jars are."""

    libs: Path
    """The Connect worker's classpath directory (``java -cp libs/*``)."""
    plugin_path: Path
    """The worker's ``plugin.path`` (one sub-directory per plugin)."""
    kafka_version: str
    debezium_version: str

    @property
    def classpath(self) -> str:
        return str(self.libs / "*")


def resolve_connect_jars(
    kafka_version: str | None = None, debezium_version: str | None = None
) -> ConnectJars:
    """Return the Connect worker's and the Debezium Postgres plugin's jars, downloading them
    from Maven Central with ``mvn dependency:copy-dependencies`` the first time; a marker file
    records a complete download so later calls return at once, and concurrent callers
    serialise on a lock file.

    Raises:
        RuntimeError: ``mvn`` is missing or a resolution failed (Maven's output included).
    """
    kafka_version = kafka_version or _default_version()
    debezium_version = debezium_version or default_debezium_version()
    base = _cache_root() / f"kafka-connect-{kafka_version}-debezium-{debezium_version}"
    jars = ConnectJars(
        libs=base / "libs",
        plugin_path=base / "plugins",
        kafka_version=kafka_version,
        debezium_version=debezium_version,
    )
    stamp = (
        f"connect-runtime {kafka_version}, debezium-connector-postgres {debezium_version}, "
        f"log4j {LOG4J_VERSION}, layout {_LAYOUT}\n"
    )
    marker = base / _MARKER
    if _read_text(marker) == stamp:
        return jars
    base.mkdir(parents=True, exist_ok=True)
    with (base / ".lock").open("w") as lock_fh:
        fcntl.flock(lock_fh, fcntl.LOCK_EX)
        if _read_text(marker) == stamp:  # another process finished while we waited
            return jars
        marker.unlink(missing_ok=True)
        started = time.monotonic()
        _progress(
            f"resolving Kafka Connect {kafka_version} and Debezium {debezium_version} "
            "(Postgres connector) from Maven Central (first run only)..."
        )
        runtime = [
            ("org.apache.kafka", "connect-runtime", kafka_version),
            ("org.apache.kafka", "connect-json", kafka_version),
            ("org.apache.logging.log4j", "log4j-core", LOG4J_VERSION),
            # connect-runtime pins slf4j-api 1.7.x, so the slf4j 1.x binding is the one.
            ("org.apache.logging.log4j", "log4j-slf4j-impl", LOG4J_VERSION),
        ]
        n_libs = _copy_dependencies(
            base, "connect-libs", runtime, jars.libs, must_have="connect-runtime-"
        )
        _progress(f"  Connect worker: {n_libs} jars ({time.monotonic() - started:.1f}s)")
        plugin = [("io.debezium", "debezium-connector-postgres", debezium_version)]
        n_plugin = _copy_dependencies(
            base,
            "debezium-postgres",
            plugin,
            jars.plugin_path / POSTGRES_PLUGIN,
            must_have="debezium-connector-postgres-",
            # Kafka's own API and logging come from the worker (scope "provided" upstream
            # too); slf4j-api is a transitive leftover.
            exclude_artifacts=("slf4j-api",),
        )
        marker.write_text(stamp, encoding="utf-8")
    _progress(
        f"resolved Kafka Connect + Debezium: {n_libs} + {n_plugin} jars in "
        f"{time.monotonic() - started:.1f}s -> {base}"
    )
    return jars


def _copy_dependencies(
    base: Path,
    name: str,
    artifacts: list[tuple[str, str, str]],
    dest: Path,
    *,
    must_have: str,
    exclude_artifacts: tuple[str, ...] = (),
) -> int:
    pom = base / f"{name}.pom.xml"
    pom.write_text(
        _POM_HEAD.format(
            artifact=name,
            dependencies="\n".join(
                _DEPENDENCY.format(group=g, artifact=a, version=v) for g, a, v in artifacts
            ),
        ),
        encoding="utf-8",
    )
    return maven_copy_dependencies(
        pom,
        dest,
        what=", ".join(f"{g}:{a}:{v}" for g, a, v in artifacts),
        must_have=must_have,
        no_mvn="cannot resolve Kafka Connect / Debezium jars: `mvn` is not on PATH "
        "(install Maven: `make setup` or `apt-get install maven`)",
        exclude_artifacts=exclude_artifacts,
    )
