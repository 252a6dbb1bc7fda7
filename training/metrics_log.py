"""Training metrics: averaged over ranks and steps, written by rank 0 to TensorBoard (default),
``metrics.jsonl`` (always; one JSON object per logged step) and Weights & Biases when
``train.wandb_project`` is set (``wandb_mode`` offline by default: no network needed).

Logged names: loss, token_loss, state_loss, token_acc (masked-token accuracy: the stage-t [mask]
positions), revise_acc, revise_precision and revise_recall (pooled over the logged micro-batches and ranks
from their counts, left out when nothing was injected or flagged), state_acc, codebook_usage (fraction of
the K codes the model predicts at the scored positions of a micro-batch, averaged), lr, grad_norm,
tokens_per_s and samples_per_s (image tokens / samples consumed per second by all ranks), data/bad_shards,
data/bad_samples, data/epoch (the epoch of the slowest reader on any rank), plus any ``extra*/`` metrics of the
step hooks.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import BinaryIO, Optional

import torch

# ratio -> (numerator count, denominator count): pooled, not a mean of per-micro-batch ratios (a micro-batch
# without injected tokens would count as a revise accuracy of 0)
POOLED = {
    "revise_acc": ("revise_correct", "revise_injected"),
    "revise_precision": ("revise_tp", "revise_pred"),
    "revise_recall": ("revise_tp", "revise_true"),
}


class MetricsAccumulator:
    """Sums detached per-micro-batch metrics; ``mean()`` averages them over micro-batches and ranks (the
    ``POOLED`` ratios: from their summed counts).

    A tensor metric is summed where it lives, in float64: adding one never waits for the device (a ``.item()``
    per metric per micro-batch would stall a GPU's queue a dozen times a step); ``mean()`` copies the sums to the
    host once per logged step."""

    def __init__(self):
        self.sums: dict[str, float] = defaultdict(float)
        self.device_sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int] = defaultdict(int)

    def add(self, metrics: dict) -> None:
        for k, v in metrics.items():
            if isinstance(v, torch.Tensor):
                if v.numel() != 1:
                    continue
                v = v.detach().reshape(()).to(torch.float64 if v.device.type != "mps" else torch.float32)
                self.device_sums[k] = self.device_sums[k] + v if k in self.device_sums else v
            elif isinstance(v, (int, float)):
                self.sums[k] += float(v)
            else:
                continue
            self.counts[k] += 1

    def _host_sums(self) -> dict[str, float]:
        """Every sum as a Python float: the device ones in one copy per device."""
        out = dict(self.sums)
        by_device: dict[torch.device, list[str]] = {}
        for k, v in self.device_sums.items():
            by_device.setdefault(v.device, []).append(k)
        for keys in by_device.values():
            values = torch.stack([self.device_sums[k] for k in keys]).cpu().tolist()
            for k, v in zip(keys, values):
                out[k] = out.get(k, 0.0) + v
        return out

    def mean(self, distributed: bool = False) -> dict[str, float]:
        sums = self._host_sums()
        keys = sorted(sums)
        vals = torch.tensor([[sums[k], self.counts[k]] for k in keys], dtype=torch.float64).reshape(-1, 2)
        if distributed:
            import torch.distributed as dist

            from training.collectives import all_reduce_host

            if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
                vals = all_reduce_host(vals)  # every rank logs the same metric names in the same order
        out = {k: (vals[i, 0] / vals[i, 1].clamp(min=1)).item() for i, k in enumerate(keys)}
        for ratio, (num, den) in POOLED.items():
            if ratio in out and num in out and den in out:  # the means share one micro-batch count
                if out[den] > 0:
                    out[ratio] = out[num] / out[den]
                else:
                    del out[ratio]  # undefined: nothing injected (or flagged) in the window
        return out

    def reset(self) -> None:
        self.sums.clear()
        self.device_sums.clear()
        self.counts.clear()


def _lines_from_end(f: BinaryIO, block: int = 1 << 16) -> Iterator[tuple[int, bytes]]:
    """(offset, bytes) of the lines of a binary file, the last first, read block by block from its end (the
    newline left out; a last line cut without one included)."""
    pos = f.seek(0, os.SEEK_END)
    rest = b""
    while pos > 0:
        n = min(block, pos)
        pos -= n
        f.seek(pos)
        parts = (f.read(n) + rest).split(b"\n")
        rest, start, found = parts[0], pos + len(parts[0]) + 1, []
        for line in parts[1:]:
            found.append((start, line))
            start += len(line) + 1
        yield from reversed(found)
    yield 0, rest


def _record(line: bytes) -> Optional[dict]:
    """A complete record with a step, else None (a line cut by a crash, a blank line)."""
    try:
        r = json.loads(line)
        int(r["step"])
        return r
    except (ValueError, KeyError, TypeError):
        return None


def keep_until(path: Path, step: int) -> None:
    """Drop the records of ``metrics.jsonl`` after ``step`` (the checkpoint a run resumes from; 0 for a fresh
    start) and a line cut by a crash, so that a resumed run never logs a step twice. Every run drops what follows
    its start before it appends, so the steps only grow: the file is read back from its end to its last record
    at or before ``step`` and cut there (a log of months of steps is not read whole at every resume; a fresh start
    after a first record past ``step`` empties it)."""
    if not path.is_file():
        return
    with open(path, "r+b") as f:
        size, keep, newline = f.seek(0, os.SEEK_END), 0, False
        f.seek(0)
        first = _record(f.readline())
        for start, line in _lines_from_end(f) if first is None or int(first["step"]) <= step else ():
            r = _record(line)
            if r is not None and int(r["step"]) <= step:
                keep = start + len(line) + 1  # with its newline
                newline = keep > size  # a complete record whose newline the crash cut
                break
        if keep == size:
            return
        f.truncate(min(keep, size))
        if newline:
            f.seek(0, os.SEEK_END)
            f.write(b"\n")
        f.flush()
        os.fsync(f.fileno())


def last_record(path: str | Path) -> Optional[dict]:
    """The last complete record of ``metrics.jsonl`` (None when there is none), read from the file's end."""
    p = Path(path)
    if not p.is_file():
        return None
    with open(p, "rb") as f:
        return next((r for _, line in _lines_from_end(f) if (r := _record(line)) is not None), None)


class MetricsLogger:
    """Rank-0 writer. ``resume_step`` (the step a run resumes from, 0 for a fresh start) drops every record
    after it: the metrics.jsonl lines and the TensorBoard events (purge_step)."""

    def __init__(
        self,
        out_dir: str | Path,
        rank: int = 0,
        tensorboard: bool = True,
        wandb_project: Optional[str] = None,
        wandb_mode: str = "offline",
        run_name: str = "train",
        config: Optional[dict] = None,
        resume_step: int = 0,
    ):
        self.rank = rank
        self.out = Path(out_dir)
        self.tb = self.wandb = None
        self.jsonl = None
        if rank != 0:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        keep_until(self.out / "metrics.jsonl", resume_step)
        self.jsonl = open(self.out / "metrics.jsonl", "a")
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(self.out / "tb"), purge_step=resume_step + 1 if resume_step else None)
        if wandb_project:
            try:
                import wandb
            except ImportError as exc:
                raise RuntimeError("train.wandb_project is set but wandb is not installed (pip install wandb)") from exc
            os.environ.setdefault("WANDB_MODE", wandb_mode)
            run_id = hashlib.sha256(str(self.out.resolve()).encode()).hexdigest()[:12]  # same id on resume
            self.wandb = wandb.init(
                project=wandb_project,
                name=run_name,
                dir=str(self.out),
                config=config,
                resume="allow",
                id=f"{run_name}-{run_id}",
            )

    def log(self, step: int, metrics: dict[str, float]) -> None:
        if self.rank != 0:
            return
        record = {"step": step, "time": time.time(), **metrics}
        self.jsonl.write(json.dumps(record) + "\n")
        self.jsonl.flush()
        if self.tb is not None:
            for k, v in metrics.items():
                self.tb.add_scalar(k if "/" in k else f"train/{k}", v, step)
            self.tb.flush()
        if self.wandb is not None:
            self.wandb.log(metrics, step=step)

    def close(self) -> None:
        if self.jsonl is not None:
            self.jsonl.close()
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()


def read_metrics(path: str | Path, keys: Optional[Sequence[str]] = None) -> dict[int, dict]:
    """``metrics.jsonl`` -> {step: record} (a resumed run drops the records after its checkpoint), read line by
    line; ``keys``: only those names (and ``step``) of each record (a long run logs hundreds of thousands)."""
    out: dict[int, dict] = {}
    p = Path(path)
    if p.is_file():
        with open(p) as f:
            for line in f:
                if line.strip():
                    r = json.loads(line)
                    if keys is not None:
                        r = {k: r[k] for k in ("step", *keys) if k in r}
                    out[int(r["step"])] = r
    return out
