"""``pt2i sweep SWEEP.yaml``: one base experiment, its variants (and seeds), one comparison table.

Every (variant, seed) is a normal run directory, ``RUN_DIR/<variant>-s<seed>/``, run by the ordinary
runner (``run_stages``: lineage, one run per folder, resume) and understood by ``pt2i status``. What is
shared: a stage's output depends only on its config sections and its inputs (``pipeline.runner``), so
each stage of each run gets a key, the hash of (stage, its sections' hash, its inputs' keys), and lives
in the store, ``STORE/<stage>/<key>/``; the run directory holds a relative link to it. Runs whose sections
agree up to a stage link to the same folders: one download, one tokenize (and one training for variants
that differ only in sampling) for the whole sweep, and for every sweep that names the same store.

Order: first the stages that several runs share, one run at a time (the store is locked meanwhile); then
every run's remaining stages (each stored folder is locked while a run checks and writes it,
``pipeline.runner.stored_folder_lock``, so two runs, of this sweep or of another on the same store, never
write one folder at once: the second waits, then reuses it): one after another in this
process; with ``jobs`` > 1, as that many concurrent ``pt2i run`` child processes on this machine, each
pinned to its share of the cores (for runs too small to use several cores well); or,
with ``--address`` (a Ray job server, as ``pt2i submit``), as concurrent Ray jobs. A failed
run does not stop the others; the sweep then exits with an error naming them. Killed, a sweep resumes
where it was (each run resumes as ``pt2i run`` does). Last, ``pipeline.sweep_report`` writes the table.
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from core.stage import Stage, StageError
from pipeline.runner import is_finished, run_lock, run_stages, stage_hash
from pipeline.sweep_config import SweepConfig, VariantRun

Log = Callable[[str], None]


def stage_keys(cfg, stages: list[Stage]) -> dict[str, str]:
    """{stage: key} for the stages enabled with ``cfg``: equal keys, equal outputs."""
    keys: dict[str, str] = {}
    for st in stages:
        if not st.enabled(cfg):
            continue
        basis = {
            "stage": st.name,
            "config": stage_hash(cfg, st),
            "inputs": {n: keys.get(n) for n in st.inputs_for(cfg)},
        }
        keys[st.name] = hashlib.sha256(json.dumps(basis, sort_keys=True).encode()).hexdigest()[:16]
    return keys


@dataclass
class Plan:
    """The runs, each run's stage keys, and which runs use each stored folder."""

    runs: list[VariantRun]
    keys: list[dict[str, str]]
    stages: list[Stage]

    def users(self, name: str, key: str) -> list[int]:
        return [i for i, k in enumerate(self.keys) if k.get(name) == key]

    def shared(self, i: int) -> list[Stage]:
        """Run i's stages whose folder another run uses too."""
        return [
            st for st in self.stages if st.name in self.keys[i] and len(self.users(st.name, self.keys[i][st.name])) > 1
        ]

    def entries(self) -> list[tuple[str, str, list[int]]]:
        """Every stored folder the runs use, once: (stage, key, the runs using it)."""
        seen: dict[tuple[str, str], list[int]] = {}
        for i, keys in enumerate(self.keys):
            for name, key in keys.items():
                seen.setdefault((name, key), []).append(i)
        return [(name, key, users) for (name, key), users in seen.items()]

    def describe(self) -> list[str]:
        lines = []
        for name, key, users in self.entries():
            who = "all runs" if len(users) == len(self.runs) else ", ".join(self.runs[u].run_dir.name for u in users)
            lines.append(f"{name:10s} {key}  {len(users):3d} run(s): {who}")
        return lines


def make_plan(runs: list[VariantRun], stages: list[Stage]) -> Plan:
    return Plan(runs, [stage_keys(r.config, stages) for r in runs], stages)


def link_stages(run_dir: Path, keys: dict[str, str], store: Path, log: Log = print) -> None:
    """Each stage folder of ``run_dir`` becomes a relative link to its stored folder (a folder of the run's
    own, e.g. made by ``pt2i run --force`` in it, is left as it is)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    for name, key in keys.items():
        entry = store / name / key
        entry.parent.mkdir(parents=True, exist_ok=True)
        link, target = run_dir / name, os.path.relpath(entry, run_dir)
        if link.is_symlink():
            if os.readlink(link) == target:
                continue
            tmp = run_dir / f".{name}.link-{os.getpid()}"
            tmp.unlink(missing_ok=True)
            os.symlink(target, tmp)
            os.replace(tmp, link)  # the run's config changed: it now shares another folder
        elif link.exists():
            log(f"[sweep] {link} is a folder of its own, not shared; left as it is")
        else:
            os.symlink(target, link)


def _log_for(run: VariantRun, log: Log) -> Log:
    return lambda msg: log(f"[{run.run_dir.name}] {msg}")


def run_local(run: VariantRun, stages: list[Stage], log: Log) -> None:
    run_stages(run.config, run.run_dir, stages, log=_log_for(run, log))


def core_groups(jobs: int, cores: Optional[list[int]] = None) -> list[set[int]]:
    """This process's cores split into ``jobs`` disjoint groups (round robin); fewer when cores are fewer."""
    cores = sorted(os.sched_getaffinity(0)) if cores is None else sorted(cores)
    n = max(1, min(jobs, len(cores)))
    return [set(cores[i::n]) for i in range(n)]


CHILD_RUN = [sys.executable, "-m", "pipeline.cli", "run"]


class LocalProcesses:
    """Runs as ``pt2i run`` child processes, each pinned to a free core group; ``stop()`` ends them all (a
    killed or interrupted sweep leaves no child training behind). The child's output goes to
    RUN/sweep-run.log; its config, resolved, to RUN/sweep-run.yaml."""

    def __init__(self, groups: list[set[int]], argv: Optional[list[str]] = None):
        self.free: queue.Queue = queue.Queue()
        for g in groups:
            self.free.put(g)
        self.argv = list(argv or CHILD_RUN)
        self.live: dict[int, subprocess.Popen] = {}
        self.stopping = False

    def __call__(self, run: VariantRun, stages: list[Stage], log: Log) -> None:
        from core.files import write_text_atomic
        from pipeline.experiment import to_yaml

        cores = self.free.get()
        try:
            if self.stopping:
                raise StageError("the sweep was stopped")
            cfg_path = write_text_atomic(run.run_dir / "sweep-run.yaml", to_yaml(run.config))
            cmd = [*self.argv, str(cfg_path), "--stage", *(s.name for s in stages)]
            log_path = run.run_dir / "sweep-run.log"
            _log_for(run, log)(f"a child process on cores {sorted(cores)}; its log: {log_path}")
            with open(log_path, "a") as out:
                proc = subprocess.Popen(
                    cmd, stdout=out, stderr=subprocess.STDOUT, preexec_fn=lambda: os.sched_setaffinity(0, cores)
                )
                self.live[proc.pid] = proc
                try:
                    rc = proc.wait()
                finally:
                    self.live.pop(proc.pid, None)
            if rc != 0:
                tail = log_path.read_text(errors="replace").strip().splitlines()[-1:] or [""]
                raise StageError(f"exit status {rc}: {tail[0]} (log: {log_path})")
        finally:
            self.free.put(cores)

    def stop(self, timeout: float = 30.0) -> None:
        self.stopping = True
        procs = list(self.live.values())
        for p in procs:
            p.terminate()  # pt2i ends on SIGTERM as on Ctrl-C: its cleanups run
        deadline = time.time() + timeout
        for p in procs:
            try:
                p.wait(max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def submit_job(run: VariantRun, stages: list[Stage], address: str, log: Log) -> None:
    """The run (or the given stages) as a Ray job (``pt2i submit``); its log goes to RUN/sweep-job.log."""
    from cluster.submit import submit
    from pipeline.experiment import submitted_yaml

    names = [s.name for s in stages]
    with open(run.run_dir / "sweep-job.log", "a") as out:
        rc = submit(submitted_yaml(run.config), str(run.run_dir), address, names, None, False, out=out)
    if rc != 0:
        raise StageError(f"the Ray job of {run.run_dir} failed; its log: {run.run_dir / 'sweep-job.log'}")


def run_sweep(
    cfg: SweepConfig,
    runs: list[VariantRun],
    stages: Optional[list[Stage]] = None,
    address: Optional[str] = None,
    max_concurrent: int = 4,
    jobs: int = 1,
    log: Log = print,
    runner: Optional[Callable[[VariantRun, list[Stage], Log], None]] = None,
) -> dict:
    """Run every (variant, seed) of the sweep (module docstring) and write the comparison table.
    ``runner(run, stages, log)`` runs a run's stages (default: this process; with ``jobs`` > 1 a child
    process on its share of the cores; a Ray job with ``address``). Returns the report (``pipeline.sweep_report``)."""
    from pipeline.runner import order_stages
    from pipeline.sweep_report import write_sweep_report

    stages = stages if stages is not None else order_stages()
    children = runner if isinstance(runner, LocalProcesses) else None
    if address is None and jobs > 1:
        groups = core_groups(jobs)
        max_concurrent = len(groups)
    if runner is None:
        if address is not None:
            runner = lambda r, s, lg: submit_job(r, s, address, lg)  # noqa: E731
        elif jobs > 1:
            runner = children = LocalProcesses(groups)
        else:
            runner = run_local
    shared_runner = run_local if children is not None else runner  # the shared stages: in here, on every core
    t0 = time.time()
    plan = make_plan(runs, stages)
    store = Path(cfg.store)
    store.mkdir(parents=True, exist_ok=True)
    log(f"[sweep] {cfg.name}: {len(runs)} runs ({len(runs) // len(cfg.seeds)} variants x {len(cfg.seeds)} seeds)")
    for line in plan.describe():
        log(f"[sweep]   {line}")
    for run, keys in zip(runs, plan.keys):
        link_stages(run.run_dir, keys, store, log)
    with run_lock(store):  # the shared stages, one run at a time
        for i, run in enumerate(runs):
            todo = [st for st in plan.shared(i) if not is_finished(run.config, run.run_dir, st)]
            if todo:
                log(f"[sweep] shared stages {', '.join(s.name for s in todo)} (via {run.run_dir.name})")
                shared_runner(run, todo, log)
    failed: dict[str, str] = {}

    def one(i_run: tuple[int, VariantRun]) -> None:
        i, run = i_run
        log(f"[sweep] run {i + 1}/{len(runs)}: {run.label} -> {run.run_dir}")
        try:
            runner(run, stages, log)
        except Exception as exc:  # noqa: BLE001 - the other runs go on; named at the end
            failed[run.run_dir.name] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc) else ''}"
            log(f"[sweep] {run.label} failed: {failed[run.run_dir.name]}")

    if address is None and jobs <= 1:
        for item in enumerate(runs):
            one(item)
    else:
        pool = ThreadPoolExecutor(max_workers=max(1, max_concurrent))
        try:
            for fut in [pool.submit(one, item) for item in enumerate(runs)]:
                fut.result()
        except BaseException:  # Ctrl-C or SIGTERM: end the children now instead of waiting for them
            if children is not None:
                children.stop()
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown()
    report = write_sweep_report(cfg, plan, wall_seconds=time.time() - t0, failed=failed)
    log(f"[sweep] table: {report['paths']['report.md']}")
    if failed:
        raise StageError(
            f"{len(failed)} of {len(runs)} runs failed ({'; '.join(f'{k}: {v}' for k, v in failed.items())}); "
            f"rerun the sweep to resume them"
        )
    return report
