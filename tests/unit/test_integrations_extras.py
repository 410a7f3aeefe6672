"""The base install needs only redis and numpy; each integration names its extra."""

from __future__ import annotations

import email.utils
import json
import subprocess
import sys
import time

import pytest

HEAVY = ("langchain_core", "llama_index", "openai", "torch", "sentence_transformers")


def run(code: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_import_cachebus_imports_no_optional_package() -> None:
    out = run(
        "import sys, json, cachebus, cachebus.integrations, cachebus.integrations.core\n"
        f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    )
    assert json.loads(out) == []


@pytest.mark.parametrize(
    ("module", "blocked", "extra"),
    [
        ("cachebus.integrations.langchain", "langchain_core", "langchain"),
        ("cachebus.integrations.llamaindex", "llama_index", "llamaindex"),
        ("cachebus.embedders_openai", "openai", "openai"),
        ("cachebus.embedders_st", "sentence_transformers", "sentence-transformers"),
    ],
)
def test_missing_extra_is_one_clear_error(module: str, blocked: str, extra: str) -> None:
    out = run(
        "import sys, json\n"
        f"sys.modules[{blocked!r}] = None  # as if not installed\n"
        "from cachebus.integrations import MissingExtraError\n"
        "from cachebus.errors import ConfigError\n"
        "try:\n"
        f"    __import__({module!r})\n"
        "except MissingExtraError as exc:\n"
        "    print(json.dumps([str(exc), isinstance(exc, ImportError),"
        " isinstance(exc, ConfigError)]))\n"
    )
    message, is_import_error, is_config_error = json.loads(out)
    assert f"pip install 'cachebus[{extra}]'" in message
    assert is_import_error and is_config_error


def test_retry_after_forms() -> None:
    from cachebus.embedders_openai import _retry_after

    assert _retry_after({"retry-after": "2"}) == 2.0
    assert _retry_after({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    assert _retry_after({}) is None
    assert _retry_after({"retry-after": "soon"}) is None
    later = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 25 < (_retry_after({"retry-after": later}) or 0) <= 30
