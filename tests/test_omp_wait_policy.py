"""The suite's processes run OpenMP with passive waiting (tests/conftest.py): set before torch loaded its runtime,
so it is in force in this process and in the processes tests start."""

from __future__ import annotations

import os
import subprocess
import sys


def test_openmp_threads_wait_passively_here_and_in_child_processes():
    assert os.environ.get("OMP_WAIT_POLICY") == "PASSIVE"
    code = "import os, torch; print(os.environ.get('OMP_WAIT_POLICY'), torch.get_num_threads() >= 1)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True).stdout
    assert out.split() == ["PASSIVE", "True"]
