"""The tokenizer's training step and loop, shared by training on images in memory and on image shards.

One step: L = l1 |Y - Y~|_1 + l2 |Y - Y~|_2^2 + vq terms (+ the adaptive-weighted adversarial term when
``disc_weight`` > 0 and the step reached ``disc_start``, then one discriminator step), an Adam step, EMA
codebook updates and dead-code restarts (``tokenization.vqgan.train``). ``TrainState`` holds everything a
run needs to continue exactly (weights, optimisers, EMA statistics, code usage, the generator).
"""

from __future__ import annotations

import math
import pickle
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from core.files import atomic_path
from tokenization.vqgan.config import TokenizerConfig
from tokenization.vqgan.discriminator import Adversary
from tokenization.vqgan.ema import EmaCodebook, restart_codes
from tokenization.vqgan.model import VQModel
from tokenization.vqgan.quantize import _flatten

STATE_FILE = "train_state.pt"


def lr_at(cfg: TokenizerConfig, step: int) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    t = (step - cfg.warmup_steps) / max(cfg.steps - cfg.warmup_steps, 1)
    return cfg.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(t, 1.0))))


@dataclass
class TrainState:
    model: VQModel
    opt: torch.optim.Optimizer
    gen: torch.Generator
    ema: Optional[EmaCodebook]
    adversary: Optional[Adversary]
    used: torch.Tensor
    restarted: int = 0
    step: int = 0

    @classmethod
    def build(
        cls, cfg: TokenizerConfig, first: torch.Tensor, gen: torch.Generator, init: Optional[dict] = None
    ) -> TrainState:
        """A fresh model (``torch.manual_seed(cfg.seed)`` first) whose codes start on encoder features of
        ``first`` (a batch in [-1, 1]); or, given ``init`` (a ``VQModel`` state dict of the same architecture),
        that model's weights and codes, to fine-tune it (e.g. at a higher resolution)."""
        model = VQModel(cfg).train()
        codebook = model.codebook
        with torch.no_grad():
            if init is not None:
                model.load_state_dict(init)
            else:
                zf = _flatten(model.features(first))
                codebook.data.copy_(zf[torch.randint(len(zf), (cfg.n_embed,), generator=gen)])
        ema = EmaCodebook(codebook, cfg.ema_decay) if cfg.ema_codebook else None
        params = [p for p in model.parameters() if not (ema is not None and p is codebook)]
        if ema is not None:
            codebook.requires_grad_(False)
        opt = torch.optim.Adam(params, lr=cfg.lr, betas=(0.9, 0.99))
        adversary = Adversary(cfg, cfg.out_ch) if cfg.disc_weight > 0 else None
        return cls(model, opt, gen, ema, adversary, torch.zeros(cfg.n_embed, dtype=torch.bool))

    def state_dict(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "opt": self.opt.state_dict(),
            "gen": self.gen.get_state(),
            "ema": None if self.ema is None else {"count": self.ema.count, "sums": self.ema.sums},
            "adversary": None if self.adversary is None else self.adversary.state_dict(),
            "used": self.used,
            "restarted": self.restarted,
            "step": self.step,
        }

    def load_state_dict(self, s: dict) -> None:
        self.model.load_state_dict(s["model"])
        self.opt.load_state_dict(s["opt"])
        self.gen.set_state(s["gen"])
        if self.ema is not None:
            self.ema.count, self.ema.sums = s["ema"]["count"].clone(), s["ema"]["sums"].clone()
        if self.adversary is not None:
            self.adversary.load_state_dict(s["adversary"])
        self.used, self.restarted, self.step = s["used"].clone(), s["restarted"], s["step"]


def train_step(cfg: TokenizerConfig, s: TrainState, xb: torch.Tensor) -> dict:
    """One optimiser step on the batch ``xb`` ([-1, 1], NCHW); returns its losses."""
    for g in s.opt.param_groups:
        g["lr"] = lr_at(cfg, s.step)
    model, codebook = s.model, s.model.codebook
    rec, vq_loss, ids, z = model(xb, codebook_weight=0.0 if s.ema is not None else 1.0)
    l1 = (rec - xb).abs().mean()
    rec_loss = cfg.l1_weight * l1 + cfg.l2_weight * F.mse_loss(rec, xb)
    loss = rec_loss + vq_loss
    out = {}
    adversarial = s.adversary is not None and s.adversary.active(s.step)
    if adversarial:
        g_loss, weight = s.adversary.generator_loss(rec, rec_loss, model.decoder.conv_out.weight)
        loss = loss + g_loss
        out["disc_weight"] = float(weight)
    s.opt.zero_grad(set_to_none=True)
    loss.backward()
    s.opt.step()
    if adversarial:
        for g in s.adversary.opt.param_groups:
            g["lr"] = lr_at(cfg, s.step)
        out["d_loss"] = s.adversary.discriminator_step(xb, rec)
    flat_ids = ids.reshape(-1)
    s.used[flat_ids] = True
    if s.ema is not None or cfg.restart_dead_codes:
        zf = _flatten(z.detach())
        if s.ema is not None:
            s.ema.update(flat_ids, zf)
        if cfg.restart_dead_codes and (s.step + 1) % cfg.restart_every == 0:
            if s.step < 0.8 * cfg.steps:
                err = (zf - codebook.detach()[flat_ids]).pow(2).sum(1)
                s.restarted += restart_codes(codebook, ~s.used, zf, err, s.gen, s.ema)
            s.used.zero_()
    s.step += 1
    return {"loss": loss.item(), "l1": l1.item(), "vq": vq_loss.item(), **out}


def fit(
    cfg: TokenizerConfig,
    s: TrainState,
    batches: Iterator[torch.Tensor],
    t0: float,
    progress: bool = True,
    after_step: Optional[Callable[[TrainState], None]] = None,
) -> dict:
    """Steps from ``s.step`` to ``cfg.steps`` (or until ``cfg.time_limit_s`` since ``t0``); ``after_step``
    runs after each (checkpoints). Returns the last step's losses."""
    last: dict = {}
    bar = tqdm(total=cfg.steps, initial=s.step, desc="tokenizer", disable=not progress, leave=False)
    while s.step < cfg.steps:
        if cfg.time_limit_s is not None and time.time() - t0 > cfg.time_limit_s:
            break
        last = train_step(cfg, s, next(batches))
        if progress and s.step % 10 == 1:
            bar.set_postfix({k: f"{v:.4f}" for k, v in last.items()})
        bar.update(1)
        if after_step is not None:
            after_step(s)
    bar.close()
    return last


def save_state(path: Path, s: TrainState, extra: dict) -> None:
    with atomic_path(path) as tmp:
        torch.save({**s.state_dict(), **extra}, tmp)


def load_state(path: Path, recipe: dict) -> Optional[dict]:
    """The saved state at ``path`` when it was made with ``recipe`` (the config and the data), else None."""
    if not path.is_file():
        return None
    try:  # tensors, numbers and the recipe: nothing in it may run code
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ValueError(
            f"{path} holds more than tensors and plain data (refused: unpickling it could run code); delete it "
            f"to train the tokenizer afresh ({str(exc).splitlines()[0]})"
        ) from None
    return state if state.get("recipe") == recipe else None
