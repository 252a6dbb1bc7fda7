"""The training's console line (rank 0, one per ``train.log_every``)."""

from __future__ import annotations

import time

from training.progress import Progress, eta


def test_the_line_has_step_loss_accuracy_revise_precision_recall_speed_and_eta(monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr(time, "time", lambda: clock[0])
    p = Progress(start=100, steps=1100)  # resumed at step 100
    clock[0] += 50.0  # 100 steps in 50 s: 0.5 s per step
    metrics = {
        "loss": 2.34567,
        "token_acc": 0.4123,
        "revise_tp": 3.0,
        "revise_pred": 4.0,
        "revise_true": 12.0,
        "revise_precision": 0.9,
        "samples_per_s": 212.44,
    }
    line = p.line(200, metrics)
    assert line == (
        "[train] step 200/1100 (18%) | loss 2.346 | token_acc 0.412 | revise P 0.75 R 0.25 | 212.4 samples/s"
        " | ETA 7m30s"  # 900 steps left x 0.5 s; P, R from the summed counts, not the averaged ratios
    )
    assert "revise P - R -" in p.line(200, {**metrics, "revise_tp": 0.0, "revise_pred": 0.0, "revise_true": 0.0})
    assert "revise" not in p.line(200, {"loss": 1.0})  # an objective without the revise state


def test_eta_format():
    assert (eta(59.6), eta(61), eta(3 * 3600 + 120)) == ("1m00s", "1m01s", "3h02m")


def test_revise_ratios_are_pooled_from_their_counts():
    """A micro-batch without injected tokens has no revise accuracy (not 0); precision and recall pool the
    counts of every logged micro-batch instead of averaging per-micro-batch ratios."""
    import torch

    from training.metrics_log import MetricsAccumulator

    acc = MetricsAccumulator()
    # micro-batch 1: 4 injected, 3 read back; 5 flagged, 4 right, of 4 true. micro-batch 2: nothing injected
    acc.add({"revise_acc": 0.75, "revise_correct": 3, "revise_injected": 4, "revise_precision": 0.8})
    acc.add({"revise_tp": 4, "revise_pred": 5, "revise_true": 4, "revise_recall": 1.0})
    acc.add({"revise_acc": 0.0, "revise_correct": 0, "revise_injected": 0, "revise_precision": 0.0})
    acc.add({"revise_tp": 0, "revise_pred": 1, "revise_true": 0, "revise_recall": 0.0})
    m = acc.mean()
    assert m["revise_acc"] == 0.75 and m["revise_precision"] == 4 / 6 and m["revise_recall"] == 1.0
    empty = MetricsAccumulator()
    empty.add({"revise_acc": torch.tensor(0.0), "revise_correct": torch.tensor(0), "revise_injected": torch.tensor(0)})
    assert "revise_acc" not in empty.mean()  # nothing injected in the window: undefined, not 0
