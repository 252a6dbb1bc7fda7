"""How a CPU rank's C allocator treats freed memory (``cluster.host_allocator``).

Where DeepSpeed's ZeRO time went on a CPU rank (``benchmarks/bench_train.py``): page faults. glibc serves
every allocation above its mmap threshold (at most 32 MiB) with a fresh ``mmap`` and returns it to the
kernel on free, so a buffer allocated and freed every step is zero-filled page by page every step. The
bare step allocates few such buffers; ZeRO-3 gathers each layer's parameters, frees them after use,
flattens the gradient bucket and allocates the gradient partitions anew each step: 2.6-4.3 x the bare
step's minor page faults, measured, and twice its system time. ``keep`` serves every allocation from the
heap and trims it only above 2 GiB of free memory at its top, so a step reuses the last step's memory.
The cost: freed memory stays with the process (its RSS is its high-water mark), so ``auto`` keeps it only
on CPU ranks that offload nothing (offload is chosen when RAM is the limit). glibc only; elsewhere a no-op."""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Iterator
from contextlib import contextmanager

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # glibc's malloc.h
KEEP = {M_MMAP_MAX: 0, M_TRIM_THRESHOLD: 2**31 - 1}
SYSTEM = {M_MMAP_MAX: 65536, M_TRIM_THRESHOLD: 128 * 1024}  # glibc's defaults (its dynamic threshold aside)


def resolve(mode: str, device_type: str, offload: bool) -> str:
    """``auto`` -> ``keep`` on a CPU rank that offloads nothing, else ``system``."""
    if mode != "auto":
        return mode
    return "keep" if device_type == "cpu" and not offload else "system"


def _mallopt():
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        return libc.mallopt if hasattr(libc, "mallopt") and hasattr(libc, "gnu_get_libc_version") else None
    except OSError:
        return None


def _apply(settings: dict[int, int]) -> bool:
    mallopt = _mallopt()
    return mallopt is not None and all(mallopt(k, v) == 1 for k, v in settings.items())


@contextmanager
def host_allocator(mode: str) -> Iterator[bool]:
    """Within the block, ``keep`` freed memory (see the module docstring) or leave the ``system`` default;
    yields whether the setting applies (False off glibc). glibc's defaults are back on exit."""
    if mode != "keep":
        yield False
        return
    applied = _apply(KEEP)
    try:
        yield applied
    finally:
        if applied:
            _apply(SYSTEM)
