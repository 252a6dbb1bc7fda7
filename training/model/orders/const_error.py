"""Constant quantization-error scoring (PDM Eq. 5, Table 3 "const. error") and its reverse
(Table 3 "un-progressive")."""

from __future__ import annotations

from typing import Literal

import torch

from training.model.orders.base import Order, register_order
from training.model.seeded_random import gumbel


@register_order("const_error")
class ConstError(Order):
    """Constant quantization-error scoring (Eq. 5): confidence c = -quant_error; low error first.

    mode="topk":    deterministic ranking by error, the top-K (K = L/T) most confident per stage.
    mode="softmax": positions drawn without replacement from Softmax(c / tau) (Eq. 5), i.e.
                    Gumbel-top-k over -error / tau; tau -> 0 gives topk, large tau gives random.
    """

    needs_quant_error = True
    sign = -1.0  # confidence = sign * error

    def __init__(self, mode: Literal["topk", "softmax"] = "topk", tau: float = 1.0):
        if mode not in ("topk", "softmax"):
            raise ValueError(f"mode must be 'topk' or 'softmax', got {mode!r}")
        if tau <= 0:
            raise ValueError(f"tau must be > 0, got {tau}")
        self.mode, self.tau = mode, tau

    def permutation(self, batch_size, seq_len, *, quant_error, grid, generator, device):
        conf = self.sign * quant_error.to(device=device, dtype=torch.float32)
        if self.mode == "topk":
            return conf.argsort(dim=1, descending=True, stable=True)
        keys = conf / self.tau + gumbel(conf.shape, generator, device)  # Eq. 5, Gumbel-top-k
        return keys.argsort(dim=1, descending=True)


@register_order("anti_progressive")
class AntiProgressive(ConstError):
    """The reverse of ``const_error`` (Table 3 "un-progressive"): high quantization error first,
    fine to coarse. Same ``mode`` / ``tau`` options."""

    sign = 1.0
