"""Training a small VQ tokenizer: on images in memory (``train_tokenizer``, the tests' toy domains) or
streamed from the download stage's webdataset image shards (``train_tokenizer_on_shards``, the tokenizer
stage, any source), resumable.

The loss is Eq. 1-2 of the PDM paper, optionally with the adversarial term of a full VQ-GAN:

    L = l1 * |Y - Y~|_1 + l2 * |Y - Y~|_2^2 + |sg[E(Y)] - z_q|^2 + beta * |sg[z_q] - E(Y)|^2
        (+ lambda * -D(Y~), a hinge PatchGAN with taming's adaptive weight, when ``disc_weight`` > 0),
    z_q = argmin_k |E(Y) - z_k|^2, gradients through z_q by the straight-through estimator.

Left out of taming's VQ-GAN loss: LPIPS, the perceptual term (it needs VGG weights that cannot be
downloaded here). With ``ema_codebook`` the codebook term is replaced by exponential-moving-average
updates of the codes (as the paper does). With ``restart_dead_codes``, codes unused for ``restart_every``
steps are moved onto encoder features of the current batch (sampled in proportion to their quantization
error), which keeps most of the codebook in use; restarts stop for the last 20% of the steps. The
codebook starts from encoder features of the first batch.

Training on shards saves ``train_state.pt`` every ``checkpoint_every`` steps (weights, optimisers, EMA
statistics, the generator and the position in the image stream): a killed run continues from it and
ends with the same weights as an uninterrupted one. A ``holdout_fraction`` of the images (by a hash of
their id, at most ``holdout_max``) is never trained on; the metrics are measured on them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from core.files import read_json, write_json_atomic
from tokenization.vqgan.checkpoint import save_tokenizer
from tokenization.vqgan.config import TokenizerConfig
from tokenization.vqgan.model import VQModel
from tokenization.vqgan.train_loop import STATE_FILE, TrainState, fit, load_state, save_state

METRICS_FILE = "metrics.json"
# keys that cannot change the trained weights: how often the resumable state is saved (the resume is exact) and
# whether a pretrained file may be unpickled (not read when training)
NOT_WEIGHT_KEYS = ("checkpoint_every", "trust_checkpoint")


def weights_config(cfg: dict) -> dict:
    """A tokenizer config (as a dict) without the keys that cannot change the weights: what identifies them."""
    return {k: v for k, v in cfg.items() if k not in NOT_WEIGHT_KEYS}


def finished_metrics(out_dir: Path, cfg: TokenizerConfig, data: list | None = None) -> dict | None:
    """The metrics of a finished training of ``cfg`` on ``data`` (the image shards' identities; None for images
    in memory) in ``out_dir`` (``metrics.json`` with the same config, but for keys that cannot change the weights,
    and data next to the weights), else None: a tokenizer already trained so is not trained again."""
    from tokenization.vqgan.checkpoint import CONFIG_FILE, WEIGHTS_FILE

    out = Path(out_dir)
    path = out / METRICS_FILE
    if not (path.is_file() and (out / WEIGHTS_FILE).is_file() and (out / CONFIG_FILE).is_file()):
        return None
    done = read_json(path)
    if not isinstance(done, dict):
        return None
    same = isinstance(done.get("config"), dict) and weights_config(done["config"]) == weights_config(asdict(cfg))
    return done["metrics"] if same and done.get("data") == data else None


def to_model_range(images) -> torch.Tensor:
    """uint8 [N, H, W, 3] (0..255) or float [N, H, W, 3] (0..1), numpy or torch -> float [N, 3, H, W] in [-1, 1]."""
    x = torch.as_tensor(np.asarray(images) if not isinstance(images, torch.Tensor) else images)
    if x.dim() != 4 or x.shape[-1] != 3:
        raise ValueError(f"images must be [N, H, W, 3], got shape {tuple(x.shape)}")
    x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
    return (x * 2.0 - 1.0).permute(0, 3, 1, 2).contiguous()


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


def _check(cfg: TokenizerConfig) -> None:
    if cfg.kind != "vq":
        raise ValueError("train_tokenizer trains tokenizer.kind: vq only (Gumbel models are inference-only)")


def _finish(cfg, s: TrainState, x_hold, x_train, out_dir, t0, counts: dict, last: dict, data=None) -> dict:
    """Measure, save the weights, write ``metrics.json`` (with what it was made of); returns the metrics."""
    hold = evaluate(s.model, x_hold) if len(x_hold) else {"mae": None, "codebook_usage": None}
    train_eval = evaluate(s.model, x_train)
    # the old record goes before the new weights come: a kill between the two must not leave another config's
    # record vouching for these weights (``finished_metrics``)
    (Path(out_dir) / METRICS_FILE).unlink(missing_ok=True)
    save_tokenizer(s.model.eval(), cfg, out_dir)
    metrics = {
        "mae": hold["mae"],
        "codebook_usage": hold["codebook_usage"],
        "steps": s.step,
        "seconds": round(time.time() - t0, 2),
        "train_mae": train_eval["mae"],
        **counts,
        "restarted": s.restarted,
        "final_loss": last.get("loss"),
        **{k: last[k] for k in ("d_loss", "disc_weight") if k in last},
    }
    record = {"metrics": metrics, "config": asdict(cfg), **({"data": data} if data is not None else {})}
    write_json_atomic(Path(out_dir) / METRICS_FILE, record)
    return metrics


def train_tokenizer(
    cfg: TokenizerConfig, images, out_dir: Path, progress: bool = True, init: Optional[dict] = None
) -> dict:
    """Train a ``kind: vq`` tokenizer on ``images`` (uint8 [N, H, W, 3] or float in [0, 1]): from scratch, or
    fine-tune the weights ``init`` (a ``VQModel`` state dict of ``cfg``'s architecture).

    A ``holdout_fraction`` of the images (at least one) is kept out for the metrics. Writes
    ``out_dir/vqgan.safetensors``, ``out_dir/tokenizer.yaml`` (loads back with ``load_tokenizer_dir``
    or, via its ``ckpt_path``, ``load_vqgan``) and ``out_dir/metrics.json``. Returns
    ``{"mae": held-out mean absolute pixel error in [0, 1] units, "codebook_usage": fraction of codes
    used on the held-out images, "steps", "seconds", "train_mae", "n_train", "n_holdout", "restarted"}``.
    """
    _check(cfg)
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
    s = TrainState.build(cfg, x_train[torch.randperm(len(x_train), generator=gen)[: cfg.batch_size]], gen, init)

    def batches():
        while True:
            yield x_train[torch.randint(len(x_train), (cfg.batch_size,), generator=gen)]

    last = fit(cfg, s, batches(), t0, progress)
    counts = {"n_train": int(len(x_train)), "n_holdout": int(n_hold)}
    return _finish(cfg, s, x_hold, x_train[: max(n_hold, 64)], out_dir, t0, counts, last)


def train_tokenizer_on_shards(
    cfg: TokenizerConfig,
    shards: list[str],
    out_dir: Path,
    data: Optional[list] = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict:
    """Train a ``kind: vq`` tokenizer on the images of webdataset image shards (``tokenization.image_stream``),
    resuming from ``out_dir/train_state.pt`` when it was made with the same config and ``data`` (what
    identifies the shards' contents). Writes what ``train_tokenizer`` writes; ``n_train`` counts the
    images drawn (with repeats)."""
    from tokenization.image_stream import ImageStream, held_out_images

    _check(cfg)
    t0 = time.time()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    recipe = {"config": weights_config(asdict(cfg)), "data": data if data is not None else list(shards)}
    x_hold = to_model_range(held_out_images(shards, cfg.pixels, cfg.holdout_fraction, cfg.holdout_max))
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    saved = load_state(out_dir / STATE_FILE, recipe)
    position = saved["position"] if saved is not None else 0
    stream = ImageStream(shards, cfg.pixels, cfg.seed, cfg.holdout_fraction, cfg.shuffle_buffer, position)
    images = (to_model_range(b) for b in stream.batches(cfg.batch_size))
    first = next(images) if saved is None else None
    s = TrainState.build(cfg, first if first is not None else torch.zeros(1, 3, cfg.pixels, cfg.pixels), gen)
    if saved is not None:
        s.load_state_dict(saved)
        log(f"[tokenizer] resumed from {out_dir / STATE_FILE} at step {s.step}")
    if not len(x_hold):
        log(f"[tokenizer] no held-out image (tokenizer.holdout_fraction {cfg.holdout_fraction}): train MAE only")

    def checkpoint(state: TrainState) -> None:
        if state.step % cfg.checkpoint_every == 0 and state.step < cfg.steps:
            save_state(out_dir / STATE_FILE, state, {"recipe": recipe, "position": stream.position})

    last = fit(cfg, s, images, t0, progress, checkpoint)
    counts = {"n_train": stream.position, "n_holdout": int(len(x_hold))}
    probe = next(images)
    metrics = _finish(cfg, s, x_hold, probe, out_dir, t0, counts, last, data=recipe["data"])
    (out_dir / STATE_FILE).unlink(missing_ok=True)
    return metrics
