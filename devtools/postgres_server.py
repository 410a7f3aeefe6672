"""A real, private PostgreSQL server on loopback, ready for logical decoding (Debezium):
:class:`PostgresServer`.

It runs Debian's ``postgresql`` package binaries (``/usr/lib/postgresql/<ver>/bin``, the
newest found; ``CACHEBUS_PG_BIN`` picks another directory): ``initdb`` into a temporary
directory, ``wal_level=logical``, password (scram-sha-256) authentication on 127.0.0.1 only
(no other interface listens; the unix socket lives in the private directory), and a free
port. As root, initdb and the server run as the ``postgres`` OS user, since PostgreSQL
refuses to run as root. SQL goes through the package's ``psql``, so no Python driver is
needed::

    with PostgresServer() as pg:
        pg.sql("CREATE TABLE t (id text PRIMARY KEY)")
        pg.sql("INSERT INTO t VALUES ('a')")
        rows = pg.rows("SELECT id FROM t")  # [["a"]]

Command line (a server in the foreground until Ctrl-C; ``--password-env VAR`` sets the
password from ``$VAR``, else it is random)::

    PGPW=secret python -m devtools.postgres_server --password-env PGPW
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import os
import pwd
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

from devtools.kafka_jars import _tail
from devtools.kafka_process import _free_ports, _set_pdeathsig

_LOG_TAIL_LINES = 40
_PG_ROOT = Path("/usr/lib/postgresql")
_OS_USER = "postgres"

_LIVE: set[PostgresServer] = set()


@atexit.register
def _stop_leftovers() -> None:
    for server in list(_LIVE):
        with contextlib.suppress(Exception):
            server.stop(timeout=5.0)


def _progress(message: str) -> None:
    print(f"[devtools.postgres] {message}", file=sys.stderr, flush=True)


def find_postgres_bin() -> Path:
    """The directory holding ``initdb``, ``postgres`` and ``psql``.

    ``$CACHEBUS_PG_BIN`` if set, else the newest ``/usr/lib/postgresql/<ver>/bin`` that has a
    server (Debian's ``postgresql-<ver>`` package; ``postgresql-client`` alone is not enough).

    Raises:
        RuntimeError: no server binaries were found (one line, saying what to install).
    """
    wanted = ("initdb", "postgres", "psql")
    override = os.environ.get("CACHEBUS_PG_BIN")
    if override:
        path = Path(override).expanduser()
        missing = [name for name in wanted if not (path / name).is_file()]
        if missing:
            raise RuntimeError(f"CACHEBUS_PG_BIN={override} lacks {', '.join(missing)}")
        return path
    candidates: list[tuple[int, Path]] = []
    for child in _PG_ROOT.glob("*/bin") if _PG_ROOT.is_dir() else ():
        version = child.parent.name
        if version.isdigit() and all((child / name).is_file() for name in wanted):
            candidates.append((int(version), child))
    if not candidates:
        raise RuntimeError(
            "PostgreSQL server binaries not found (no /usr/lib/postgresql/<ver>/bin with "
            "initdb, postgres and psql): run `make setup` or `apt-get install postgresql`, "
            "or set CACHEBUS_PG_BIN"
        )
    return max(candidates)[1]


class PostgresServer:
    """One real, throw-away PostgreSQL server on ``127.0.0.1:<free port>``.

    Configured for logical replication (``wal_level=logical`` and enough WAL senders and
    replication slots for a few Debezium connectors). Durability is traded for speed
    (``fsync=off``): the data directory is temporary and deleted by :meth:`stop`.

    If the server cannot start, :meth:`start` raises ``RuntimeError`` with the tail of the
    server's log and leaves nothing behind.

    Args:
        database: a database created at start (besides ``postgres``).
        user: the superuser's name (it can also replicate).
        password: its password; a random one by default (see :attr:`password`).
        port: port to listen on; a free one by default.
        startup_timeout: seconds to wait for the server to accept connections.
        settings: extra ``postgresql.conf`` settings, applied last.
    """

    def __init__(
        self,
        *,
        database: str = "cachebus",
        user: str = "postgres",
        password: str | None = None,
        port: int | None = None,
        startup_timeout: float = 60.0,
        settings: Mapping[str, str] | None = None,
    ) -> None:
        if not re.fullmatch(r"[a-z_][a-z0-9_]*", database) or not re.fullmatch(
            r"[a-z_][a-z0-9_]*", user
        ):
            raise ValueError("database and user must be plain lower-case identifiers")
        self.database = database
        self.user = user
        self.password = password or secrets.token_urlsafe(18)
        self._port = port
        self.startup_timeout = startup_timeout
        self._settings = dict(settings or {})
        self._bin: Path | None = None
        self._root: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()
        #: Seconds the last :meth:`start` took (initdb included).
        self.last_startup_seconds: float | None = None

    # -- properties ---------------------------------------------------------------------------

    @property
    def host(self) -> str:
        return "127.0.0.1"

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("PostgresServer has no port yet: call start() first")
        return self._port

    @property
    def dsn(self) -> str:
        """A libpq connection string without the password (pass it in ``PGPASSWORD``)."""
        return f"host={self.host} port={self.port} user={self.user} dbname={self.database}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def data_dir(self) -> Path | None:
        return None if self._root is None else self._root / "data"

    @property
    def log_file(self) -> Path | None:
        return None if self._root is None else self._root / "postgres.log"

    @property
    def version(self) -> str:
        """The server's major version (the ``/usr/lib/postgresql/<ver>`` directory name)."""
        return (self._bin or find_postgres_bin()).parent.name

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> PostgresServer:
        """initdb, start the server and wait until it accepts a query; create the database.

        Raises:
            RuntimeError: binaries missing, initdb failed, or the server did not come up
                within ``startup_timeout`` (the message holds the end of its log).
        """
        if self.running:
            return self
        started = time.monotonic()
        try:
            with self._lock:
                self._bin = find_postgres_bin()
                self._root = Path(tempfile.mkdtemp(prefix="cachebus-pg-"))
                self._initdb()
                self._launch()
            _LIVE.add(self)
            self._wait_ready()
            self.sql(f"CREATE DATABASE {self.database}", database="postgres")
        except BaseException:
            self.stop(timeout=10.0)
            raise
        self.last_startup_seconds = time.monotonic() - started
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Fast shutdown (SIGINT: clients and replication connections are cut), SIGKILL
        after ``timeout`` s, then delete the data directory. Calling it twice is fine."""
        with self._lock:
            proc = self._proc
            if proc is not None:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGINT)
                    try:
                        proc.wait(timeout)
                    except subprocess.TimeoutExpired:
                        with contextlib.suppress(ProcessLookupError):
                            os.killpg(proc.pid, signal.SIGKILL)
                        proc.wait()
                # Backends left behind by a killed postmaster share its process group.
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                self._proc = None
            _LIVE.discard(self)
            if self._root is not None:
                shutil.rmtree(self._root, ignore_errors=True)
                self._root = None

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        where = f"127.0.0.1:{self._port}" if self._port else "unstarted"
        return f"<PostgresServer {where} {'running' if self.running else 'stopped'}>"

    # -- SQL ----------------------------------------------------------------------------------

    def psql_env(self) -> dict[str, str]:
        """Environment for libpq clients (``psql``): host, port, user, password, database."""
        return {
            **os.environ,
            "PGHOST": self.host,
            "PGPORT": str(self.port),
            "PGUSER": self.user,
            "PGPASSWORD": self.password,
            "PGDATABASE": self.database,
            "PGCONNECT_TIMEOUT": "5",
        }

    def sql(self, script: str, *, database: str | None = None, timeout: float = 120.0) -> str:
        """Run SQL with ``psql`` (autocommit: each statement its own transaction unless the
        script says ``BEGIN``); stop at the first error. Returns psql's unaligned output.

        Raises:
            RuntimeError: psql failed (the message holds its error output).
        """
        if self._bin is None:
            raise RuntimeError("PostgresServer is not started")
        cmd = [
            str(self._bin / "psql"),
            "-X",  # no ~/.psqlrc
            "-q",
            "-A",
            "-t",
            "-F",
            "\t",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            database or self.database,
            "-f",
            "-",
        ]
        proc = subprocess.run(
            cmd,
            input=script,
            env=self.psql_env(),
            capture_output=True,
            text=True,
            check=False,
            timeout=timeout,
        )
        if proc.returncode != 0:
            shown = script if len(script) < 400 else script[:400] + "..."
            raise RuntimeError(f"psql failed (exit {proc.returncode}) on {shown!r}:\n{proc.stderr}")
        return proc.stdout

    def rows(self, query: str, *, database: str | None = None) -> list[list[str]]:
        """The rows of one query, each a list of column texts (NULL is the empty string)."""
        out = self.sql(query, database=database)
        return [line.split("\t") for line in out.splitlines() if line]

    # -- internals ----------------------------------------------------------------------------

    def _as_postgres(self) -> tuple[str | None, str | None]:
        """(user, group) to run the server as: ``postgres`` when we are root, else ourselves."""
        if os.geteuid() != 0:
            return None, None
        try:
            pw = pwd.getpwnam(_OS_USER)
        except KeyError:
            raise RuntimeError(
                f"running as root but there is no {_OS_USER!r} OS user to run PostgreSQL as "
                "(PostgreSQL refuses root): install the postgresql package or run as non-root"
            ) from None
        assert self._root is not None
        os.chown(self._root, pw.pw_uid, pw.pw_gid)
        return _OS_USER, _OS_USER

    def _run_as(self, cmd: Sequence[str], what: str) -> None:
        user, group = self._as_postgres()
        proc = subprocess.run(
            list(cmd),
            cwd=self._root,
            user=user,
            group=group,
            extra_groups=[] if user else None,
            env={**os.environ, "LC_ALL": "C.UTF-8", "LANG": "C.UTF-8"},
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )
        if proc.returncode != 0:
            output = "\n".join((proc.stdout + proc.stderr).splitlines()[-_LOG_TAIL_LINES:])
            raise RuntimeError(f"{what} failed (exit {proc.returncode}):\n{output}")

    def _initdb(self) -> None:
        assert self._root is not None and self._bin is not None
        user, _ = self._as_postgres()
        pwfile = self._root / "pwfile"
        pwfile.write_text(self.password + "\n", encoding="utf-8")
        pwfile.chmod(0o600)
        (self._root / "sock").mkdir(mode=0o700)
        if user is not None:
            pw = pwd.getpwnam(user)
            for path in (pwfile, self._root / "sock"):
                os.chown(path, pw.pw_uid, pw.pw_gid)
        self._run_as(
            [
                str(self._bin / "initdb"),
                "-D",
                str(self._root / "data"),
                "-U",
                self.user,
                f"--pwfile={pwfile}",
                "--auth-host=scram-sha-256",
                "--auth-local=peer",
                "--encoding=UTF8",
                "--locale=C.UTF-8",
                "--no-sync",
            ],
            "initdb",
        )
        pwfile.unlink()
        if self._port is None:
            (self._port,) = _free_ports(1)
        settings: dict[str, str] = {
            "listen_addresses": "'127.0.0.1'",
            "port": str(self._port),
            "unix_socket_directories": f"'{self._root / 'sock'}'",
            "wal_level": "logical",
            "max_wal_senders": "10",
            "max_replication_slots": "10",
            "max_connections": "50",
            "shared_buffers": "32MB",
            # A throw-away server: no crash safety needed, and much faster on a busy disk.
            "fsync": "off",
            "full_page_writes": "off",
            "synchronous_commit": "off",
            "log_min_messages": "warning",
            **self._settings,
        }
        with (self._root / "data" / "postgresql.conf").open("a", encoding="utf-8") as fh:
            fh.write("\n# added by devtools.postgres_server\n")
            fh.writelines(f"{k} = {v}\n" for k, v in settings.items())
        # Loopback only, passwords only; the socket dir is private to the postgres user.
        (self._root / "data" / "pg_hba.conf").write_text(
            "# written by devtools.postgres_server\n"
            "local   all          all                 peer\n"
            "host    all          all   127.0.0.1/32  scram-sha-256\n"
            "host    replication  all   127.0.0.1/32  scram-sha-256\n",
            encoding="utf-8",
        )
        if user is not None:
            pw = pwd.getpwnam(user)
            os.chown(self._root / "data" / "pg_hba.conf", pw.pw_uid, pw.pw_gid)

    def _launch(self) -> None:
        assert self._root is not None and self._bin is not None
        user, group = self._as_postgres()
        log = self._root / "postgres.log"
        with log.open("ab") as out:
            if user is not None:
                pw = pwd.getpwnam(user)
                os.chown(log, pw.pw_uid, pw.pw_gid)
            self._proc = subprocess.Popen(
                [str(self._bin / "postgres"), "-D", str(self._root / "data")],
                cwd=self._root,
                user=user,
                group=group,
                extra_groups=[] if user else None,
                env={**os.environ, "LC_ALL": "C.UTF-8", "LANG": "C.UTF-8"},
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                # Own process group: stop() can reap every backend, and a Ctrl-C aimed at
                # the caller does not race the shutdown.
                start_new_session=True,
                preexec_fn=(
                    _set_pdeathsig
                    if threading.current_thread() is threading.main_thread()
                    else None
                ),
            )

    def _wait_ready(self) -> None:
        assert self._bin is not None
        deadline = time.monotonic() + self.startup_timeout
        last = ""
        while time.monotonic() < deadline:
            if self._proc is None or self._proc.poll() is not None:
                code = None if self._proc is None else self._proc.returncode
                raise RuntimeError(f"PostgreSQL exited early (code {code})\n{self._log_report()}")
            try:
                if self.sql("SELECT 1", database="postgres", timeout=10).strip() == "1":
                    return
            except (RuntimeError, subprocess.TimeoutExpired) as exc:
                last = str(exc).strip().splitlines()[-1] if str(exc).strip() else ""
            time.sleep(0.1)
        raise RuntimeError(
            f"PostgreSQL did not accept connections on 127.0.0.1:{self._port} within "
            f"{self.startup_timeout}s (last error: {last})\n{self._log_report()}"
        )

    def _log_report(self) -> str:
        if self.log_file is None:
            return ""
        text = _tail(self.log_file, _LOG_TAIL_LINES)
        return f"--- last lines of {self.log_file} ---\n{text.rstrip()}" if text else ""


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m devtools.postgres_server``: a server in the foreground until Ctrl-C."""
    parser = argparse.ArgumentParser(
        prog="python -m devtools.postgres_server",
        description="A private PostgreSQL (wal_level=logical) on loopback until Ctrl-C.",
    )
    parser.add_argument(
        "--password-env",
        metavar="VAR",
        help="take the postgres user's password from this environment variable "
        "(default: a random one, which is then not usable from outside)",
    )
    args = parser.parse_args(argv)
    password = os.environ.get(args.password_env) if args.password_env else None
    if args.password_env and not password:
        print(f"error: ${args.password_env} is empty or unset", file=sys.stderr)
        return 2
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        with PostgresServer(password=password) as pg:
            print(f"PG_DSN='{pg.dsn}'", flush=True)
            _progress(f"PostgreSQL {pg.version} ready; Ctrl-C to stop")
            while not stop.wait(1.0):
                if not pg.running:
                    _progress("PostgreSQL exited unexpectedly\n" + pg._log_report())
                    return 1
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
