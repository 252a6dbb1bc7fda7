"""The suite's CPU report (tests/cpu_report.py) counts a test's own CPU and that of the subprocesses it ran."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from tests.project_env import project_env

ROOT = Path(__file__).resolve().parents[1]

TESTS = """
import subprocess, sys, time

def burn(seconds):
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass

def test_burns_in_process():
    burn(1.0)

CHILD = "import time\\nend = time.process_time() + 1.5\\nwhile time.process_time() < end: pass"

def test_burns_in_a_subprocess():
    subprocess.run([sys.executable, "-c", CHILD], check=True)

def test_sleeps():
    time.sleep(1.0)
"""


def test_the_report_ranks_tests_by_cpu_seconds_including_subprocesses(tmp_path):
    (tmp_path / "conftest.py").write_text(
        "from tests.cpu_report import pytest_runtest_makereport, pytest_runtest_setup, pytest_terminal_summary\n"
    )
    (tmp_path / "test_costs.py").write_text(TESTS)
    env = project_env()
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly", str(tmp_path)]
    run = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout[-3000:]
    assert re.search(r"most CPU, 3 of 3 tests \(\d+ CPU-s in all\)", run.stdout), run.stdout[-3000:]
    rows = re.findall(r"^\s*([\d.]+) CPU-s  \S+::(\w+)$", run.stdout, re.M)
    assert [name for _, name in rows] == ["test_burns_in_a_subprocess", "test_burns_in_process", "test_sleeps"]
    cost = {name: float(c) for c, name in rows}
    assert cost["test_burns_in_a_subprocess"] >= 1.5 and 1.0 <= cost["test_burns_in_process"] < 1.5
    assert cost["test_sleeps"] < 0.5  # waiting costs no CPU
