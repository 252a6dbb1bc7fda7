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


def _glibc():
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "gnu_get_libc_version") else None


def _apply(settings: dict[int, int]) -> bool:
    libc = _glibc()
    return libc is not None and all(libc.mallopt(k, v) == 1 for k, v in settings.items())


def _give_back() -> None:
    """Return the heap's free memory to the kernel (``malloc_trim``): what ``keep`` held for reuse."""
    libc = _glibc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(ctypes.c_size_t(0))


@contextmanager
def host_allocator(mode: str) -> Iterator[bool]:
    """Within the block, ``keep`` freed memory (see the module docstring) or leave the ``system`` default;
    yields whether the setting applies (False off glibc). On exit glibc's settings are back and the memory
    kept is given back (``malloc_trim``). Not everything is as before the block: a large free chunk the block
    left inside the heap (below memory still in use) still serves later allocations of its size from the heap,
    and stays with the process while free, where glibc would have mapped and unmapped them afresh."""
    if mode != "keep":
        yield False
        return
    applied = _apply(KEEP)
    try:
        yield applied
    finally:
        if applied:
            _apply(SYSTEM)
            _give_back()
