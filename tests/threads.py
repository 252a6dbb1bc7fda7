"""One torch intra-op thread for a block, the caller's count restored after it (tiny models gain nothing from
threads, and on 2 shared cores a second one takes the other xdist worker's core)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(old)
