"""Fréchet distance in the run's VQ encoder features (``evaluation.fd_vq``): zero for the reference set
itself, small for other images of the same synthetic distribution, large for images of another one; and
the evaluate stage reports it (``eval.metrics: [fd_vq]``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from evaluation.fd_vq import VQFrechetEvaluator
from tests.data_utils import make_dataset
from tests.trainer_utils import one_thread  # noqa: F401 (autouse fixture)


def test_distance_is_zero_to_itself_and_grows_away_from_the_distribution():
    from tokenization.vqgan import TokenizerConfig, VQModel

    torch.manual_seed(0)
    vq = VQModel(TokenizerConfig(resolution=32)).eval()
    ref, _ = make_dataset(96, seed=1)
    same, _ = make_dataset(96, seed=2)
    other = ref[:, ::-1, :, ::-1].copy()  # upside down, colour channels swapped
    ev = VQFrechetEvaluator(vq, ref)
    assert ev(ref)["fd_vq"] == pytest.approx(0.0, abs=1e-6)
    near, far = ev(same)["fd_vq"], ev(other)["fd_vq"]
    assert 0 < near < far, (near, far)  # (random weights here: a trained encoder separates them far more)
    r = ev(np.repeat(np.repeat(same, 2, 1), 2, 2))  # another size is resized to the tokenizer's input
    assert r["num_images"] == 96 and r["reference_images"] == 96 and r["fd_vq"] < far


def test_the_evaluate_stage_reports_fd_vq(tmp_path):
    from tests.eval_utils import make_run, run

    cfg = make_run(tmp_path, ["eval.metrics=[fd_vq,attributes]"])
    run(cfg, "sample")
    m = run(cfg, "evaluate")
    assert m["metrics"]["fd_vq"] > 0
    md = (Path(cfg.run_dir) / "evaluate" / "report.md").read_text()
    assert "## Fréchet distance in the tokenizer's features" in md and "| PDM (this run) | " in md
