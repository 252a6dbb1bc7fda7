"""The README's test command runs the suite on pytest-xdist workers: the tests that share the costly session
fixtures (``tests.conftest.SHARED_FIXTURES``) must run on one worker, first, so those are built once. Run here on a
stand-in suite with the real collection hook and the README's pytest options (a pytest or xdist release that
stops grouping, as pytest 9.2 did with xdist 3.8, fails this)."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import textwrap

from tests.project_env import project_env
from tests.test_readme import readme_commands

SUITE = """
import json, os, time

def record(name):
    with open(os.environ["RECORD"], "a") as f:
        f.write(json.dumps([name, os.environ.get("PYTEST_XDIST_WORKER"), time.time()]) + "\\n")

def test_a_plain(): record("plain"); time.sleep(0.3)
def test_b_tokenizer(shapes_tokenizer): record("shared")
def test_c_plain(): record("plain"); time.sleep(0.3)
def test_d_t5(shapes_t5): record("shared")
def test_e_plain(): record("plain"); time.sleep(0.3)
def test_f_both(shapes_tokenizer, shapes_t5): record("shared")
def test_g_plain(): record("plain"); time.sleep(0.3)
"""

CONFTEST = """
import json, os, pytest
from tests.conftest import pytest_collection_modifyitems  # the hook under test

def build(name):
    with open(os.environ["RECORD"], "a") as f:
        f.write(json.dumps(["build " + name, os.environ.get("PYTEST_XDIST_WORKER"), 0]) + "\\n")

@pytest.fixture(scope="session")
def shapes_tokenizer():
    build("tokenizer")

@pytest.fixture(scope="session")
def shapes_t5():
    build("t5")
"""


def readme_pytest_options() -> list[str]:
    """The options after ``pytest`` in the README's test command (``-q -n 2 --dist loadgroup``)."""
    _, tests = readme_commands()
    argv = shlex.split(tests.strip().rsplit("&&", 1)[1])
    return argv[argv.index("pytest") + 1 :]


def test_tests_sharing_the_session_fixtures_run_first_on_one_worker(tmp_path):
    options = readme_pytest_options()
    assert "-n" in options, options  # the suite runs on workers; without them this test has nothing to check
    (tmp_path / "test_stand_in.py").write_text(textwrap.dedent(SUITE))
    (tmp_path / "conftest.py").write_text(textwrap.dedent(CONFTEST))
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    record = tmp_path / "record.jsonl"
    env = project_env(RECORD=str(record))
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", *options, "-p", "no:cacheprovider", "--rootdir", str(tmp_path), str(tmp_path)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    rows = [json.loads(line) for line in record.read_text().splitlines()]
    builds = [r for r in rows if r[0].startswith("build")]
    assert sorted(r[0] for r in builds) == ["build t5", "build tokenizer"], rows  # each built once
    shared = [r for r in rows if r[0] == "shared"]
    workers = {r[1] for r in shared}
    assert len(shared) == 3 and len(workers) == 1, rows
    (worker,) = workers
    assert worker is not None, rows  # ran on an xdist worker
    on_that_worker = [r for r in rows if r[1] == worker and not r[0].startswith("build")]
    assert [r[0] for r in on_that_worker[:3]] == ["shared"] * 3, rows  # first
    assert {r[1] for r in rows if r[0] == "plain"} - {worker}, rows  # the other worker took plain tests


def test_a_test_that_sets_torch_s_threads_leaves_the_next_test_the_count_it_found(tmp_path):
    # Trained weights depend on the thread count, and which test runs before which on a worker varies between runs.
    (tmp_path / "conftest.py").write_text("from tests.conftest import torch_threads_kept  # the fixture under test\n")
    (tmp_path / "test_stand_in.py").write_text(
        textwrap.dedent(
            """
            import torch

            FOUND = torch.get_num_threads()

            def test_a_sets_its_own():
                torch.set_num_threads(FOUND + 1)

            def test_b_finds_the_count():
                assert torch.get_num_threads() == FOUND
            """
        )
    )
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-n", "0", "-p", "no:cacheprovider", "--rootdir", str(tmp_path)],
        cwd=tmp_path,
        env=project_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0 and "2 passed" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-2000:]
