"""The GPU check (``benchmarks/gpu_check.py``) and the benchmarks' GPU paths, on the CPU: every check's
arguments parse against its benchmark's own parser, the runner streams, logs and stops a check at its limit,
and the code a GPU run goes through (one-device 1.2B steps, bf16 steps, the tokenize stage without Ray)
runs here on the CPU with small models."""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks import gpu_check
from tests.project_env import project_env

ROOT = Path(__file__).resolve().parents[1]


def test_every_check_parses_with_its_benchmarks_own_parser():
    benchmarks = [c for c in gpu_check.CHECKS if c.argv[0].startswith("benchmarks/")]
    assert [c.name for c in benchmarks] == ["bench_train", "scale_1p2b", "tokenize"]
    for check in benchmarks:
        module = importlib.import_module(check.argv[0].removesuffix(".py").replace("/", "."))
        args = module.parser().parse_args(check.argv[1:])
        assert args.device == "cuda", check.name
    train = importlib.import_module("benchmarks.bench_train").parser().parse_args(gpu_check.CHECKS[1].argv[1:])
    assert train.precision == "bf16"
    tokenize = importlib.import_module("benchmarks.bench_tokenize").parser().parse_args(gpu_check.CHECKS[3].argv[1:])
    assert tokenize.preset == "imagenet_f16_16384"
    assert gpu_check.CHECKS[-1].name == "quick_suite" and gpu_check.CHECKS[-1].limit_s == 0
    fixed = sum(c.limit_s for c in gpu_check.CHECKS)
    assert fixed <= gpu_check.parser().parse_args([]).budget - 90, "the quick suite keeps 90 s at least"


def test_runner_logs_each_check_stops_one_at_its_limit_and_counts_failures(tmp_path, monkeypatch, capsys):
    checks = [
        gpu_check.Check("ok", ["-c", "print('fine')"], 20),
        gpu_check.Check("fails", ["-c", "import sys; print('broken'); sys.exit(3)"], 20),
        gpu_check.Check("hangs", ["-c", "import time; print('waiting', flush=True); time.sleep(60)"], 2),
    ]
    monkeypatch.setattr(gpu_check, "CHECKS", checks)
    failed = gpu_check.main(["--out", str(tmp_path), "--budget", "60"])
    assert failed == 2
    assert "fine" in (tmp_path / "ok.log").read_text()
    assert "broken" in (tmp_path / "fails.log").read_text()
    hang = (tmp_path / "hangs.log").read_text()
    assert "waiting" in hang and "stopped at its limit of 2 s" in hang
    summary = (tmp_path / "summary.txt").read_text().splitlines()
    assert [line.split()[:2] for line in summary] == [["ok", "passed"], ["fails", "FAILED"], ["hangs", "FAILED"]]
    assert "(exit 124)" in summary[2]
    assert "fine" in capsys.readouterr().out


def test_runner_skips_what_the_budget_cannot_hold(tmp_path, monkeypatch):
    checks = [gpu_check.Check("slow", ["-c", "import time; time.sleep(30)"], 0), gpu_check.Check("next", ["-c", ""], 5)]
    monkeypatch.setattr(gpu_check, "CHECKS", checks)
    monkeypatch.setattr(gpu_check, "MIN_CHECK_S", 0.5)
    assert gpu_check.main(["--out", str(tmp_path), "--budget", "2"]) == 2
    summary = (tmp_path / "summary.txt").read_text()
    assert "not run: the budget was spent" in summary and "(exit 124)" in summary


def test_one_device_steps_of_the_1p2b_config_lower_the_loss():
    """``scale_1p2b --device cuda``'s steps, on the CPU with the offload config scaled down: the trainer's
    one-device engine in the config's bf16, model FLOPs counted, the loss falling at every step."""
    from benchmarks import scale_1p2b

    small = ["model.layers=2", "model.dim=64", "model.heads=2", "model.ffn_dim=128", "train.lr=0.003"]
    args = scale_1p2b.parser().parse_args(["--steps", "3", "--text-len", "8"] + [f"--set={s}" for s in small])
    cfg, t = scale_1p2b.load(args)
    out = scale_1p2b.single_device_steps(args, cfg, t, 2, torch.device("cpu"))
    losses = [s["loss"] for s in out["steps"]]
    assert losses[0] > losses[1] > losses[2], losses
    assert out["precision"] == "bf16" and out["batch"] == 2
    # ~6 x params x tokens, less for the embeddings (looked up, not multiplied), more for attention
    tokens = 2 * (cfg.model.grid_h * cfg.model.grid_w)
    assert 2 * out["params"] * tokens < out["flops"] < 30 * out["params"] * tokens


def test_bench_tokenize_runs_the_stage_code_in_process_without_ray(monkeypatch, capsys, tmp_path):
    from benchmarks import bench_tokenize

    monkeypatch.setattr(bench_tokenize, "ray_installed", lambda: False)
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    bench_tokenize.main(["--shards", "2", "--per-shard", "8", "--batch", "4", "--reps", "1"])
    out = capsys.readouterr().out
    assert "Ray is not installed" in out and "stage: in process, no Ray" in out
    assert "16 images" in out
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines() if line[:6] in ("bare  ", "stage ")}
    assert float(rows["stage"][0]) > 0 and float(rows["bare"][0]) > 0


def test_bench_train_runs_bf16_steps_and_reports_the_bf16_peak():
    cmd = [sys.executable, "benchmarks/bench_train.py", "--preset", "tiny", "--batch", "2", "--reps", "1"]
    cmd += ["--zero", "0", "2", "--precision", "bf16", "--loader-samples", "256", "--peak-sizes", "256", "512"]
    cmd += ["--profile", "3"]
    # small peak sizes: a CPU without native bf16 (AVX2 only) takes 73 s for one 3072 bf16 matmul
    env = project_env(OMP_NUM_THREADS="1")
    run = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    assert "bf16 GEMM peak" in run.stdout and "; bf16;" in run.stdout
    assert "DeepSpeed ZeRO-0 step" in run.stdout and "MFU" in run.stdout
    assert run.stdout.count("--- profile: ") == 3 and "Self CPU time total" in run.stdout
    # A bf16 ZeRO-2 step launches no more ops than the bare one: without bf16.check_grad_overflow: false,
    # DeepSpeed checks each gradient for inf/nan (~8 ops each; 1.3x the bare step's ops here, and on a GPU, where
    # the step waits on its launches, 2.4x the bare step's time against 2.0x without)
    ops = {
        m[0]: int(m[1])
        for m in re.findall(r"^  (bare PyTorch|DeepSpeed ZeRO-\d) step .*?, (\d+) ops", run.stdout, re.M)
    }
    assert set(ops) == {"bare PyTorch", "DeepSpeed ZeRO-0", "DeepSpeed ZeRO-2"}, run.stdout
    assert ops["DeepSpeed ZeRO-2"] <= 1.05 * ops["bare PyTorch"], ops


@pytest.mark.parametrize("script", ["bench_train", "scale_1p2b", "bench_tokenize"])
def test_cuda_without_a_gpu_is_a_one_line_error(script):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    module = importlib.import_module(f"benchmarks.{script}")
    with pytest.raises(SystemExit, match="torch sees no CUDA device"):
        module.main(["--device", "cuda"])


def test_gpu_wheels_cover_every_dependency_within_its_bounds():
    """benchmarks/gpu_wheels.sh pins, assumes present or leaves out each dependency of pyproject.toml (with the
    cpu and dev extras), and each pin is within the bounds pyproject.toml sets."""
    import re

    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10, which pyproject allows: pytest itself depends on tomli there
        import tomli as tomllib
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    script = (ROOT / "benchmarks" / "gpu_wheels.sh").read_text()
    pins = dict(m.groups() for m in re.finditer(r"([A-Za-z0-9_.-]+)==([0-9][A-Za-z0-9.]*)", script))
    pins = {canonicalize_name(k): v for k, v in pins.items()}

    def names(label: str) -> set[str]:
        text = re.search(rf"^# {label}:(.*?)\n# \S", script, re.S | re.M).group(1)  # and its indented lines
        return {canonicalize_name(n) for n in text.replace("#", " ").split()}

    present, left_out = names("already there"), names("left out")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    requirements = [Requirement(r) for r in project["dependencies"] + extras["cpu"] + extras["dev"]]
    assert requirements and not (present & left_out) and not (set(pins) & (present | left_out))
    for req in requirements:
        name = canonicalize_name(req.name)
        assert name in pins or name in present or name in left_out, f"{req.name}: not in benchmarks/gpu_wheels.sh"
        if name in pins:
            assert req.specifier.contains(pins[name]), f"{req.name}=={pins[name]} is outside {req.specifier}"
