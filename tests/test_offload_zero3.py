"""configs/pdm-1.2b-one-node-offload.yaml: ZeRO-3 with NVMe offload of parameters and optimizer.

The settings (``training/ds_offload.py``) size DeepSpeed's swap buffers from the model's largest parameter,
release each parameter partition after its use (DeepSpeed's default reuse distance keeps more partitions
than there are swap buffers from the second step on) and turn off its NVMe parameter prefetch (which fails
on a block that activation checkpointing runs twice). The slow test runs ``benchmarks/scale_1p2b.py`` with
the config's train and cluster sections unchanged on a scaled-down model: 8 layers of width 256 whose MLP
matrices (1M elements) are large enough for DeepSpeed to swap them (>= 1 MiB per partition), 18 swapped
partitions for 16 buffers; the 1.2B's codebook and 128 text states, 64 image tokens (an 8 x 8 grid: the swap
buffers are sized from the parameters, not the sequence, and a CPU without native bf16 matmuls, AVX2 only, spends
the step's time on the sequence: over 540 s in the suite at the 1.2B's 1024 tokens, 102 s alone at 256, 50 s at 64,
the same swaps). 2 CPU ranks, bf16, activation checkpointing, 3 steps on one fixed batch: 50 s alone on 2 AVX2-only
cores, 8 s a step (the first run on a machine also
JIT-builds DeepSpeed's async_io op against libaio, which .ci/run installs; .ci/run builds the op beforehand with
``python -m training.build_ops``).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.experiment import load_config
from tests.project_env import project_env
from training.ds_offload import largest_param
from training.engine import build_ds_config

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "pdm-1.2b-one-node-offload.yaml"
SMALL = ["model.layers=8", "model.dim=256", "model.heads=2", "model.ffn_dim=4096"]
SMALL += ["model.grid_h=8", "model.grid_w=8", "tokenizer.image_size=128"]  # 64 image tokens (f16)


def test_offload_config_sizes_nvme_buffers_from_the_largest_parameter():
    import torch

    from training.model.pdm import PDM

    cfg = load_config(CONFIG)
    with torch.device("meta"):
        biggest = largest_param(PDM(cfg.model))
    assert biggest == 16384 * 1280  # the codebook embedding and the output head: K x dim
    ds = build_ds_config(cfg.train, 2, "bf16", "cpu", biggest)
    zero = ds["zero_optimization"]
    assert zero["stage"] == 3 and ds["bf16"] == {"enabled": True, "check_grad_overflow": False}
    assert zero["offload_param"]["device"] == zero["offload_optimizer"]["device"] == "nvme"
    assert zero["offload_param"]["buffer_size"] == math.ceil(biggest / 2)  # one rank's partition of it
    assert zero["offload_param"]["max_in_cpu"] == 0
    assert zero["stage3_prefetch_bucket_size"] == zero["stage3_max_reuse_distance"] == 0
    assert ds["aio"]["block_size"] == 1048576
    assert ds["train_micro_batch_size_per_gpu"] == 1
    # no contiguous gradient buffer on CPU ranks (two more copies of every gradient); on GPUs it avoids fragmentation
    assert zero["contiguous_gradients"] is False
    assert build_ds_config(cfg.train, 2, "bf16", "cuda", biggest)["zero_optimization"]["contiguous_gradients"] is True


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_two_rank_zero3_nvme_offload_steps_lower_the_loss(tmp_path):
    nvme, out = tmp_path / "nvme", tmp_path / "out.json"
    cmd = [sys.executable, "benchmarks/scale_1p2b.py", "--steps", "3", "--min-available-gib", "2"]
    cmd += ["--json", str(out), f"--set=train.nvme_path={nvme}"] + [f"--set={s}" for s in SMALL]
    env = project_env()
    run = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1140)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    res = json.loads(out.read_text())
    losses = res["losses"]
    assert losses[0] > losses[1] > losses[2], losses
    assert res["disk_per_param"] > 14  # bf16 parameters + fp32 master and Adam moments were on disk
    for rank in res["ranks"]:
        assert rank["precision"] == "bf16" and rank["world"] == 2
        assert rank["buffers"]["param_swap_buffers"] > 0 and rank["buffers"]["optimizer_swap_buffers"] > 0
        assert rank["buffers"]["fp32_master_in_ram"] < 1e5  # the master weights were not kept in RAM
    assert not any(nvme.rglob("*")), "the NVMe offload files were left behind"
