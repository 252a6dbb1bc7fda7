"""GPU check: the project's CUDA paths in one run of at most ``--budget`` seconds on one GPU.

    python benchmarks/gpu_check.py [--out runs/gpu_check] [--budget 540]

Runs these checks in order, each in its own process with its own time limit (the last one gets what is left).
Each check's output goes to the console and to OUT/NAME.log:

1. ``gpu``: torch's version, its CUDA, the device's name and memory; ``nvidia-smi`` when there is one.
2. ``bench_train``: ``benchmarks/bench_train.py`` in bf16 on the GPU (pdm-paper-appendix, micro-batch 8; the
   bare step and DeepSpeed ZeRO-0 and ZeRO-2 on one rank). MFU is taken against the bf16 matmul peak measured
   in the same run.
3. ``scale_1p2b``: five real training steps of the unchanged pdm-1.2b on the one GPU (no ZeRO, no offload):
   loss per step, peak memory per parameter, and MFU.
4. ``tokenize``: the tokenize stage's images/s for the imagenet_f16_16384 VQ-GAN layout at 256 px, encoder on
   the GPU.
5. ``quick_suite``: ``pytest -m "not slow"`` with CUDA visible, in parallel when pytest-xdist is installed
   (2 torch threads per worker). A test module whose imports are missing counts as a collection error, and the
   other modules still run.

OUT/summary.txt lists each check's exit status and seconds (124: stopped at its limit). The exit status is the
number of checks that did not pass.

On a machine whose Python has torch but not this project's other dependencies, ``benchmarks/gpu_wheels.sh``
downloads the wheels it needs (~32 MB) and prints how to install them there.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TIMED_OUT = 124
MIN_CHECK_S = 5.0  # a check is not started with less of the budget left


@dataclass(frozen=True)
class Check:
    name: str
    argv: list[str]  # after the Python executable
    limit_s: float  # 0: whatever the budget has left
    env: dict = field(default_factory=dict)
    xdist: bool = False  # a pytest run: on several pytest-xdist workers when xdist is installed


GPU_INFO = (
    "import subprocess, torch; "
    "print('torch', torch.__version__, 'CUDA', torch.version.cuda, 'available', torch.cuda.is_available()); "
    "p = torch.cuda.get_device_properties(0) if torch.cuda.is_available() else None; "
    "print(p.name, round(p.total_memory / 2**30, 1), 'GiB,', p.multi_processor_count, 'SMs') if p else None; "
    "import shutil; smi = shutil.which('nvidia-smi'); "
    "smi and subprocess.run([smi, '--query-gpu=name,memory.total,driver_version,clocks.max.sm', '--format=csv'])"
)

CHECKS = [
    Check("gpu", ["-c", GPU_INFO], 30),
    Check(
        "bench_train",
        ["benchmarks/bench_train.py", "--device", "cuda", "--precision", "bf16", "--preset", "pdm-paper-appendix"]
        + ["--batch", "8", "--zero", "0", "2", "--reps", "5", "--loader-samples", "1024"],
        180,
    ),
    Check("scale_1p2b", ["benchmarks/scale_1p2b.py", "--device", "cuda", "--steps", "5", "--batch", "8"], 150),
    Check(
        "tokenize",
        ["benchmarks/bench_tokenize.py", "--device", "cuda", "--preset", "imagenet_f16_16384"]
        + [
            "--shards",
            "4",
            "--per-shard",
            "512",  # 2048 images: at ~640 images/s a run of 512 was mostly start-up
            "--batch",
            "64",
            "--threads",
            "4",
            "--reps",
            "5",
            "--decode-threads",
            "8",
        ],
        90,
    ),
    Check("quick_suite", ["-m", "pytest", "-q", "-m", "not slow", "-p", "no:cacheprovider", "-rfE"], 0, xdist=True),
]


def _pump(stream, sinks) -> None:
    for line in iter(stream.readline, ""):
        for s in sinks:
            s.write(line)
            s.flush()


def run_check(check: Check, limit_s: float, out: Path) -> tuple[int, float]:
    """Run one check (its own process group), its output streamed to the console and to OUT/NAME.log; stopped
    (the whole group) at ``limit_s``. Returns (exit status, TIMED_OUT when stopped; seconds)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **check.env}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in [env.get("PYTHONPATH")] if p])
    t0 = time.perf_counter()
    print(f"=== {check.name} (limit {limit_s:.0f} s) ===", flush=True)
    with open(out / f"{check.name}.log", "w") as log:
        proc = subprocess.Popen(
            [sys.executable, *check.argv],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        pump = threading.Thread(target=_pump, args=(proc.stdout, [sys.stdout, log]), daemon=True)
        pump.start()
        try:
            rc = proc.wait(timeout=limit_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            rc = TIMED_OUT
        pump.join(timeout=10)
        seconds = time.perf_counter() - t0
        note = f"stopped at its limit of {limit_s:.0f} s" if rc == TIMED_OUT else f"exit {rc}"
        log.write(f"=== {check.name}: {note}, {seconds:.0f} s ===\n")
    print(f"=== {check.name}: {note}, {seconds:.0f} s ===", flush=True)
    return rc, seconds


def with_workers(check: Check) -> Check:
    """A pytest check (``xdist``) on several pytest-xdist workers when xdist is installed (a GPU machine has the
    cores)."""
    import importlib.util

    if not check.xdist or importlib.util.find_spec("xdist") is None:
        return check
    workers = max(1, min(8, (os.cpu_count() or 2) // 2))
    threads = {"OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"}
    return replace(check, argv=[*check.argv, "-n", str(workers)], env={**check.env, **threads})


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="runs/gpu_check", help="folder for the logs and summary.txt")
    p.add_argument("--budget", type=float, default=540, help="seconds for all the checks together")
    p.add_argument("--only", nargs="+", choices=[c.name for c in CHECKS], help="run only these checks")
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + args.budget
    rows = []
    for check in CHECKS:
        if args.only and check.name not in args.only:
            continue
        left = deadline - time.monotonic()
        if left < MIN_CHECK_S:
            rows.append((check.name, "not run: the budget was spent", 0.0))
            continue
        rc, seconds = run_check(with_workers(check), min(check.limit_s or left, left), out)
        rows.append((check.name, "passed" if rc == 0 else f"FAILED (exit {rc})", seconds))
    text = "".join(f"{name:<12} {status:<32} {seconds:6.0f} s\n" for name, status, seconds in rows)
    (out / "summary.txt").write_text(text)
    print("\n" + text, end="")
    return sum(status != "passed" for _, status, _ in rows)


if __name__ == "__main__":
    sys.exit(main())
