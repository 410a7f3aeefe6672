"""The deployment files for users' machines stay valid (no Docker engine needed)."""

from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
from pathlib import Path

from worker.settings import WorkerSettings

ROOT = Path(__file__).resolve().parents[2]


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


def test_kafka_acls_cover_fausts_assignor_leader_topic() -> None:
    """faust creates and reads `<group>-__assignor-__leader`: the worker's ACLs grant it."""
    text = (ROOT / "docs" / "security.md").read_text()
    assert "cachebus-worker-__assignor-__leader" in text
