"""Codebook upkeep while training a VQ tokenizer: exponential-moving-average code updates (as the PDM paper
does) and restarts of dead codes onto encoder features."""

from __future__ import annotations

import torch


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
def restart_codes(
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
