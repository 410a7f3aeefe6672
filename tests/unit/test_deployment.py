"""The deployment files for users' machines stay valid (no Docker engine needed)."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from worker.settings import WorkerSettings

ROOT = Path(__file__).resolve().parents[2]
CDC = ROOT / "deploy" / "cdc"


class TestCompose:
    def test_docker_compose_config_accepts_the_file(self) -> None:
        """`docker-compose config` (Debian's, installed by make setup) validates it."""
        binary = shutil.which("docker-compose")
        assert binary, "docker-compose missing: run `make setup`"
        done = subprocess.run(
            [binary, "-f", str(ROOT / "docker-compose.yml"), "config", "-q"],
            capture_output=True, text=True, timeout=60,
        )
        assert done.returncode == 0, done.stderr

    def test_docker_compose_config_accepts_the_cdc_profile(self) -> None:
        """The same with `--profile cdc` (docker-compose >= 1.28 knows `profiles`), and
        the values interpolated (the password default, never a literal in the JSON)."""
        binary = shutil.which("docker-compose")
        assert binary, "docker-compose missing: run `make setup`"
        done = subprocess.run(
            [binary, "-f", str(ROOT / "docker-compose.yml"), "--profile", "cdc", "config"],
            capture_output=True,
            text=True,
            timeout=60,
            env={"PATH": "/usr/bin:/bin", "POSTGRES_PASSWORD": "from-the-shell"},
        )
        assert done.returncode == 0, done.stderr
        for service in ("db", "connect", "connect-register"):
            assert re.search(rf"^  {service}:$", done.stdout, re.M), service
        assert done.stdout.count("from-the-shell") == 2  # db and connect

    def test_worker_environment_names_are_settings(self) -> None:
        """Every CACHEBUS_* variable the compose file sets is a real setting."""
        names = set(re.findall(r"CACHEBUS_([A-Z0-9_]+)", (ROOT / "docker-compose.yml").read_text()))
        fields = {f.name.upper() for f in dataclasses.fields(WorkerSettings)}
        assert names and names <= fields, names - fields


def _service(name: str) -> str:
    """The text of one service of docker-compose.yml (2-space indented keys)."""
    text = (ROOT / "docker-compose.yml").read_text()
    match = re.search(rf"^  {name}:\n(.*?)(?=^  \S|^\S|\Z)", text, re.M | re.S)
    assert match, f"service {name} missing"
    return match.group(1)


class TestComposeServices:
    def test_kafka_image_is_the_tested_release(self) -> None:
        from devtools.kafka_broker import DEFAULT_KAFKA_VERSION

        assert f"image: apache/kafka:{DEFAULT_KAFKA_VERSION}\n" in _service("kafka")

    def test_kafka_data_is_on_a_volume(self) -> None:
        """Events, audits and committed offsets survive a recreated container."""
        kafka = _service("kafka")
        logs = re.search(r'KAFKA_LOG_DIRS: "([^"]+)"', kafka)
        assert logs and f"- kafka-data:{logs.group(1)}" in kafka
        top = (ROOT / "docker-compose.yml").read_text().split("\nvolumes:\n", 1)[1]
        assert "  kafka-data:" in top.splitlines()

    def test_external_listener_for_the_host(self) -> None:
        """Clients on the host bootstrap from localhost:29092 and are sent back there."""
        kafka = _service("kafka")
        listeners = re.search(r'KAFKA_LISTENERS: "([^"]+)"', kafka)
        advertised = re.search(r'KAFKA_ADVERTISED_LISTENERS: "([^"]+)"', kafka)
        protocols = re.search(r'KAFKA_LISTENER_SECURITY_PROTOCOL_MAP: "([^"]+)"', kafka)
        assert listeners and "EXTERNAL://:29092" in listeners.group(1).split(",")
        assert advertised and "EXTERNAL://localhost:29092" in advertised.group(1).split(",")
        assert advertised and "PLAINTEXT://kafka:9092" in advertised.group(1).split(",")
        assert protocols and "EXTERNAL:PLAINTEXT" in protocols.group(1).split(",")
        assert '- "127.0.0.1:29092:29092"' in kafka

    def test_worker_has_a_port_and_a_readiness_healthcheck(self) -> None:
        worker = _service("worker")
        port = WorkerSettings().web_port
        assert f'- "127.0.0.1:{port}:{port}"' in worker
        assert "healthcheck:" in worker
        assert f"http://127.0.0.1:{port}/readyz" in worker


class TestDockerfile:
    TEXT = (ROOT / "Dockerfile").read_text()

    def test_base_image_is_pinned_to_a_patch_release(self) -> None:
        match = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", self.TEXT, re.M)
        assert match, "ARG PYTHON_IMAGE missing"
        assert re.fullmatch(r"python:3\.11\.\d+-slim(-[a-z]+)?(@sha256:[0-9a-f]{64})?",
                            match.group(1)), match.group(1)
        assert self.TEXT.count("FROM ${PYTHON_IMAGE}") == 2  # both stages

    def test_exposes_the_web_port(self) -> None:
        assert re.search(rf"^EXPOSE {WorkerSettings().web_port}$", self.TEXT, re.M)

    def test_data_dir_is_fixed(self) -> None:
        """CACHEBUS_DATA_DIR: one faust data directory across restarts, writable."""
        assert re.search(r"^ENV CACHEBUS_DATA_DIR=/var/lib/cachebus$", self.TEXT, re.M)
        assert re.search(r"--home-dir /var/lib/cachebus", self.TEXT)

    def test_healthcheck_probes_liveness(self, tmp_path: Path) -> None:
        """The HEALTHCHECK command passes on 200 and fails on 503 from /livez, on the
        port CACHEBUS_WEB_PORT names (run here against a tiny HTTP server)."""
        import http.server
        import json
        import os
        import sys
        import threading

        match = re.search(r"^HEALTHCHECK .*\\\n\s+CMD (\[.*\])$", self.TEXT, re.M)
        assert match, "HEALTHCHECK ... CMD [exec form] missing"
        command = json.loads(match.group(1))
        assert command[0] == "python" and "/livez" in command[-1]
        status = {"code": 200}

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(status["code"] if self.path == "/livez" else 404)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            env = {**os.environ, "CACHEBUS_WEB_PORT": str(server.server_address[1])}
            run = [sys.executable, *command[1:]]
            assert subprocess.run(run, env=env, capture_output=True, timeout=30).returncode == 0
            status["code"] = 503
            assert subprocess.run(run, env=env, capture_output=True, timeout=30).returncode != 0
        finally:
            server.shutdown()
            server.server_close()


def _env(service: str) -> dict[str, str]:
    """The `KEY: "value"` pairs of one service's environment."""
    return dict(re.findall(r'^      ([A-Z][A-Z0-9_]*): "([^"]*)"$', _service(service), re.M))


def _connector() -> dict[str, str]:
    data: dict[str, str] = json.loads((CDC / "connector.json").read_text("utf-8"))
    return data


def _tested_connector() -> dict[str, str]:
    """The connector config the CDC tests run, for the compose database."""
    from devtools.kafka_connect import debezium_postgres_config

    class Pg:  # what debezium_postgres_config reads of a PostgresServer
        host, port, user, password, database = "db", 5432, "debezium", "secret", "app"

    return debezium_postgres_config(
        Pg(),  # type: ignore[arg-type]
        topic_prefix="pg",
        tables=["public.documents"],
        slot_name="cachebus",
    )


class TestCdcProfile:
    """`docker compose --profile cdc up`: PostgreSQL, Kafka Connect with Debezium and the
    connector's registration (no Docker engine here: the files are checked)."""

    CDC_SERVICES = ("db", "connect", "connect-register")

    def test_default_up_is_unchanged(self) -> None:
        """Services without a profile are the stack as before; the new ones are cdc's."""
        text = (ROOT / "docker-compose.yml").read_text()
        services = re.findall(r"^  ([a-z][a-z0-9-]*):\n", text.split("\nvolumes:\n")[0], re.M)
        default = {s for s in services if "\n    profiles:" not in "\n" + _service(s)}
        assert default == {"kafka", "redis", "worker"}
        for name in self.CDC_SERVICES:
            assert '    profiles: ["cdc"]\n' in _service(name), name

    def test_host_ports_are_loopback_only(self) -> None:
        text = (ROOT / "docker-compose.yml").read_text()
        blocks = re.findall(r"^    ports:\n((?:      - .*\n)+)", text, re.M)
        ports = [line.split("#")[0].strip() for b in blocks for line in b.splitlines()]
        assert len(blocks) == 4, blocks  # kafka, worker, db, connect
        for port in ports:
            assert re.fullmatch(r'- "127\.0\.0\.1:\d+:\d+"', port), port

    def test_postgres_has_logical_decoding_and_the_tests_table(self) -> None:
        from devtools.connect_cdc import DOCUMENTS_DDL

        db = _service("db")
        assert re.search(r"^    image: postgres:\d+\n", db, re.M)
        assert '"-c", "wal_level=logical"' in db
        assert "- db-data:/var/lib/postgresql/data" in db
        assert "- ./deploy/cdc/init.sql:/docker-entrypoint-initdb.d/" in db
        assert DOCUMENTS_DDL.strip() in (CDC / "init.sql").read_text("utf-8")
        assert "REPLICA IDENTITY FULL" in DOCUMENTS_DDL
        top = (ROOT / "docker-compose.yml").read_text().split("\nvolumes:\n", 1)[1]
        assert "  db-data:" in top.splitlines()
        env = _env("db")
        assert (env["POSTGRES_DB"], env["POSTGRES_USER"]) == ("app", "debezium")
        assert env["POSTGRES_PASSWORD"].startswith("${POSTGRES_PASSWORD")

    def test_connect_image_is_the_tested_debezium_release(self) -> None:
        from devtools.kafka_connect import DEFAULT_DEBEZIUM_VERSION

        for name in ("connect", "connect-register"):
            image = f"    image: quay.io/debezium/connect:{DEFAULT_DEBEZIUM_VERSION}\n"
            assert image in _service(name), name

    def test_connect_worker_environment(self) -> None:
        """The image's variables (its docker-entrypoint.sh): the required ones, and the
        internal topics' replication factor of a one-broker cluster."""
        env = _env("connect")
        assert env["BOOTSTRAP_SERVERS"] == "kafka:9092"
        for name in ("GROUP_ID", "CONFIG_STORAGE_TOPIC", "OFFSET_STORAGE_TOPIC",
                     "STATUS_STORAGE_TOPIC"):  # fmt: skip
            assert env[name], name
        for topic in ("CONFIG", "OFFSET", "STATUS"):
            assert env[f"CONNECT_{topic}_STORAGE_REPLICATION_FACTOR"] == "1"
        # CONNECT_<NAME>: worker property <name> lowercased, "_" -> "." (the entrypoint's rule).
        properties = {
            name.removeprefix("CONNECT_").lower().replace("_", "."): value
            for name, value in env.items()
            if name.startswith("CONNECT_")
        }
        assert properties == {
            "config.storage.replication.factor": "1",
            "offset.storage.replication.factor": "1",
            "status.storage.replication.factor": "1",
            "listeners": "http://0.0.0.0:8083",
            "config.providers": "env",
            "config.providers.env.class": (
                "org.apache.kafka.common.config.provider.EnvVarConfigProvider"
            ),
            "config.providers.env.param.allowlist.pattern": "CDC_DB_PASSWORD",
        }
        assert not any("@" in value for value in properties.values())  # the entrypoint's sed
        assert "kafka:\n        condition: service_healthy" in _service("connect")
        assert "db:\n        condition: service_healthy" in _service("connect")

    @pytest.mark.parametrize(
        "key",
        [
            "connector.class",
            "plugin.name",
            "key.converter",
            "value.converter",
            "key.converter.schemas.enable",
            "value.converter.schemas.enable",
            "topic.prefix",
            "table.include.list",
            "publication.autocreate.mode",
            "snapshot.mode",
            "tombstones.on.delete",
        ],
    )
    def test_connector_setting_is_the_tested_one(self, key: str) -> None:
        assert _connector()[key] == _tested_connector()[key]

    def test_connector_has_nothing_untested(self) -> None:
        """Every setting but the connection's has the tested value (no setting the
        tests never ran); the connection is the compose database."""
        connector, tested = _connector(), _tested_connector()
        assert connector["publication.name"] == f"{connector['slot.name']}_pub"
        for key, value in connector.items():
            if not key.startswith("database."):
                assert tested.get(key) == value, key
        assert {k for k in connector if k.startswith("database.")} == {
            k for k in tested if k.startswith("database.")
        }
        db = _env("db")
        assert connector["database.hostname"] == "db"
        assert connector["database.port"] == "5432"
        assert connector["database.dbname"] == db["POSTGRES_DB"]
        assert connector["database.user"] == db["POSTGRES_USER"]

    def test_connector_matches_the_readmes_example(self) -> None:
        """The README's connector block, value for value (its password is elided)."""
        readme = (ROOT / "README.md").read_text("utf-8")
        match = re.search(r"\*\*The connector\*\*.*?\n```json\n(.*?)\n```", readme, re.S)
        assert match, "README: connector example missing"
        example: dict[str, Any] = json.loads(match.group(1))
        connector = _connector()
        for key, value in example.items():
            if key != "database.password":
                assert connector[key] == value, key

    def test_password_comes_from_the_environment(self) -> None:
        """No password in the JSON: a placeholder Connect's EnvVarConfigProvider resolves
        from its own environment, which compose fills from POSTGRES_PASSWORD."""
        placeholder = _connector()["database.password"]
        match = re.fullmatch(r"\$\{env:([A-Z_][A-Z0-9_]*)\}", placeholder)
        assert match, placeholder
        variable = match.group(1)
        env = _env("connect")
        assert env["CONNECT_CONFIG_PROVIDERS"] == "env"
        assert env["CONNECT_CONFIG_PROVIDERS_ENV_CLASS"] == (
            "org.apache.kafka.common.config.provider.EnvVarConfigProvider"
        )
        assert re.fullmatch(env["CONNECT_CONFIG_PROVIDERS_ENV_PARAM_ALLOWLIST_PATTERN"], variable)
        assert env[variable] == _env("db")["POSTGRES_PASSWORD"]
        assert env[variable].startswith("${POSTGRES_PASSWORD")

    def test_registration_puts_the_connector_json(self) -> None:
        register = _service("connect-register")
        line = re.search(r"^    command: (\[.*\])$", register, re.M)
        assert line, "connect-register: command missing"
        command = json.loads(line.group(1))
        assert '    entrypoint: ["curl"]' in register
        assert command[command.index("-X") + 1] == "PUT"
        assert command[-1] == "http://connect:8083/connectors/documents/config"
        body = command[command.index("--data-binary") + 1]
        assert body.startswith("@")
        assert f"- ./deploy/cdc/connector.json:{body[1:]}:ro" in register
        assert "-f" in command[0]  # an HTTP error fails the one-shot service
        assert "connect:\n        condition: service_healthy" in register
        assert '    restart: "no"' in register

    def test_rules_file_is_the_readmes_example(self) -> None:
        from tests.readme_examples import example

        assert (CDC / "rules.toml").read_text("utf-8") == example("debezium-rules")

    def test_worker_reads_the_mounted_rules_file(self) -> None:
        """The worker's parser takes it; its topic is the connector's."""
        from cachebus.rules import load_rules
        from worker.sources import sources_of

        worker = _service("worker")
        # Empty unless the user sets it (the shipped rules without the profile); the
        # README's and the file's comment's command set it to the mounted file.
        assert _env("worker")["CACHEBUS_RULES_FILE"] == "${CACHEBUS_RULES_FILE:-}"
        path = "/etc/cachebus/rules.toml"
        assert f"- ./deploy/cdc/rules.toml:{path}:ro" in worker
        command = f"CACHEBUS_RULES_FILE={path} docker compose --profile cdc"
        assert command in (ROOT / "docker-compose.yml").read_text("utf-8")
        assert command in (ROOT / "README.md").read_text("utf-8").replace("\n", " ")
        from devtools.connect_cdc import DOCUMENTS_DDL

        sources = sources_of(load_rules(CDC / "rules.toml"))
        connector = _connector()
        topic = f"{connector['topic.prefix']}.{connector['table.include.list']}"
        assert sources.topics == (topic,)
        source = sources.debezium[topic]
        columns = set(re.findall(r"^    (\w+) ", DOCUMENTS_DDL, re.M))
        mapped = (source.doc_id, source.collection, source.tags, source.chunks,
                  source.content_hash)  # fmt: skip
        assert set(mapped) <= columns, set(mapped) - columns


def test_kafka_acls_cover_fausts_assignor_leader_topic() -> None:
    """faust creates and reads `<group>-__assignor-__leader`: the worker's ACLs grant it."""
    text = (ROOT / "docs" / "security.md").read_text()
    assert "cachebus-worker-__assignor-__leader" in text
