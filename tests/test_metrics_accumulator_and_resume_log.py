"""Logged metrics are means over the micro-batches of the window (not sums), and a resumed run keeps the
metrics.jsonl record of the step it resumes from (it drops only the later ones)."""

from __future__ import annotations

import json

import pytest
import torch

from training.metrics_log import MetricsAccumulator, keep_until, read_metrics


def test_metrics_are_averaged_over_the_micro_batches():
    acc = MetricsAccumulator()
    for loss, acc_ in ((1.0, 0.2), (3.0, 0.4), (2.0, 0.6)):
        acc.add({"loss": torch.tensor(loss), "token_acc": acc_, "vector": torch.ones(3)})
    acc.add({"lr": 1e-3, "grad_norm": 0.5})  # once per step
    out = acc.mean()
    assert out["loss"] == 2.0 and abs(out["token_acc"] - 0.4) < 1e-12
    assert out["lr"] == 1e-3 and out["grad_norm"] == 0.5 and "vector" not in out


def test_adding_tensor_metrics_never_reads_them_back_to_the_host(monkeypatch):
    """A host read of a device tensor (.item(), float(), .tolist(), bool()) waits for the device's queue: once per
    metric per micro-batch that stalls a GPU a dozen times a step. Adding keeps the sums where they are; the mean
    reads them once, and equals the mean of the values."""
    acc = MetricsAccumulator()
    values = [(0.5, 3), (1.5, 0), (2.5, 5)]
    with monkeypatch.context() as m:
        for name in ("item", "tolist", "__float__", "__bool__", "__int__", "__index__"):
            m.setattr(torch.Tensor, name, lambda *a, _n=name: (_ for _ in ()).throw(AssertionError(f"{_n} in add")))
        for loss, tp in values:
            acc.add({"loss": torch.tensor(loss, dtype=torch.float32), "revise_tp": torch.tensor(tp), "lr": 0.1})
    out = acc.mean()
    assert out == pytest.approx({"loss": 1.5, "revise_tp": 8 / 3, "lr": 0.1}, abs=1e-15)
    acc.reset()
    assert acc.mean() == {}


def test_a_resume_keeps_the_record_of_its_own_step(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": s, "loss": s}) + "\n" for s in (10, 20, 30)) + '{"step": 4')
    keep_until(path, 20)
    assert sorted(read_metrics(path)) == [10, 20]
