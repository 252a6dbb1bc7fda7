"""One training micro-batch of the super-resolution model: masked prediction of high-res tokens.

Each sample's high-res grid is masked at a ratio drawn per sample: 1.0 (every token: direct super-resolution,
the input of Eq. 3) with probability ``direct_fraction``, else one of ``mask_ratios`` (CogView2 fine-tunes its
iterative module with ratios in {0.2, 0.4, 0.6, 0.8, 0.9}); the loss is the cross-entropy at the masked tokens.
Randomness comes from the batch's ``seeds`` only (``training.model.seeded_random``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from training.model.seeded_random import batch_seed, generator_for, uniform


def sr_masks(
    batch: int, length: int, mask_ratios: Sequence[float], direct_fraction: float, generator: torch.Generator, device
) -> Tensor:
    """Bool[batch, length]: the masked positions, round(ratio * length) of them per sample (at least one)."""
    pick = uniform((batch,), generator, device)
    which = (uniform((batch,), generator, device) * len(mask_ratios)).long().clamp(max=len(mask_ratios) - 1)
    ratios = torch.as_tensor(list(mask_ratios), dtype=torch.float32, device=device)[which]
    ratios = torch.where(pick < direct_fraction, torch.ones_like(ratios), ratios)
    count = (ratios * length).round().long().clamp(1, length)
    rank = uniform((batch, length), generator, device).argsort(1).argsort(1)  # a random rank per position
    return rank < count[:, None]


class SRTrainModule(nn.Module):
    """What the engine trains: ``model`` (an ``SRTransformer``); forward(batch) -> (loss, metrics) with batch
    keys lo, hi (Long), text, text_mask, seeds."""

    def __init__(self, model: nn.Module, mask_ratios: Sequence[float], direct_fraction: float):
        super().__init__()
        self.model = model
        self.mask_ratios, self.direct_fraction = list(mask_ratios), direct_fraction

    def forward(self, batch: dict) -> tuple[Tensor, dict[str, Tensor]]:
        hi = batch["hi"]
        g = generator_for(batch_seed(batch["seeds"]))
        masked = sr_masks(*hi.shape, self.mask_ratios, self.direct_fraction, g, hi.device)
        logits = self.model(batch["lo"], hi.masked_fill(masked, self.model.mask_id), batch["text"], batch["text_mask"])
        loss = F.cross_entropy(logits[masked].float(), hi[masked])
        with torch.no_grad():
            acc = (logits.argmax(-1) == hi)[masked].float().mean()
        return loss, {"loss": loss.detach(), "token_acc": acc, "mask_frac": masked.float().mean()}
