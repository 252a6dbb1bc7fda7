"""The training's console line, one per ``train.log_every`` steps (rank 0):

    [train] step 200/1200 (17%) | loss 2.341 | token_acc 0.412 | revise P 0.61 R 0.35 | 212.4 samples/s | ETA 4m05s

Revise precision / recall are those of the state head's revise calls, from the summed counts (exact over
the micro-batches and ranks of the interval); "-" when the objective has no revise state.
"""

from __future__ import annotations

import time
from typing import Optional


def eta(seconds: float) -> str:
    s = max(0, int(round(seconds)))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


class Progress:
    """Steps per second since the run (or the resume) started -> the remaining time."""

    def __init__(self, start: int, steps: int):
        self.start, self.steps, self.t0 = start, steps, time.time()

    def line(self, step: int, metrics: dict) -> str:
        done = max(step - self.start, 1)
        left = (time.time() - self.t0) / done * (self.steps - step)
        parts = [f"[train] step {step}/{self.steps} ({step / self.steps:.0%})"]
        for k in ("loss", "token_acc"):
            if k in metrics:
                parts.append(f"{k} {metrics[k]:.3f}")
        if "val/loss" in metrics:  # train.eval_every (training.heldout)
            parts.append(heldout_text(metrics))
        pred, true, tp = (metrics.get(k) for k in ("revise_pred", "revise_true", "revise_tp"))
        if pred is not None and true is not None and tp is not None:
            p = f"{tp / pred:.2f}" if pred else "-"
            r = f"{tp / true:.2f}" if true else "-"
            parts.append(f"revise P {p} R {r}")
        if "samples_per_s" in metrics:
            parts.append(f"{metrics['samples_per_s']:.1f} samples/s")
        parts.append(f"ETA {eta(left)}")
        return " | ".join(parts)


def heldout_text(metrics: dict) -> str:
    """ "held-out loss X" (training.heldout), with the EMA weights' "(EMA Y)" when measured."""
    ema = f" (EMA {metrics['val_ema/loss']:.3f})" if "val_ema/loss" in metrics else ""
    return f"held-out loss {metrics.get('val/loss', float('nan')):.3f}{ema}"


def training_progress(train_dir, steps: int, batch_size: int, now: float) -> Optional[str]:
    """Where a train stage's run stands, from its files (``pt2i status`` while it runs or after it stopped):
    "step 450/1200 (38%), loss 2.134, held-out loss 2.300, 212.4 samples/s, ETA 5m12s at that pace; last record 40s
    ago; newest checkpoint step_00000400". None when it has logged nothing."""
    from pathlib import Path

    from training.checkpoint import complete_tags
    from training.metrics_log import last_record

    train_dir = Path(train_dir)
    rec = last_record(train_dir / "metrics.jsonl")
    if not rec or "step" not in rec:
        return None
    step = int(rec["step"])
    main = [f"step {step}/{steps} ({step / steps:.0%})"]
    if "loss" in rec:
        main.append(f"loss {rec['loss']:.3f}")
    if "val/loss" in rec:
        main.append(heldout_text(rec))
    if rec.get("samples_per_s"):
        rate = rec["samples_per_s"]
        main.append(f"{rate:.1f} samples/s, ETA {eta((steps - step) * batch_size / rate)} at that pace")
    tail = [f"last record {eta(now - rec['time'])} ago"] if "time" in rec else []
    tags = complete_tags(train_dir / "checkpoints")
    tail.append(f"newest checkpoint {tags[-1]}" if tags else "no checkpoint yet")
    return "; ".join([", ".join(main)] + tail)
