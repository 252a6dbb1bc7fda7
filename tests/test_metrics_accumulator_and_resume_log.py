"""Logged metrics are means over the micro-batches of the window (not sums), and a resumed run keeps the
metrics.jsonl record of the step it resumes from (it drops only the later ones)."""

from __future__ import annotations

import json

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


def test_a_resume_keeps_the_record_of_its_own_step(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": s, "loss": s}) + "\n" for s in (10, 20, 30)) + '{"step": 4')
    keep_until(path, 20)
    assert sorted(read_metrics(path)) == [10, 20]
