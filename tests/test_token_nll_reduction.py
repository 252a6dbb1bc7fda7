"""Held-out token NLL reductions (``evaluation.token_nll``): the reported number is the mean over samples (not
over batches of unequal size), and the metric is computed in eval mode (a model left in train mode by its
caller must not get dropout in its evaluation)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import evaluation.token_nll as tn
from tests.trainer_utils import one_thread  # noqa: F401 (autouse fixture)
from training.train_config import TrainConfig


class _Text:
    def encode(self, ids, mask):
        return torch.zeros(ids.shape[0], ids.shape[1], 8)


def _samples(n: int, L: int = 8) -> list[dict]:
    rs = np.random.RandomState(0)
    return [
        {
            "key": f"{i:04d}",
            "tokens": rs.randint(0, 16, L).astype(np.int64),
            "qerr": rs.rand(L).astype(np.float32),
            "text_ids": np.array([1, 2], np.int64),
            "seed": 0,
        }
        for i in range(n)
    ]


def test_the_reported_nll_is_the_mean_over_samples_not_over_batches(monkeypatch):
    per_sample = iter([torch.tensor([1.0, 2.0]), torch.tensor([6.0])])  # batches of 2 and 1
    monkeypatch.setattr(tn, "token_nll", lambda *a, **k: next(per_sample))
    out = tn.eval_token_nll(None, "pdm", None, _samples(3), _Text(), "cpu", batch=2)
    assert out["token_nll"] == pytest.approx(3.0)  # (1 + 2 + 6) / 3, not (1.5 + 6) / 2
    assert out["samples"] == 3 and out["token_nll_sd"] == pytest.approx(float(torch.tensor([1.0, 2, 6]).std()))


def test_the_metric_runs_the_model_in_eval_mode():
    from training.model import build_model
    from training.model.config import model_config

    cfg = dict(grid_h=2, grid_w=4, codebook_size=16, text_dim=8, dim=32, layers=1, heads=2, ffn_dim=64)
    torch.manual_seed(0)
    pdm = build_model(model_config("tiny", dropout=0.5, cond_dropout=0.0, **cfg), "progressive")
    s = _samples(3)
    tokens = torch.from_numpy(np.stack([x["tokens"] for x in s]))
    qerr = torch.from_numpy(np.stack([x["qerr"] for x in s]))
    text, mask = torch.randn(3, 2, 8), torch.ones(3, 2, dtype=torch.bool)
    train = TrainConfig(order="raster", stages=4)
    pdm.eval()
    want = tn.token_nll(pdm, "pdm", train, tokens, qerr, text, mask)
    pdm.train()  # left in train mode (a trainer's sample hook, a caller): dropout must not reach the metric
    torch.manual_seed(1)
    got = tn.token_nll(pdm, "pdm", train, tokens, qerr, text, mask)
    assert torch.allclose(got, want, atol=1e-6)
