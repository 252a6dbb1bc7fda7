"""Generation orders (PDM section 3.2): which positions are written at which of the T stages.

    order = get_order("const_error", mode="softmax", tau=0.5)
    stage_of = order(B, L, T, quant_error=qerr, grid=(h, w), generator=g)

Names: raster, random, const_error, anti_progressive, halton, confidence, learned; one file each
(``base`` holds the interface, ``stage_sizes`` and the registry).
"""

from training.model.orders.base import ORDERS, Order, get_order, register_order, stage_sizes, stages_from_permutation
from training.model.orders.const_error import AntiProgressive, ConstError
from training.model.orders.halton import Halton, halton_permutation
from training.model.orders.learned import Learned, LearnedOrderNotAvailable
from training.model.orders.random_order import Confidence, Random
from training.model.orders.raster import Raster

__all__ = [
    "ORDERS",
    "AntiProgressive",
    "Confidence",
    "ConstError",
    "Halton",
    "Learned",
    "LearnedOrderNotAvailable",
    "Order",
    "Random",
    "Raster",
    "get_order",
    "halton_permutation",
    "register_order",
    "stage_sizes",
    "stages_from_permutation",
]
