"""``pt2i submit``: run the pipeline (or some stages) as a Ray job on a cluster.

The job runs inside an unpacked copy of this project's packages (Ray's ``working_dir`` runtime env):
only ``SHIPPED`` (the Python packages and ``pyproject.toml``) is uploaded, never a run directory, a data
folder, a virtual environment or anything else that happens to sit in the checkout (``EXCLUDES`` excludes
everything at the top but them; Ray also applies the ``.gitignore`` files). Nothing may depend on the
job's current directory: the resolved config travels in the job's
environment (``PT2I_CONFIG_YAML``) with ``run_dir`` and every relative path setting that names a file here
(``cluster.hostfile``, url lists, checkpoints) made absolute on the submitting side, and the
stages connect to the cluster they run on (``cluster.address=auto``) instead of starting a Ray of
their own. On a multi-node cluster ``run_dir`` must be shared storage (a shared mount).

The head must answer within ``connect_timeout_s`` (else :class:`SubmitError` names the address); the
job's log is then followed as it grows (Ray's log tail), not fetched whole again and again.
"""

from __future__ import annotations

import asyncio
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


class SubmitError(RuntimeError):
    """The job could not be submitted (the head did not answer); the message says where and what to do."""


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


def job_server_url(address: str) -> str | None:
    """``http(s)://HOST:PORT`` of a job server address given as a URL or as ``HOST:PORT``; None for the
    other forms Ray's client resolves itself (``ray://``, ``auto``)."""
    address = address.rstrip("/")
    if address.startswith(("http://", "https://")):
        return address
    return None if "://" in address or address == "auto" else f"http://{address}"


def wait_for_head(address: str, timeout_s: float, out=None) -> None:
    """Return once the job server at ``address`` answers ``/api/version``; :class:`SubmitError` after
    ``timeout_s`` seconds (each try is bounded too, so a silent host cannot hold it longer). A first try that
    fails is said on ``out`` (a head that is starting answers a little later, so it is tried again)."""
    import requests

    url = f"{job_server_url(address)}/api/version"
    deadline = time.monotonic() + timeout_s
    said = out is None
    while True:
        try:
            requests.get(url, timeout=max(0.1, min(deadline - time.monotonic(), 10.0))).raise_for_status()
            return
        except requests.RequestException as exc:
            left = deadline - time.monotonic()
            if left <= 0:
                raise SubmitError(
                    f"no Ray job server answered at {address} within {timeout_s:g} s "
                    f"({type(exc).__name__}); check that the head is up and its dashboard port is reachable "
                    f"from here, or raise --connect-timeout"
                ) from None
            if not said:
                print(
                    f"no answer yet from the Ray job server at {address} ({type(exc).__name__}); trying again for "
                    f"up to {timeout_s:g} s (--connect-timeout)",
                    file=out,
                    flush=True,
                )
                said = True
            time.sleep(min(1.0, left))


def follow_logs(client, job_id: str, out) -> tuple[int, bool]:
    """Write the job's log to ``out`` as it grows, until the job server closes the tail (the job ended).
    Returns (characters written, whether the tail ran to its end)."""
    import aiohttp

    written = 0

    async def tail() -> None:
        nonlocal written
        async for chunk in client.tail_job_logs(job_id):
            out.write(chunk)
            out.flush()
            written += len(chunk)

    try:
        asyncio.run(tail())
    except (RuntimeError, OSError, aiohttp.ClientError) as exc:  # the connection dropped
        print(f"\n(log tail interrupted: {exc}; polling the job instead)", file=out, flush=True)
        return written, False
    return written, True


def submit(
    config_yaml: str,
    run_dir: str,
    address: str,
    stages: list[str] = (),
    from_stage: str | None = None,
    force: bool = False,
    poll_s: float = 1.0,
    agent_wait_s: float = 120.0,
    out=None,
    connect_timeout_s: float = 60.0,
) -> int:
    """Submit the pipeline run of ``config_yaml`` (the resolved experiment, ``run_dir`` absolute), stream the
    job's logs to ``out``, return 0 when the job succeeded (1 otherwise). Raises :class:`SubmitError` when
    the head does not answer within ``connect_timeout_s``. ``out``: default the standard output at the call."""
    from ray.job_submission import JobSubmissionClient

    out = sys.stdout if out is None else out
    if job_server_url(address):
        wait_for_head(address, connect_timeout_s, out)
    client = JobSubmissionClient(job_server_url(address) or address)
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
    shown, complete = follow_logs(client, job_id, out)
    while (status := getattr(client.get_job_status(job_id), "value", "")) not in TERMINAL:
        time.sleep(poll_s)
    if not complete:  # what the interrupted tail missed
        out.write(client.get_job_logs(job_id)[shown:])
        out.flush()
    print(f"job {job_id}: {status}", file=out, flush=True)
    return 0 if status == "SUCCEEDED" else 1
