"""The evaluate stage's loss curve reads a long run's metrics.jsonl line by line and keeps only what it draws."""

import json
import tracemalloc

from evaluation.figures import LOSS_CURVE_KEYS
from training.metrics_log import read_metrics

N = 5000
OTHER = [f"extra/some_logged_metric_{i:02d}" for i in range(40)]  # the rest of a record: lr, grad_norm, ...


def test_the_loss_curve_reads_only_its_keys(tmp_path):
    path = tmp_path / "metrics.jsonl"
    with open(path, "w") as f:
        for s in range(1, N + 1):
            rec = {"step": s, "time": 1.0, "loss": 1.0 / s, "token_acc": 0.5, **{k: 0.25 for k in OTHER}}
            f.write(json.dumps(rec) + "\n")
    size = path.stat().st_size
    tracemalloc.start()
    try:
        records = read_metrics(path, LOSS_CURVE_KEYS)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert records[N] == {"step": N, "loss": 1.0 / N, "token_acc": 0.5}
    assert sorted(records) == list(range(1, N + 1))
    assert peak < 0.5 * size, f"peak {peak / 1e6:.1f} MB reading a {size / 1e6:.1f} MB log"
    assert read_metrics(path)[1] == json.loads(path.read_text().splitlines()[0])
