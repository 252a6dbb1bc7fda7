"""A run whose loss or gradient norm stops being finite stops at once, before a checkpoint holds its weights
(``training.divergence``), and the stage says why in one line (also from DeepSpeed's ranks)."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch

from tests.project_env import project_env
from tests.trainer_utils import make_job, make_shards, nan_loss_forward, one_thread  # noqa: F401
from training.checkpoint import complete_tags, load_export
from training.divergence import Diverged, check_logged, check_step
from training.trainer import run_training


def test_a_nan_loss_stops_the_run_before_its_checkpoint(tmp_path, monkeypatch):
    from training.model.train_module import TrainModule

    # from the 6th micro-batch on (grad_accum 1: step 6), the loss is nan
    monkeypatch.setattr(TrainModule, "forward", nan_loss_forward(6))
    shards = make_shards(tmp_path / "shards", n_shards=2, per_shard=8)
    job = make_job(tmp_path, shards, steps=12, checkpoint_every=4, log_every=4)
    with pytest.raises(Diverged, match=r"step 6: the gradient norm is nan.*the newest checkpoint, step_00000004"):
        run_training(job, log=lambda m: None)
    ckpts = tmp_path / "train" / "checkpoints"
    assert complete_tags(ckpts) == ["step_00000004"] and (ckpts / "latest").read_text() == "step_00000004"
    weights, _ = load_export(ckpts / "step_00000004" / "model.safetensors")
    assert all(torch.isfinite(w).all() for w in weights.values())
    assert not (tmp_path / "train" / "export").exists()


def test_what_counts_as_diverged(tmp_path):
    (tmp_path / "step_00000004").mkdir()
    (tmp_path / "step_00000004" / "COMPLETE").write_text("{}")
    check_step(3, {"grad_norm": 1.5}, None)
    check_step(3, {"grad_norm": math.inf, "skipped": 1.0}, None)  # fp16: the loss scaler skipped the update
    with pytest.raises(
        Diverged, match="step 3: the gradient norm is inf.*no checkpoint was written.*rerun from step 0$"
    ):
        check_step(3, {"grad_norm": math.inf, "skipped": 0.0}, None)
    check_logged(8, {"loss": 2.0, "revise_recall": math.nan}, tmp_path)  # only the loss counts
    with pytest.raises(Diverged, match="step 8: the mean loss since the last log is nan.*step_00000004"):
        check_logged(8, {"loss": math.nan}, tmp_path)


def test_the_deepspeed_stage_error_names_the_first_rank_s_error(tmp_path, monkeypatch):
    from cluster import deepspeed_launch as dl
    from cluster.config import ClusterConfig

    lines = [
        "[rank1]: Traceback (most recent call last):",
        "[rank1]: training.divergence.Diverged: step 6: the gradient norm is nan, and the update applied it",
        "[rank0]: RuntimeError: Connection closed by peer",
        "subprocess.CalledProcessError: Command '[...]' returned non-zero exit status 1.",
    ]
    script = "import sys\nfor line in sys.argv[1:]: print(line)\nsys.exit(1)"
    monkeypatch.setattr(dl, "with_ray_hosts", lambda c: c)
    monkeypatch.setattr(dl, "plan", lambda *a, **k: ([sys.executable, "-c", script, *lines], None, None))
    with pytest.raises(RuntimeError) as err:
        dl.run(ClusterConfig(launcher="deepspeed"), tmp_path / "job.json", tmp_path, log=lambda m: None)
    assert str(err.value) == (
        "the DeepSpeed launcher exited with 1 (Diverged: step 6: the gradient norm is nan, and the update applied "
        f"it); see {tmp_path / 'launcher.log'}"
    )


def test_a_deepspeed_fp16_step_skipped_on_overflow_is_not_a_divergence():
    """DeepSpeed reports an infinite norm for an fp16 step its loss scaler skipped: ``step()`` marks it skipped (and
    the EMA waits for a real step), so the run goes on; in bf16 the same norm stops it."""
    from types import SimpleNamespace

    from training.engine import DeepSpeedEngine

    updates = []
    eng = DeepSpeedEngine.__new__(DeepSpeedEngine)
    eng.engine = SimpleNamespace(get_global_grad_norm=lambda: math.inf, skipped_steps=0)
    eng.ema, eng._lr, eng._skipped_steps = SimpleNamespace(update=lambda: updates.append(1)), 1e-3, 0
    eng.precision = "fp16"
    eng.engine.skipped_steps = 1  # the scaler skipped this step
    info = eng.step()
    assert info == {"lr": 1e-3, "grad_norm": math.inf, "skipped": 1.0} and updates == []
    check_step(5, info, None)
    eng.engine.get_global_grad_norm = lambda: 0.5  # a real step: no new skip
    assert eng.step()["skipped"] == 0.0 and updates == [1]
    eng.precision = "bf16"
    eng.engine.get_global_grad_norm = lambda: math.inf
    with pytest.raises(Diverged):
        check_step(7, eng.step(), None)


BF16_NAN_STEP = """
import math, sys, torch
from benchmarks.bench_train import build_model, make_batch, model_config
from training.divergence import Diverged, check_step
from training.engine import DeepSpeedEngine, init_distributed
from training.model.train_module import StepSettings, TrainModule
from training.train_config import TrainConfig

init_distributed(log=lambda m: None)
cfg = model_config("tiny", dropout=0.0)
t = TrainConfig(batch_size=2, stages=16, precision="bf16", zero_stage=int(sys.argv[1]))
eng = DeepSpeedEngine(TrainModule(build_model(cfg, "progressive"), StepSettings.from_config(t)), t, log=lambda m: None)
assert eng.engine.config["bf16"]["check_grad_overflow"] is False
batch = make_batch(cfg, 2, device=torch.device("cpu"))
batch = {**batch, "text": batch["text"].to(eng.compute_dtype)}
eng.forward_backward(batch)
info = eng.step()
assert math.isfinite(info["grad_norm"]) and info["grad_norm"] > 0, info
check_step(1, info, None)
next(eng.engine.module.parameters()).register_hook(lambda g: g * float("nan"))
eng.forward_backward(batch)
info = eng.step()
try:
    check_step(2, info, None)
except Diverged as e:
    print("DIVERGED", e)
"""


@pytest.mark.parametrize("zero", [0, 2])
def test_a_bf16_deepspeed_step_with_a_nan_gradient_stops_the_run(zero):
    """DeepSpeed's per-gradient inf/nan check is off in bf16 (training.engine: it costs ~8 launches a tensor): a
    nan gradient still comes out as a non-finite global norm, and the divergence check stops the run on it."""
    cmd = [sys.executable, "-c", BF16_NAN_STEP, str(zero)]
    run = subprocess.run(cmd, env=project_env(OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    assert "DIVERGED step 2: the gradient norm is" in run.stdout and "and the update applied it" in run.stdout
