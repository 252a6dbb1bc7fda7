"""The environment a test hands a child Python process: this checkout first on PYTHONPATH, before whatever the
suite itself was started with (a machine whose packages are installed into a folder named by PYTHONPATH keeps
them in the child)."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def project_pythonpath() -> str:
    return os.pathsep.join([str(ROOT)] + [p for p in [os.environ.get("PYTHONPATH")] if p])


def project_env(**extra: str) -> dict[str, str]:
    """``os.environ`` with the checkout first on PYTHONPATH and ``extra`` on top."""
    return {**os.environ, "PYTHONPATH": project_pythonpath(), **extra}
