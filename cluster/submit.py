"""``pt2i submit``: run the pipeline (or some stages) as a Ray job on a cluster.

The job runs inside an unpacked copy of this project's packages (Ray's ``working_dir`` runtime env):
only ``SHIPPED`` (the Python packages and ``pyproject.toml``) is uploaded, never a run directory, a data
folder, a virtual environment or anything else that happens to sit in the checkout (``EXCLUDES`` excludes
everything at the top but them; Ray also applies the ``.gitignore`` files). Nothing may depend on the
job's current directory: the resolved config travels in the job's
environment (``PT2I_CONFIG_YAML``) with ``run_dir`` made absolute on the submitting side, and the
stages connect to the cluster they run on (``cluster.address=auto``) instead of starting a Ray of
their own. On a multi-node cluster ``run_dir`` must be shared storage (a shared mount).
"""

from __future__ import annotations

import shlex
import sys
import time

from cluster.local_ray import PROJECT_ROOT, QUIET_ENV

CONFIG_ENV = "PT2I_CONFIG_YAML"
SHIPPED = ("core", "cluster", "tokenization", "training", "evaluation", "pipeline", "pyproject.toml")
# gitignore patterns, the last match wins: everything at the top is excluded, then the shipped ones re-included
# ("." is the working directory itself, which Ray checks too)
EXCLUDES = ["/*", "!.", *(f"!/{name}" for name in SHIPPED), "**/__pycache__", "*.pyc", "*.egg-info"]
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


def job_entrypoint(stages: list[str], from_stage: str | None, force: bool) -> str:
    args = ["python", "-m", "pipeline.cli", "run", f"env:{CONFIG_ENV}"]
    for s in stages:
        args += ["--stage", s]
    if from_stage:
        args += ["--from", from_stage]
    if force:
        args.append("--force")
    return " ".join(shlex.quote(a) for a in args)


def job_runtime_env(config_yaml: str) -> dict:
    """Ship the project's packages (``SHIPPED``) and the resolved config (whose ``cluster.address`` is
    ``auto``, so the stages join the job's cluster)."""
    return {
        "working_dir": PROJECT_ROOT,
        "excludes": EXCLUDES,
        "env_vars": {**QUIET_ENV, CONFIG_ENV: config_yaml},
    }


def submit(
    config_yaml: str,
    run_dir: str,
    address: str,
    stages: list[str] = (),
    from_stage: str | None = None,
    force: bool = False,
    poll_s: float = 1.0,
    agent_wait_s: float = 120.0,
    out=sys.stdout,
) -> int:
    """Submit the pipeline run of ``config_yaml`` (the resolved experiment, ``run_dir`` absolute), stream the
    job's logs to ``out``, return 0 when the job succeeded (1 otherwise)."""
    from ray.job_submission import JobSubmissionClient

    client = JobSubmissionClient(address)
    deadline = time.time() + agent_wait_s
    while True:  # a head that has just started answers before its job agent is up
        try:
            job_id = client.submit_job(
                entrypoint=job_entrypoint(list(stages), from_stage, force),
                runtime_env=job_runtime_env(config_yaml),
                metadata={"pt2i_run_dir": run_dir},
            )
            break
        except RuntimeError as exc:
            if "No available agent" not in str(exc) or time.time() > deadline:
                raise
            time.sleep(2)
    print(f"submitted {job_id} to {address}; run directory {run_dir}", file=out, flush=True)
    shown = 0
    while True:
        status = getattr(client.get_job_status(job_id), "value", "")
        logs = client.get_job_logs(job_id)
        if len(logs) > shown:
            out.write(logs[shown:])
            out.flush()
            shown = len(logs)
        if status in TERMINAL:
            break
        time.sleep(poll_s)
    print(f"job {job_id}: {status}", file=out, flush=True)
    return 0 if status == "SUCCEEDED" else 1
