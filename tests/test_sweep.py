"""``pt2i sweep``: a base experiment's variants x seeds as normal run directories linking to shared stage
folders (stages whose sections agree run once), one comparison table (mean +- sd over seeds, the paper's
column, a plot), resume after a kill, concurrent runs after the shared stages, errors naming the file.
The stages here are cheap stand-ins (tests/sweep_utils.py); the real pipeline, as Ray jobs: test_submit.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from core.config import ConfigError
from pipeline.runner import stage_state
from pipeline.sweep import run_sweep
from pipeline.sweep_config import load_sweep
from tests.project_env import project_env, project_pythonpath
from tests.sweep_utils import STAGES, calls

ROOT = Path(__file__).resolve().parents[1]


def write_sweep(tmp_path: Path, **extra) -> Path:
    doc = {
        "base": str(ROOT / "configs" / "tiny.yaml"),
        "name": "test-sweep",
        "run_dir": str(tmp_path / "sweep"),
        "seeds": [0, 1],
        "columns": ["attribute_match", "token_nll"],
        "variants": [
            {"name": "no errors", "set": {"train.p_error": 0.0}, "paper": {"FID": 15.86}},
            {"name": "p_error 0.3", "set": {"train.p_error": 0.3}, "paper": {"FID": 13.28}},
        ],
        **extra,
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(json.dumps(doc))
    return path


@pytest.fixture
def call_log(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "calls.txt"
    monkeypatch.setenv("PT2I_TEST_CALLS", str(path))
    monkeypatch.delenv("PT2I_TEST_HANG", raising=False)
    return path


def test_shared_stages_run_once_and_the_table_has_every_variant(tmp_path, call_log):
    cfg, runs = load_sweep(write_sweep(tmp_path))
    assert [r.run_dir.name for r in runs] == ["no-errors-s0", "no-errors-s1", "p-error-0-3-s0", "p-error-0-3-s1"]
    assert [(r.config.train.p_error, r.config.train.seed, r.config.sample.seed) for r in runs][1:3] == [
        (0.0, 1, 1),
        (0.3, 0, 0),
    ]
    report = run_sweep(cfg, runs, stages=STAGES, log=lambda m: None)
    got = calls(call_log)
    assert got.count("synthetic no-errors-s0") == 1 and sum(c.startswith("synthetic") for c in got) == 1
    assert sorted(c for c in got if c.startswith("train")) == sorted(f"train {r.run_dir.name}" for r in runs)
    targets = {os.path.realpath(r.run_dir / "synthetic") for r in runs}
    assert len(targets) == 1 and all((r.run_dir / "synthetic").is_symlink() for r in runs)
    assert len({os.path.realpath(r.run_dir / "train") for r in runs}) == 4
    for r in runs:  # each run directory is current for its own config
        assert all(stage_state(r.config, r.run_dir, st).state == "current" for st in STAGES)
        assert (r.run_dir / "config.yaml").is_file()

    rows = {row["variant"]: row["values"] for row in report["rows"]}
    am = rows["no errors"]["attribute_match"]
    assert am["mean"] == pytest.approx(1.005) and am["sd"] == pytest.approx(0.01 / 2**0.5) and am["n"] == 2
    assert rows["p_error 0.3"]["token_nll"]["mean"] == pytest.approx(2.3)
    md = (Path(cfg.run_dir) / "report.md").read_text()
    assert "| no errors | 1.005 ± 0.007 (2) | 2.000 ± 0.000 (2) | 15.86 |" in md
    assert "| p_error 0.3 | 0.705 ± 0.007 (2) | 2.300 ± 0.000 (2) | 13.28 |" in md
    assert (Path(cfg.run_dir) / "plot.png").stat().st_size > 1000
    assert json.loads((Path(cfg.run_dir) / "report.json").read_text())["noise"]["attribute_match"] > 0

    run_sweep(cfg, runs, stages=STAGES, log=lambda m: None)  # all current: nothing runs again
    assert calls(call_log) == got


def start_hanging_sweep(path: Path, *args: str) -> tuple[subprocess.Popen, Path]:
    """``python -m tests.sweep_utils SWEEP [ARGS]`` whose run p-error-0-3-s0 hangs in train; waits until that
    train has started (its ``started`` file holds the pid of the process training it)."""
    env = project_env(PT2I_TEST_HANG="p-error-0-3-s0")
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.sweep_utils", str(path), *args],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    started = path.parent / "sweep" / "p-error-0-3-s0" / "train" / "started"
    wait_for(started, proc, "the sweep did not start the hanging run")
    return proc, started


def wait_for(path: Path, proc: subprocess.Popen, failure: str) -> None:
    """Wait until ``path`` has content; ``failure`` (the sweep killed) when the sweep exits or 120 s pass."""
    deadline = time.time() + 120
    while not (path.exists() and path.read_text()):
        if proc.poll() is not None or time.time() > deadline:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            raise AssertionError(failure)
        time.sleep(0.2)


def test_a_killed_sweep_resumes(tmp_path, call_log):
    """SIGKILL while the second variant trains; the rerun redoes only that run's unfinished stages."""
    path = write_sweep(tmp_path, seeds=[0])
    proc, _ = start_hanging_sweep(path)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    cfg, runs = load_sweep(path)
    assert stage_state(runs[1].config, runs[1].run_dir, STAGES[1]).state == "unfinished"
    run_sweep(cfg, runs, stages=STAGES, log=lambda m: None)
    got = calls(call_log)
    assert got.count("synthetic no-errors-s0") == 1 and got.count("train no-errors-s0") == 1
    assert got.count("train p-error-0-3-s0") == 2 and got.count("evaluate p-error-0-3-s0") == 1
    assert [
        row["values"]["attribute_match"]["mean"]
        for row in json.loads((tmp_path / "sweep" / "report.json").read_text())["rows"]
    ] == pytest.approx([1.0, 0.7])


def test_concurrent_runs_start_after_the_shared_stages(tmp_path, call_log):
    """With a cluster address each run is a job (here a stand-in runner in threads): the stages several runs
    share are done first, one run at a time; then the runs go concurrently, each with every stage."""
    from pipeline.sweep import run_local

    cfg, runs = load_sweep(write_sweep(tmp_path))
    jobs, lock, active, peak = [], threading.Lock(), [0], [0]

    def runner(run, stages, log):
        with lock:
            jobs.append((run.run_dir.name, [s.name for s in stages]))
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        time.sleep(0.3)
        try:
            run_local(run, stages, log)
        finally:
            with lock:
                active[0] -= 1

    run_sweep(
        cfg, runs, stages=STAGES, address="http://127.0.0.1:1", max_concurrent=2, runner=runner, log=lambda m: None
    )
    assert jobs[0] == ("no-errors-s0", ["synthetic"])
    assert sorted(jobs[1:]) == sorted((r.run_dir.name, ["synthetic", "train", "evaluate"]) for r in runs)
    assert peak[0] == 2 and sum(c.startswith("synthetic") for c in calls(call_log)) == 1


def test_local_jobs_run_each_run_in_a_child_process_on_its_own_cores(tmp_path, call_log, monkeypatch):
    """``pt2i sweep --jobs 2``: the shared stages in the sweep's process, then each run as a child process
    pinned to one of two disjoint core groups; the same table as one after another."""
    from pipeline.sweep import LocalProcesses, core_groups
    from tests.sweep_utils import CHILD

    monkeypatch.setenv("PYTHONPATH", project_pythonpath())
    cfg, runs = load_sweep(write_sweep(tmp_path))
    groups = core_groups(2)
    assert len(groups) == min(2, len(os.sched_getaffinity(0))) and set().union(*groups) == os.sched_getaffinity(0)
    report = run_sweep(cfg, runs, stages=STAGES, jobs=2, runner=LocalProcesses(groups, argv=CHILD), log=lambda m: None)
    got = calls(call_log)
    assert sum(c.startswith("synthetic") for c in got) == 1
    assert sorted(c for c in got if not c.startswith("synthetic")) == sorted(
        f"{st} {r.run_dir.name}" for r in runs for st in ("train", "evaluate")
    )
    used = [{int(c) for c in (r.run_dir / "train" / "cores.txt").read_text().split()} for r in runs]
    assert all(u in groups for u in used) and len({frozenset(u) for u in used}) == len(groups)
    assert all((r.run_dir / "sweep-run.log").is_file() for r in runs)
    assert [row["values"]["attribute_match"]["mean"] for row in report["rows"]] == pytest.approx([1.005, 0.705])


def test_a_stopped_local_jobs_sweep_ends_its_children_and_resumes(tmp_path, call_log):
    """SIGTERM to a ``--jobs 2`` sweep while a child trains: the child is ended with it; the rerun redoes only
    that run's unfinished stages."""
    path = write_sweep(tmp_path, seeds=[0])
    proc, started = start_hanging_sweep(path, "2")
    try:
        child = int(started.read_text())
        # the other child trains no-errors-s0 at the same time: let it finish, or the stop catches it mid-stage
        done = tmp_path / "sweep" / "no-errors-s0" / "train" / "manifest.json"
        wait_for(done, proc, "the sweep did not finish no-errors-s0's train")
        proc.terminate()
        assert proc.wait(60) != 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    with pytest.raises(ProcessLookupError):
        os.kill(child, 0)
    cfg, runs = load_sweep(path)
    assert stage_state(runs[1].config, runs[1].run_dir, STAGES[1]).state == "unfinished"
    run_sweep(cfg, runs, stages=STAGES, log=lambda m: None)
    got = calls(call_log)
    assert got.count("train no-errors-s0") == 1 and got.count("train p-error-0-3-s0") == 2


def test_sweep_file_errors_name_the_file_and_the_variant(tmp_path):
    bad = write_sweep(tmp_path, variants=[{"name": "typo", "set": {"train.p_eror": 0.1}}])
    with pytest.raises(ConfigError, match=r"sweep.yaml: variant 'typo': .*train.p_eror: unknown key"):
        load_sweep(bad)
    with pytest.raises(ConfigError, match=r"sweep.yaml: columns: unknown column\(s\) \['fdi'\]"):
        load_sweep(write_sweep(tmp_path, columns=["fdi"]))
    with pytest.raises(ConfigError, match=r"sweep.yaml: variant '.*' with --set train.stpes=3: .*train.stpes: unknown"):
        load_sweep(write_sweep(tmp_path), ["train.stpes=3"])
    learned = [
        {"name": f"learned {h}", "set": {"train.order": "learned", "train.order_learner.hidden": h}} for h in (8, 16)
    ]
    _, runs = load_sweep(write_sweep(tmp_path, variants=learned), ["sample.order=learned"])  # valid with each variant
    assert {r.config.sample.order for r in runs} == {"learned"}
    with pytest.raises(ConfigError, match="repeated: a-b"):
        load_sweep(write_sweep(tmp_path, variants=[{"name": "a b"}, {"name": "a-b"}]))
    cfg, runs = load_sweep(write_sweep(tmp_path, variants=[], grid={"train.stages": [2, 4]}, seeds=[0]))
    assert [r.variant.name for r in runs] == ["train.stages=2", "train.stages=4"] and runs[1].config.train.stages == 4
    with pytest.raises(ConfigError, match=r"variant 'train.seed=1' sets train.seed, which seed_keys writes"):
        load_sweep(write_sweep(tmp_path, variants=[], grid={"train.seed": [1, 2]}))  # each run would be seed 0
    with pytest.raises(ConfigError, match=r"variant 'fixed' sets sample.seed"):
        load_sweep(write_sweep(tmp_path, variants=[{"name": "fixed", "set": {"sample.seed": 7}}]))


def test_two_sweeps_on_one_store_never_write_one_folder_at_once(tmp_path, call_log):
    """Each sweep has one run, so nothing is shared within a sweep; both runs link to the same stored folders.
    Run at once, one writes each folder while the other waits, then reuses it: every stage runs once. (The first
    sweep's first stage holds on until the other run says it waits: without the lock it would run twice.)"""
    import tests.sweep_utils as su
    from pipeline.sweep import run_local

    entered, waiting, logs = threading.Event(), threading.Event(), []

    def log(msg: str) -> None:
        logs.append(msg)
        if "is being written by another run; waiting for it" in msg:
            waiting.set()

    def held(fn):
        def stage(ctx):
            if ctx.stage.name == "synthetic":
                entered.set()
                waiting.wait(10)
            return fn(ctx)

        return stage

    stages = [type(s)(s.name, held(s.fn), s.inputs, s.sections) for s in su.STAGES]
    variants = [{"name": "p_error 0.3", "set": {"train.p_error": 0.3}}]
    sweeps = []
    for name in ("first", "second"):
        (tmp_path / name).mkdir()
        doc = dict(name=name, run_dir=str(tmp_path / name / "runs"), store=str(tmp_path / "store"), seeds=[0])
        sweeps.append(load_sweep(write_sweep(tmp_path / name, **doc, variants=variants)))
    threads = [
        threading.Thread(target=run_sweep, args=sweep, kwargs=dict(stages=stages, log=log, runner=run_local))
        for sweep in sweeps
    ]
    threads[0].start()
    assert entered.wait(30)  # the first sweep writes its first stage (its store lock, held while it plans, is free)
    threads[1].start()
    for t in threads:
        t.join(60)
    assert waiting.is_set()
    assert sorted(c.split()[0] for c in calls(call_log)) == ["evaluate", "synthetic", "train"]
    store = tmp_path / "store"
    assert all(len(list((store / s).iterdir())) == 1 for s in ("synthetic", "train", "evaluate"))  # locks apart


def test_a_seed_without_a_value_is_counted_not_hidden():
    """A seed whose metric is missing (failed earlier, or NaN) shows as "n of N seeds", never as a one-seed row."""
    from pipeline.sweep_report import _fmt, summarize

    assert _fmt(summarize([0.574, 0.535])) == "0.554 ± 0.028 (2)"
    assert _fmt(summarize([0.574])) == "0.574"
    assert _fmt(summarize([0.574, None])) == "0.574 (1 of 2 seeds)"
    assert _fmt(summarize([0.574, float("nan"), 0.5])) == "0.537 ± 0.052 (2 of 3 seeds)"
    assert _fmt(summarize([None, None])) == "-"
