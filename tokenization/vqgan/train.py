"""Training a small VQ tokenizer for toy domains (e.g. the synthetic coloured shapes, 32x32).

The loss is Eq. 1-2 of the PDM paper, without the GAN and LPIPS terms of a full VQ-GAN (not needed to
reconstruct flat-coloured toy images, and far too slow on a CPU):

    L = l1 * |Y - Y~|_1 + l2 * |Y - Y~|_2^2 + |sg[E(Y)] - z_q|^2 + beta * |sg[z_q] - E(Y)|^2,
    z_q = argmin_k |E(Y) - z_k|^2, gradients through z_q by the straight-through estimator.

With ``ema_codebook`` the codebook term is replaced by exponential-moving-average updates of the codes
(as the paper does). With ``restart_dead_codes``, codes unused for ``restart_every`` steps are moved
onto encoder features of the current batch (sampled in proportion to their quantization error), which
keeps most of the codebook in use; restarts stop for the last 20% of the steps. The codebook starts
from encoder features of the first batch. Not resumable: a run takes minutes.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from tokenization.vqgan.checkpoint import save_tokenizer
from tokenization.vqgan.config import TokenizerConfig
from tokenization.vqgan.model import VQModel
from tokenization.vqgan.quantize import _flatten

METRICS_FILE = "metrics.json"


def finished_metrics(out_dir: Path, cfg: TokenizerConfig) -> dict | None:
    """The metrics of a finished training of ``cfg`` in ``out_dir`` (``metrics.json`` with the same config next to
    the weights), else None: a tokenizer already trained with this config is not trained again."""
    from tokenization.vqgan.checkpoint import CONFIG_FILE, WEIGHTS_FILE

    out = Path(out_dir)
    path = out / METRICS_FILE
    if not (path.is_file() and (out / WEIGHTS_FILE).is_file() and (out / CONFIG_FILE).is_file()):
        return None
    done = json.loads(path.read_text())
    return done["metrics"] if done.get("config") == asdict(cfg) else None


def to_model_range(images) -> torch.Tensor:
    """uint8 [N, H, W, 3] (0..255) or float [N, H, W, 3] (0..1), numpy or torch -> float [N, 3, H, W] in [-1, 1]."""
    x = torch.as_tensor(np.asarray(images) if not isinstance(images, torch.Tensor) else images)
    if x.dim() != 4 or x.shape[-1] != 3:
        raise ValueError(f"images must be [N, H, W, 3], got shape {tuple(x.shape)}")
    x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
    return (x * 2.0 - 1.0).permute(0, 3, 1, 2).contiguous()


class EmaCodebook:
    """EMA codebook statistics (kept outside the model so its state dict stays taming-compatible).

    Counts start at 1 with sums equal to the initial codes, so a code that is never chosen keeps its
    vector instead of drifting to 0 or blowing up; Laplace smoothing as in VQ-VAE-2."""

    def __init__(self, weight: torch.Tensor, decay: float, eps: float = 1e-5):
        self.weight, self.decay, self.eps = weight, decay, eps
        self.count = torch.ones(weight.shape[0])
        self.sums = weight.detach().clone()

    @torch.no_grad()
    def update(self, ids: torch.Tensor, zf: torch.Tensor) -> None:
        k = self.weight.shape[0]
        counts = torch.bincount(ids, minlength=k).float()
        sums = torch.zeros_like(self.sums).index_add_(0, ids, zf.float())
        self.count.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        self.sums.mul_(self.decay).add_(sums, alpha=1 - self.decay)
        n = self.count.sum()
        smoothed = (self.count + self.eps) / (n + k * self.eps) * n
        self.weight.data.copy_(self.sums / smoothed[:, None])

    @torch.no_grad()
    def reset(self, idx: torch.Tensor, vectors: torch.Tensor) -> None:
        self.count[idx] = 1.0
        self.sums[idx] = vectors


@torch.no_grad()
def _restart(
    weight: torch.Tensor,
    dead: torch.Tensor,
    zf: torch.Tensor,
    err: torch.Tensor,
    gen: torch.Generator,
    ema: EmaCodebook | None,
) -> int:
    """Move ``dead`` codes onto features of ``zf`` drawn with probability proportional to ``err``."""
    idx = dead.nonzero().squeeze(1)
    if idx.numel() == 0:
        return 0
    p = err.clamp_min(1e-12)
    pick = torch.multinomial(p, idx.numel(), replacement=idx.numel() > p.numel(), generator=gen)
    vec = zf[pick] + 1e-3 * zf.std() * torch.randn(idx.numel(), zf.shape[1], generator=gen)
    weight.data[idx] = vec
    if ema is not None:
        ema.reset(idx, vec)
    return int(idx.numel())


@torch.no_grad()
def evaluate(model: VQModel, x: torch.Tensor, batch_size: int = 64) -> dict:
    """MAE in [0, 1] pixel units and codebook usage of ``model`` on images ``x`` ([-1, 1], NCHW)."""
    was_training = model.training
    model.eval()
    abs_err, n_px, used = 0.0, 0, torch.zeros(model.codebook_size, dtype=torch.bool)
    for xb in x.split(batch_size):
        ids, _ = model.encode(xb)
        rec = model.decode(ids, grid=(xb.shape[2] // model.cfg.factor, xb.shape[3] // model.cfg.factor))
        abs_err += float((rec - xb).abs().sum()) / 2.0
        n_px += xb.numel()
        used[ids.reshape(-1)] = True
    model.train(was_training)
    return {"mae": abs_err / max(n_px, 1), "codebook_usage": float(used.float().mean())}


def _lr_at(cfg: TokenizerConfig, step: int) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    t = (step - cfg.warmup_steps) / max(cfg.steps - cfg.warmup_steps, 1)
    return cfg.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(t, 1.0))))


def train_tokenizer(cfg: TokenizerConfig, images, out_dir: Path, progress: bool = True) -> dict:
    """Train a ``kind: vq`` tokenizer from scratch on ``images`` (uint8 [N, H, W, 3] or float in [0, 1]).

    A ``holdout_fraction`` of the images (at least one) is kept out for the metrics. Writes
    ``out_dir/vqgan.safetensors``, ``out_dir/tokenizer.yaml`` (loads back with ``load_tokenizer_dir``
    or, via its ``ckpt_path``, ``load_vqgan``) and ``out_dir/metrics.json``. Returns
    ``{"mae": held-out mean absolute pixel error in [0, 1] units, "codebook_usage": fraction of codes
    used on the held-out images, "steps", "seconds", "train_mae", "n_train", "n_holdout", "restarted"}``.
    """
    if cfg.kind != "vq":
        raise ValueError("train_tokenizer trains tokenizer.kind: vq only (Gumbel models are inference-only)")
    t0 = time.time()
    x = to_model_range(images)
    if x.shape[2] != cfg.pixels or x.shape[3] != cfg.pixels:
        raise ValueError(
            f"images are {x.shape[2]}x{x.shape[3]} but the tokenizer expects {cfg.pixels} "
            f"(tokenizer.image_size / resolution)"
        )
    if x.shape[0] < 2:
        raise ValueError("need at least 2 images (one is held out)")
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    perm = torch.randperm(x.shape[0], generator=gen)
    n_hold = min(max(1, int(round(cfg.holdout_fraction * x.shape[0]))), x.shape[0] - 1)
    x_hold, x_train = x[perm[:n_hold]], x[perm[n_hold:]]

    model = VQModel(cfg).train()
    codebook = model.codebook
    with torch.no_grad():  # start the codes on encoder features
        zf = _flatten(model.features(x_train[torch.randperm(len(x_train), generator=gen)[: cfg.batch_size]]))
        codebook.data.copy_(zf[torch.randint(len(zf), (cfg.n_embed,), generator=gen)])
    ema = EmaCodebook(codebook, cfg.ema_decay) if cfg.ema_codebook else None
    params = [p for n, p in model.named_parameters() if not (ema is not None and p is codebook)]
    if ema is not None:
        codebook.requires_grad_(False)
    opt = torch.optim.Adam(params, lr=cfg.lr, betas=(0.9, 0.99))

    used = torch.zeros(cfg.n_embed, dtype=torch.bool)
    restarted, step, last = 0, 0, {}
    bar = tqdm(total=cfg.steps, desc="tokenizer", disable=not progress, leave=False)
    for step in range(cfg.steps):
        if cfg.time_limit_s is not None and time.time() - t0 > cfg.time_limit_s:
            break
        for g in opt.param_groups:
            g["lr"] = _lr_at(cfg, step)
        xb = x_train[torch.randint(len(x_train), (cfg.batch_size,), generator=gen)]
        rec, vq_loss, ids, z = model(xb, codebook_weight=0.0 if ema is not None else 1.0)
        l1 = (rec - xb).abs().mean()
        l2 = F.mse_loss(rec, xb)
        loss = cfg.l1_weight * l1 + cfg.l2_weight * l2 + vq_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        flat_ids = ids.reshape(-1)
        used[flat_ids] = True
        if ema is not None or cfg.restart_dead_codes:
            zf = _flatten(z.detach())
            if ema is not None:
                ema.update(flat_ids, zf)
            if cfg.restart_dead_codes and (step + 1) % cfg.restart_every == 0:
                if step < 0.8 * cfg.steps:
                    err = (zf - codebook.detach()[flat_ids]).pow(2).sum(1)
                    restarted += _restart(codebook, ~used, zf, err, gen, ema)
                used.zero_()
        last = {"loss": loss.item(), "l1": l1.item(), "vq": vq_loss.item()}
        if progress and step % 10 == 0:
            bar.set_postfix({k: f"{v:.4f}" for k, v in last.items()})
        bar.update(1)
    else:
        step = cfg.steps
    bar.close()
    steps_done = step

    hold = evaluate(model, x_hold)
    train_eval = evaluate(model, x_train[: max(n_hold, 64)])
    save_tokenizer(model.eval(), cfg, out_dir)
    metrics = {
        "mae": hold["mae"],
        "codebook_usage": hold["codebook_usage"],
        "steps": steps_done,
        "seconds": round(time.time() - t0, 2),
        "train_mae": train_eval["mae"],
        "n_train": int(len(x_train)),
        "n_holdout": int(n_hold),
        "restarted": restarted,
        "final_loss": last.get("loss"),
    }
    out = Path(out_dir)
    tmp = out / (METRICS_FILE + ".tmp")
    tmp.write_text(json.dumps({"metrics": metrics, "config": asdict(cfg)}, indent=2))
    os.replace(tmp, out / METRICS_FILE)
    return metrics
