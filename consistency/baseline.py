"""Today's library, for the comparison columns: ``cachebus/`` as it was at git
:data:`BASELINE_COMMIT`, extracted (``git archive``) into a temporary directory, and the
environment that makes a subprocess import it instead of the working tree's.

If git, the repository or the commit is missing, :func:`extract` says why instead of
failing: the report then shows that reason in the baseline columns.
"""

from __future__ import annotations

import io
import os
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path

from .model import Code

BASELINE_COMMIT = "077cbd4"
"""The last commit before the consistency work (docs/consistency.md)."""

REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Baseline:
    commit: str
    path: Path | None
    """Directory holding the extracted ``cachebus`` package; None when unavailable."""
    sha: str = ""
    reason: str = ""
    """Why it is unavailable."""

    @property
    def available(self) -> bool:
        return self.path is not None


def extract(dest: Path, *, repo: Path = REPO, commit: str = BASELINE_COMMIT) -> Baseline:
    """``git archive <commit> cachebus | tar -x -C <dest>``."""
    try:
        sha = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "--verify", f"{commit}^{{commit}}"],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        ).stdout.strip()
        archive = subprocess.run(
            ["git", "-C", str(repo), "archive", "--format=tar", sha, "cachebus"],
            capture_output=True,
            check=True,
            timeout=60,
        ).stdout
    except FileNotFoundError:
        return Baseline(commit, None, reason="git is not installed")
    except subprocess.CalledProcessError as exc:
        detail = (exc.stderr or b"").strip()
        text = detail.decode(errors="replace") if isinstance(detail, bytes) else str(detail)
        return Baseline(commit, None, reason=f"git could not provide {commit}: {text[:200]}")
    except subprocess.TimeoutExpired:
        return Baseline(commit, None, reason="git timed out")
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(dest, filter="data")
    if not (dest / "cachebus" / "__init__.py").is_file():
        return Baseline(commit, None, sha, reason=f"no cachebus package at {commit}")
    return Baseline(commit, dest.resolve(), sha)


def subprocess_env(code: Code, baseline: Baseline | None) -> tuple[dict[str, str], Path]:
    """Environment and working directory for ``python -m consistency.entry``.

    ``python -m`` puts the working directory first on ``sys.path``: the baseline runs
    from the extracted directory (so ``cachebus`` is today's), the new code from the
    repository. ``PYTHONPATH`` comes before the editable install's path entry.
    """
    env = dict(os.environ)
    env.pop("CACHEBUS_TEST_REDIS_URL", None)
    if code == "baseline":
        if baseline is None or baseline.path is None:
            raise ValueError("the baseline library is not available")
        env["PYTHONPATH"] = os.pathsep.join([str(baseline.path), str(REPO)])
        return env, baseline.path
    env["PYTHONPATH"] = str(REPO)
    return env, REPO
