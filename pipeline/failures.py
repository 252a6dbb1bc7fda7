"""What stopped a stage: ``RUN_DIR/.failures/<stage>.json``, written by the runner when a stage raises (its error's
first line, when, where) and removed when the stage next starts; ``pt2i status`` prints it under the stage,
so a run left overnight says why it stopped without its log."""

from __future__ import annotations

import contextlib
import os
import socket
import time
from pathlib import Path
from typing import Optional

from core.files import read_json, write_json_atomic

FOLDER = ".failures"


def _path(run_dir: str | Path, stage: str) -> Path:
    return Path(run_dir) / FOLDER / f"{stage}.json"


def record_failure(run_dir: str | Path, stage: str, error: str) -> None:
    """Keep ``error`` (one line) as the reason ``stage`` stopped."""
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    record = {"stage": stage, "error": error, "time": when, "host": socket.gethostname(), "pid": os.getpid()}
    path = _path(run_dir, stage)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, record)


def clear_failure(run_dir: str | Path, stage: str) -> None:
    path = _path(run_dir, stage)
    path.unlink(missing_ok=True)
    with contextlib.suppress(OSError):  # the folder goes with its last record
        path.parent.rmdir()


def failure_of(run_dir: str | Path, stage: str) -> Optional[dict]:
    """The record of ``stage``'s last failure, or None (never failed, or started again since)."""
    record = read_json(_path(run_dir, stage))
    return record if isinstance(record, dict) and record.get("error") else None


def describe(record: dict) -> str:
    """``failed 2026-12-03 11:10:02 UTC on host: Diverged: step 6: ...``"""
    return f"failed {record.get('time', '?')} on {record.get('host', '?')}: {record['error']}"
