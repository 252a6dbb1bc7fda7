"""The name "learned" before the order learner is imported: a clear error instead of a missing name.

The real order (dynamic importance scoring, PDM 3.2, Eq. 6-7) is ``training.model.order_learner.Learned``,
which registers itself under the same name when its package is imported.
"""

from __future__ import annotations

from training.model.orders.base import Order, register_order


class LearnedOrderNotAvailable(NotImplementedError):
    pass


@register_order("learned")
class Learned(Order):
    """Placeholder for the dynamic importance scoring of PDM 3.2 (policy gradient, Eq. 6-7)."""

    def __init__(self, **kw):
        raise LearnedOrderNotAvailable(
            "the 'learned' order (dynamic importance scoring, PDM section 3.2, Eq. 6-7) comes with the "
            "policy-gradient order learner, which registers it with training.model.orders.register_order"
            "('learned'); it is not available from training.model.orders alone"
        )
