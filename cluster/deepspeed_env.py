"""The environment file DeepSpeed's multi-node launcher exports on every node (``DS_ENV_FILE``).

DeepSpeed starts the ranks of the other nodes over pdsh/ssh (or mpirun, srun, ...) with only the variables named
``PYTHON*``, ``NCCL*``, ``MLFLOW*``, ``MV2*``, ``UCX*`` and the ``KEY=value`` lines of ``~/.deepspeed_env`` and
``./.deepspeed_env`` (``DS_ENV_FILE`` names another file). A kernel setting (``core.environment.KERNEL_ENV``:
``ATEN_CPU_CAPABILITY``, ...) or the CPU ranks' ``OMP_NUM_THREADS`` set where the run starts would then hold for
the first node's ranks only: the other nodes would run other kernels under the environment the run recorded.

So a multi-node launch that has such settings writes ``RUN/train/deepspeed_env``: them first, then the lines of
the user's own file(s) as DeepSpeed would have read them (a later line wins: the user's file keeps the last word),
and points ``DS_ENV_FILE`` at it, an absolute path (DeepSpeed joins the name to ``~`` and to ``.``, which leaves an
absolute path as it is).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from core.environment import kernel_env
from core.files import write_text_atomic

FILE = "deepspeed_env"
DEFAULT_NAME = ".deepspeed_env"  # DeepSpeed's name when DS_ENV_FILE is unset


def forwarded(env: Mapping[str, str], cpu_ranks: bool) -> dict:
    """What every rank on every node must see as the launching process does: the kernel settings, and for
    CPU ranks their thread count."""
    out = kernel_env(env)
    if cpu_ranks and env.get("OMP_NUM_THREADS"):
        out["OMP_NUM_THREADS"] = env["OMP_NUM_THREADS"]
    return out


def user_files(env: Mapping[str, str], cwd: str | Path) -> list[Path]:
    """The files DeepSpeed's runner reads with ``env`` from ``cwd`` (home first, then the working directory)."""
    name = env.get("DS_ENV_FILE", DEFAULT_NAME)
    home = env.get("HOME") or os.path.expanduser("~")
    return [Path(os.path.join(d, name)) for d in (home, str(cwd))]


def env_file_text(env: Mapping[str, str], cwd: str | Path, cpu_ranks: bool, path: Path) -> str:
    """The file's ``KEY=value`` lines: ``forwarded`` settings, then the non-blank lines of the user's files
    (``path`` itself skipped, should DS_ENV_FILE already name it); empty when nothing is forwarded."""
    own = forwarded(env, cpu_ranks)
    if not own:
        return ""
    lines, seen = [f"{k}={v}" for k, v in own.items()], {path.resolve()}
    for f in user_files(env, cwd):
        if f.resolve() in seen or not f.is_file():
            continue
        seen.add(f.resolve())
        lines += [line for line in f.read_text().splitlines() if line.strip()]
    return "".join(f"{line}\n" for line in lines)


def env_file(work_dir: str | Path, env: Mapping[str, str], cwd: str | Path, cpu_ranks: bool, write: bool = True):
    """(absolute path, text) of ``work_dir/deepspeed_env``, written when ``write``; (None, "") when nothing is
    forwarded (DeepSpeed then reads the user's files itself, as ever)."""
    path = (Path(work_dir) / FILE).absolute()
    text = env_file_text(env, cwd, cpu_ranks, path)
    if not text:
        return None, ""
    if write:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, text)
    return path, text
