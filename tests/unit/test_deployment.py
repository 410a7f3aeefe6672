"""The deployment files for users' machines stay valid (no Docker engine needed)."""

from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
from pathlib import Path

from cachebus.settings import Settings

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
        fields = {f.name.upper() for f in dataclasses.fields(Settings)}
        assert names and names <= fields, names - fields
