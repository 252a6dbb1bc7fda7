"""Run a launcher (``deepspeed``, ``srun``) that starts the train stage's ranks, and wait for it.

Its output goes to ``RUN/train/launcher.log``; the trainer's own lines (``[train]``, ``[checkpoint]``) and errors
reach the stage's log as they come, and a failed job's error names the first rank's exception in one line.
The train stage writes its cluster section beside the job (``cluster.yaml``), so that
``python -m cluster.<launcher> RUN/train/job.json [--dry-run]`` (``job_main``) relaunches or prints it alone.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Optional

from cluster.config import ClusterConfig
from cluster.guard import start_guarded, stop_guarded
from core.files import write_text_atomic

PROJECT_ROOT = str(Path(__file__).resolve().parents[1])
CLUSTER_FILE = "cluster.yaml"

# the last line of a rank's traceback, e.g. "[rank0]: training.divergence.Diverged: step 6: ...": the first one is
# named in the stage's error (the others are mostly ranks that lost their peer)
RANK_ERROR = re.compile(r"((?:[A-Za-z_][\w]*\.)*(?:[A-Z]\w*Error|[A-Z]\w*Exception|Diverged|ResumeRefused)): (.+)$")


def run_launcher(
    name: str,
    cmd: list[str],
    env: dict,
    cwd: str,
    work_dir: str | Path,
    log: Callable[[str], None] = print,
    grace_s: float = 0.0,
    what: str = "",
) -> int:
    """Run ``cmd`` under the guard (it and its ranks end with this process, however it ends; ``grace_s``: see
    ``cluster.guard``) and wait. Raises RuntimeError naming ``what`` (default ``name``) and the first rank's error
    when it exits non-zero."""
    log(f"[{name}] {shlex.join(cmd)}")
    logfile = Path(work_dir) / "launcher.log"
    with open(logfile, "a") as f:
        pipe = dict(stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
        proc = start_guarded(cmd, grace_s=grace_s, env=env, cwd=cwd, **pipe)
        cause = None
        try:
            for line in proc.stdout:
                f.write(line)
                if "[train]" in line or "[checkpoint]" in line or "Error" in line:
                    log(line.rstrip())
                m = RANK_ERROR.search(line.rstrip()) if cause is None else None
                if m and not m.group(1).endswith("CalledProcessError"):  # the first rank's error, not the launcher's
                    cause = f"{m.group(1).rsplit('.', 1)[-1]}: {m.group(2)}"
            rc = proc.wait()
        finally:
            stop_guarded(proc)
    if rc != 0:
        raise RuntimeError(f"{what or name} exited with {rc}" + (f" ({cause})" if cause else "") + f"; see {logfile}")
    return rc


def project_env(base: Optional[dict] = None) -> dict:
    """``base`` (default: this process's environment) with the project first on PYTHONPATH and no telemetry."""
    from cluster.local_ray import QUIET_ENV

    env = dict(os.environ if base is None else base)
    env.update(QUIET_ENV)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (PROJECT_ROOT, env.get("PYTHONPATH")) if p)
    return env


def save_cluster_section(c: ClusterConfig, job_path: str | Path) -> Path:
    """Write the cluster section beside a job file (what ``job_main`` reads to relaunch it)."""
    import yaml

    from core.config import to_dict

    return write_text_atomic(Path(job_path).parent / CLUSTER_FILE, yaml.safe_dump(to_dict(c), sort_keys=False))


def load_cluster_section(job_path: str | Path) -> ClusterConfig:
    from core.config import from_dict, read_yaml

    path = Path(job_path).parent / CLUSTER_FILE
    return from_dict(ClusterConfig, read_yaml(path), source=str(path), path="cluster")


def job_main(argv: Optional[list[str]], what: str, print_plan: Callable, run: Callable) -> int:
    """``python -m cluster.<launcher> RUN/train/job.json [--dry-run]``: run (or print) the launch of a written job."""
    p = argparse.ArgumentParser(description=f"Run (or print) the {what} launch of a train stage's job.")
    p.add_argument("job", help=f"RUN/train/job.json (the train stage writes it, with {CLUSTER_FILE} beside it)")
    p.add_argument("--dry-run", action="store_true", help="print the launch command, run nothing")
    args = p.parse_args(argv)
    job = Path(args.job)
    if not job.is_file() or not (job.parent / CLUSTER_FILE).is_file():
        print(
            f"no job file {job} with {CLUSTER_FILE} beside it: run `pt2i run CONFIG --stage train` (it writes "
            f"both), or print the command from the config with `pt2i launch-command CONFIG`",
            file=sys.stderr,
        )
        return 2
    c = load_cluster_section(job)
    if args.dry_run:
        print_plan(c, job, job.parent)
        return 0
    return run(c, job, job.parent)
