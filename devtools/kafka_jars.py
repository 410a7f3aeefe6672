"""The Apache Kafka broker's jars, resolved once from Maven Central with ``mvn`` and cached
under ``${CACHEBUS_CACHE_DIR:-~/.cache/cachebus}/kafka-<version>/libs`` (or taken from
``$KAFKA_HOME/libs``).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import time
from collections import deque
from pathlib import Path
from typing import TypeVar

#: Kafka release used when neither the caller nor ``CACHEBUS_KAFKA_VERSION`` picks one.
DEFAULT_KAFKA_VERSION = "4.1.1"
#: log4j2 release matching what Kafka 4.1 ships in its own distribution.
LOG4J_VERSION = "2.24.3"
#: Bumped whenever the embedded pom changes, so stale caches are re-resolved.
_LIBS_LAYOUT = "2"

_T = TypeVar("_T")

_LOG_TAIL_LINES = 60
_MARKER = ".complete"


_POM_TEMPLATE = """<?xml version="1.0" encoding="UTF-8"?>
<project xmlns="http://maven.apache.org/POM/4.0.0"
         xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"
         xsi:schemaLocation="http://maven.apache.org/POM/4.0.0
                             http://maven.apache.org/xsd/maven-4.0.0.xsd">
  <modelVersion>4.0.0</modelVersion>
  <groupId>cachebus.local</groupId>
  <artifactId>kafka-broker-libs</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka_2.13</artifactId>
      <version>{kafka_version}</version>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-core</artifactId>
      <version>{log4j_version}</version>
    </dependency>
    <!-- kafka_2.13 pins slf4j-api 1.7.36, so the slf4j 1.x binding is the one that loads;
         log4j-slf4j2-impl would be ignored and the broker would log nothing. -->
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-slf4j-impl</artifactId>
      <version>{log4j_version}</version>
    </dependency>
  </dependencies>
</project>
"""


def _progress(message: str) -> None:
    print(f"[devtools.kafka] {message}", file=sys.stderr, flush=True)


def _cache_root() -> Path:
    root = os.environ.get("CACHEBUS_CACHE_DIR") or "~/.cache/cachebus"
    return Path(root).expanduser()


def _default_version() -> str:
    return os.environ.get("CACHEBUS_KAFKA_VERSION") or DEFAULT_KAFKA_VERSION


def _tail(path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    try:
        with path.open("r", encoding="utf-8", errors="replace") as fh:
            return "".join(deque(fh, maxlen=lines))
    except OSError:
        return ""


def resolve_kafka_libs(version: str | None = None) -> Path:
    """Return a directory holding every jar the Kafka broker needs.

    With ``KAFKA_HOME`` set this is ``$KAFKA_HOME/libs`` and nothing is downloaded. Otherwise
    the jars of ``org.apache.kafka:kafka_2.13:<version>`` plus a log4j2 backend are copied from
    Maven Central by ``mvn dependency:copy-dependencies`` into the cache, once; a marker file
    records a complete download so later calls return at once. Concurrent callers (parallel
    test processes) serialise on a lock file.

    Raises:
        RuntimeError: ``mvn`` is missing or the resolution failed.
    """
    kafka_home = os.environ.get("KAFKA_HOME")
    if kafka_home:
        libs = Path(kafka_home).expanduser() / "libs"
        if not any(libs.glob("kafka_2.13-*.jar")) and not any(libs.glob("kafka_*.jar")):
            raise RuntimeError(f"KAFKA_HOME={kafka_home} has no Kafka jars in {libs}")
        return libs

    version = version or _default_version()
    base = _cache_root() / f"kafka-{version}"
    libs = base / "libs"
    marker = base / _MARKER
    # The marker names what was resolved, so a changed pom invalidates an old cache.
    stamp = f"kafka_2.13 {version}, log4j {LOG4J_VERSION}, layout {_LIBS_LAYOUT}\n"
    if _read_text(marker) == stamp:
        return libs

    base.mkdir(parents=True, exist_ok=True)
    with (base / ".lock").open("w") as lock_fh:
        fcntl.flock(lock_fh, fcntl.LOCK_EX)
        if _read_text(marker) == stamp:  # another process finished while we waited
            return libs
        marker.unlink(missing_ok=True)
        _maven_copy_dependencies(version, base, libs)
        marker.write_text(stamp, encoding="utf-8")
    return libs


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except OSError:
        return None


def _maven_copy_dependencies(version: str, base: Path, libs: Path) -> None:
    _progress(f"resolving Kafka {version} from Maven Central (first run only)...")
    started = time.monotonic()
    pom = base / "pom.xml"
    pom.write_text(
        _POM_TEMPLATE.format(kafka_version=version, log4j_version=LOG4J_VERSION),
        encoding="utf-8",
    )
    # Generous timeout: a cold ~/.m2 fetches ~45 MB of jars plus Maven's own plugins.
    jars = maven_copy_dependencies(
        pom,
        libs,
        what=f"Kafka {version}",
        must_have="kafka_2.13-",
        no_mvn="cannot resolve Kafka jars: `mvn` is not on PATH "
        "(install Maven, or set KAFKA_HOME to an unpacked Kafka distribution)",
    )
    _progress(
        f"resolved Kafka {version}: {jars} jars in {time.monotonic() - started:.1f}s -> {libs}"
    )


def maven_copy_dependencies(
    pom: Path,
    dest: Path,
    *,
    what: str,
    must_have: str,
    no_mvn: str,
    exclude_artifacts: tuple[str, ...] = (),
) -> int:
    """``mvn dependency:copy-dependencies`` of ``pom`` (runtime scope) into ``dest``,
    through a scratch directory renamed at the end, so an interrupted run never looks
    complete; ``must_have`` is a jar-name prefix that must land. Returns the jar count.
    Errors name ``what`` and carry the tail of Maven's output; ``no_mvn`` is the message
    when ``mvn`` is not on PATH."""
    mvn = shutil.which("mvn")
    if mvn is None:
        raise RuntimeError(no_mvn)
    partial = dest.with_name(dest.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    shutil.rmtree(dest, ignore_errors=True)
    dest.parent.mkdir(parents=True, exist_ok=True)
    cmd = [
        mvn,
        "-q",
        "-B",
        "-Dstyle.color=never",  # plain text for the error report below
        "-f",
        str(pom),
        "dependency:copy-dependencies",
        f"-DoutputDirectory={partial}",
        "-DincludeScope=runtime",
    ]
    if exclude_artifacts:
        cmd.append(f"-DexcludeArtifactIds={','.join(exclude_artifacts)}")
    try:
        proc = subprocess.run(
            cmd, cwd=pom.parent, capture_output=True, text=True, check=False, timeout=900
        )
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"resolving {what} with Maven timed out after 900s") from None
    if proc.returncode != 0:
        output = "\n".join((proc.stdout + proc.stderr).splitlines()[-_LOG_TAIL_LINES:])
        raise RuntimeError(
            f"resolving {what} with Maven failed (exit {proc.returncode}): "
            f"{' '.join(cmd)}\n{output}"
        )
    jars = list(partial.glob("*.jar"))
    if not any(j.name.startswith(must_have) for j in jars):
        raise RuntimeError(f"Maven finished but no {must_have}*.jar landed in {partial}")
    partial.rename(dest)
    return len(jars)


def kafka_classpath(version: str | None = None) -> str:
    """Return a ``java -cp`` value (a ``libs/*`` wildcard) for the broker, resolving if needed."""
    return str(resolve_kafka_libs(version) / "*")
