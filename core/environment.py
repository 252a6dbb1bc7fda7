"""What an output was made with, beside its config: the code, Python, the packages that shape results, the machine.

Every stage manifest records it (``environment``; the process that ran the stage; the train stage also records its
rank 0's, ``trainer_environment``), the evaluate report prints it, and ``pt2i status`` names what differs from the
machine it runs on. It never makes a stage stale: a figure that moved between two environments (another torch,
another CPU's kernels) is told apart from one the code or the config moved, by reading it.

``code``: the git commit of the checkout and whether its tracked files had changes, when it is one; always a digest
of the project's Python sources and ``pyproject.toml`` (a copy shipped to a Ray job, without ``.git``, has it too).
Computed once per process, when first asked: the code a long run started with.
"""

from __future__ import annotations

import functools
import hashlib
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parents[1]
SOURCE_DIRS = ("core", "cluster", "tokenization", "training", "evaluation", "pipeline")
PACKAGES = (
    "torch",
    "torchvision",
    "deepspeed",
    "ray",
    "numpy",
    "scipy",
    "transformers",
    "open_clip_torch",
    "faiss-cpu",
    "faiss-gpu",
    "torch-fidelity",
    "webdataset",
    "img2dataset",
    "safetensors",
    "pillow",
    "pycocoevalcap",
)


def source_digest(root: Path = ROOT) -> str:
    """sha256 (16 hex) over the project's ``*.py`` files (path and bytes, in path order) and ``pyproject.toml``."""
    h = hashlib.sha256()
    files = sorted(p for d in SOURCE_DIRS for p in (root / d).rglob("*.py") if "__pycache__" not in p.parts)
    for path in files + [root / "pyproject.toml"]:
        if path.is_file():
            h.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def _git(root: Path, *args: str) -> Optional[str]:
    try:
        out = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def code_identity(root: Path = ROOT) -> dict:
    """``{"sources": digest}``, plus ``commit`` and ``changed`` (tracked files differ from it) in a git checkout."""
    code: dict = {"sources": source_digest(root)}
    if (root / ".git").exists():
        commit = _git(root, "rev-parse", "HEAD")
        if commit:
            status = _git(root, "status", "--porcelain", "--untracked-files=no")
            code.update({"commit": commit, "changed": bool(status)})
    return code


# The instruction sets torch's, oneDNN's and MKL's CPU kernels choose between: two CPUs of one model name ("AMD EPYC")
# with and without AVX-512 run other kernels and train other weights at equal code, config and seed.
ISA_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16")
# The settings that hold those kernels below what the CPU has (read as torch starts its kernels, so set before it).
KERNEL_ENV = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS", "MKL_CBWR")


def kernel_env(env) -> dict:
    """The ``KERNEL_ENV`` settings ``env`` holds (a launch forwards them to every rank on every node)."""
    return {k: env[k] for k in KERNEL_ENV if env.get(k)}


def _cpuinfo() -> tuple[str, list[str]]:
    """The CPU's model name and which of ``ISA_FLAGS`` it has (from /proc/cpuinfo; elsewhere the platform's name)."""
    name, flags = "", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and not name:
                name = value.strip()
            elif key.strip() in ("flags", "Features") and not flags:
                flags = set(value.split())
    except OSError:
        pass
    return name or platform.processor() or platform.machine(), [f for f in ISA_FLAGS if f in flags]


def machine() -> dict:
    """CPU model, its instruction sets (``ISA_FLAGS``), cores and the ``KERNEL_ENV`` settings in force; with torch
    imported, the CPU kernels it dispatches to (``AVX2``, ``AVX512``, ...), its CUDA and the GPUs it sees (torch is
    never imported here)."""
    cpu, isa = _cpuinfo()
    out: dict = {"cpu": cpu, "cpu_isa": isa, "cores": os.cpu_count(), "platform": platform.platform()}
    pinned = kernel_env(os.environ)
    if pinned:
        out["kernel_env"] = pinned
    torch = sys.modules.get("torch")
    if torch is not None:
        out["cpu_kernels"] = torch.backends.cpu.get_cpu_capability()
        out["cuda"] = torch.version.cuda
        if torch.cuda.is_available():
            out["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return out


def packages() -> dict:
    """The installed version of each of ``PACKAGES`` that is installed."""
    found = {}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


@functools.lru_cache(maxsize=1)
def _code() -> dict:
    return code_identity()


def environment() -> dict:
    """``{"code", "python", "packages", "machine"}`` of this process (the code as of the first call)."""
    return {"code": _code(), "python": platform.python_version(), "packages": packages(), "machine": machine()}


def _code_text(code: dict) -> str:
    if "commit" in code:
        return code["commit"][:10] + (" with changes" if code.get("changed") else "")
    return f"sources {code.get('sources')}"


def summary(env: dict) -> str:
    """One line: code, Python, torch (CUDA), DeepSpeed, the GPUs or else the CPU."""
    pk, m = env.get("packages", {}), env.get("machine", {})
    torch = None
    if "torch" in pk:
        torch = f"torch {pk['torch']}" + (f" (a CUDA {m['cuda']} build)" if m.get("cuda") else "")
    parts = [f"code {_code_text(env.get('code', {}))}", f"Python {env.get('python')}", torch]
    parts.append(f"DeepSpeed {pk['deepspeed']}" if "deepspeed" in pk else None)
    kernels = f" ({m['cpu_kernels']} kernels)" if m.get("cpu_kernels") else ""
    parts.append(", ".join(m["gpus"]) if m.get("gpus") else f"{m.get('cpu')}{kernels}, {m.get('cores')} cores")
    return "; ".join(p for p in parts if p)


def changes(made: Optional[dict], now: dict) -> list[str]:
    """What differs between the environment an output was ``made`` with and ``now``: "torch 2.14.1 -> 2.15.0", ...
    (the GPUs only where both saw some: the driver of a cluster run may have none)."""
    if not made:
        return []
    out = []
    a, b = made.get("code", {}), now.get("code", {})
    if a.get("sources") != b.get("sources"):  # the commit alone may differ by docs, or be absent in a shipped copy
        out.append(f"code {_code_text(a)} -> {_code_text(b)}")
    if made.get("python") != now.get("python"):
        out.append(f"Python {made.get('python')} -> {now.get('python')}")
    pa, pb = made.get("packages", {}), now.get("packages", {})
    for name in sorted(set(pa) | set(pb)):
        if pa.get(name) != pb.get(name):
            out.append(f"{name} {pa.get(name, 'absent')} -> {pb.get(name, 'absent')}")
    ma, mb = made.get("machine", {}), now.get("machine", {})
    if ma.get("cpu") != mb.get("cpu"):
        out.append(f"CPU {ma.get('cpu')} -> {mb.get('cpu')}")
    if "cpu_isa" in ma and "cpu_isa" in mb:  # recorded since the instruction sets were (older records lack them)
        if ma["cpu_isa"] != mb["cpu_isa"]:
            out.append(
                f"CPU instruction sets {' '.join(ma['cpu_isa']) or 'none'} -> {' '.join(mb['cpu_isa']) or 'none'}"
            )
        pa, pb = ma.get("kernel_env", {}), mb.get("kernel_env", {})
        out += [f"{k} {pa.get(k, 'unset')} -> {pb.get(k, 'unset')}" for k in KERNEL_ENV if pa.get(k) != pb.get(k)]
    if ma.get("cpu_kernels") and mb.get("cpu_kernels") and ma["cpu_kernels"] != mb["cpu_kernels"]:
        out.append(f"CPU kernels {ma['cpu_kernels']} -> {mb['cpu_kernels']}")
    if ma.get("gpus") and mb.get("gpus") and ma["gpus"] != mb["gpus"]:
        out.append(f"GPUs {', '.join(ma['gpus'])} -> {', '.join(mb['gpus'])}")
    return out
