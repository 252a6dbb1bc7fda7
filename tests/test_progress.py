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


def test_status_tells_where_an_unfinished_training_stands(tmp_path, capsys):
    """``pt2i status`` on a run whose train stage is running (or stopped): the last logged step, loss, held-out loss,
    pace and ETA, how long ago it logged, and the newest complete checkpoint."""
    import json

    from core.config import to_yaml
    from pipeline import cli
    from pipeline.experiment import load_config
    from training.progress import training_progress

    cfg = load_config("configs/tiny.yaml", [f"run_dir={tmp_path}"])
    (tmp_path / "config.yaml").write_text(to_yaml(cfg))
    train = tmp_path / "train"
    (train / "checkpoints" / "step_00000400").mkdir(parents=True)
    (train / "checkpoints" / "step_00000400" / "COMPLETE").write_text("{}")
    (train / "checkpoints" / "step_00000600").mkdir()  # being written: not complete
    rec = {"step": 450, "time": time.time() - 90, "loss": 2.1342, "val/loss": 2.3, "samples_per_s": 64.0}
    (train / "metrics.jsonl").write_text(json.dumps({"step": 400, "loss": 2.5}) + "\n" + json.dumps(rec) + "\n")
    where = training_progress(train, cfg.train.steps, cfg.train.batch_size, rec["time"] + 90)
    assert where == (
        f"step 450/{cfg.train.steps} ({450 / cfg.train.steps:.0%}), loss 2.134, held-out loss 2.300, 64.0 samples/s, "
        f"ETA {eta((cfg.train.steps - 450) * cfg.train.batch_size / 64.0)} at that pace; last record 1m30s ago; "
        "newest checkpoint step_00000400"
    )
    assert cli.main(["status", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("train "))
    assert lines[at + 1].strip().startswith(f"step 450/{cfg.train.steps}") and "step_00000400" in lines[at + 1]
    assert not any("failed" in line for line in lines)

    from pipeline.failures import record_failure  # the run stopped on an error: status says which, under the stage

    record_failure(tmp_path, "train", "Diverged: step 451: the mean loss since the last log is nan; ...")
    assert cli.main(["status", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[at + 2].strip().startswith("failed 20") and lines[at + 2].endswith(
        ": Diverged: step 451: the mean loss since the last log is nan; ..."
    )
    assert training_progress(tmp_path / "nothing", 10, 1, 0.0) is None
