"""The random order (Table 3 "random") and MaskGIT's confidence order, which trains on random stages."""

from __future__ import annotations

from training.model.orders.base import Order, register_order
from training.model.seeded_random import uniform


@register_order("random")
class Random(Order):
    """A uniformly random permutation per sample."""

    def permutation(self, batch_size, seq_len, *, quant_error, grid, generator, device):
        return uniform((batch_size, seq_len), generator, device).argsort(dim=1)


@register_order("confidence")
class Confidence(Random):
    """MaskGIT: the positions are chosen at sampling time by the model's own confidence, so there is
    no data order to train on; training uses uniformly random stages (as MaskGIT trains with random
    masks). The sampler implements the confidence selection."""

    decided_at_sampling = True
