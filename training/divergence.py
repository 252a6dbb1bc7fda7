"""Stopping a run that diverged, before a checkpoint holds its weights.

A non-finite gradient norm on a step that was applied (an fp16 step skipped on overflow is the loss scaler's
business, not a divergence) means the update just wrote nan or inf into the weights; a non-finite mean loss over a
logged interval means a forward pass overflowed. Either stops every rank at once (the norm is global, the logged
mean all-reduced) with :class:`Diverged`, before the step's checkpoint is written: the newest checkpoint keeps the
last good weights, and ``keep_last`` never prunes good ones for bad.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional


class Diverged(RuntimeError):
    """The training's loss or gradient norm is not finite."""


def _advice(ckpt_dir) -> str:
    """What to do, naming the newest complete checkpoint in ``ckpt_dir`` (None: the run keeps none)."""
    from training.checkpoint import complete_tags

    tags = complete_tags(ckpt_dir) if ckpt_dir is not None else []
    fix = "lower train.lr, raise train.warmup_steps, tighten train.grad_clip or train in bf16 rather than fp16"
    if not tags:
        return f"stopped before writing a checkpoint of them (no checkpoint was written); {fix}, then rerun from step 0"
    return (
        f"stopped before writing a checkpoint of them (the newest checkpoint, {tags[-1]}, holds the last good "
        f"weights); {fix}, then rerun (train.resume: force continues from that checkpoint with the new settings)"
    )


def check_step(step: int, info: dict, ckpt_dir: Optional[Path]) -> None:
    """After optimizer step ``step`` (``info``: the engine's ``step()`` result; ``ckpt_dir``: the run's checkpoints)."""
    norm = info.get("grad_norm")
    if norm is not None and not math.isfinite(norm) and not info.get("skipped"):
        raise Diverged(f"step {step}: the gradient norm is {norm}, and the update applied it; {_advice(ckpt_dir)}")


def check_logged(step: int, metrics: dict, ckpt_dir: Optional[Path]) -> None:
    """At a logged step (``metrics``: the interval's means over micro-batches and ranks)."""
    loss = metrics.get("loss")
    if loss is not None and not math.isfinite(loss):
        raise Diverged(f"step {step}: the mean loss since the last log is {loss}; {_advice(ckpt_dir)}")
