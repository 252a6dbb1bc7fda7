"""Build DeepSpeed's native ops that training uses on this machine's accelerator, ahead of time.

DeepSpeed JIT-compiles an op the first time a run needs it (CPU Adam for optimizer offload, async I/O for
NVMe offload, pinned memory), into torch's extensions folder (``TORCH_EXTENSIONS_DIR``); on 2 CPU cores
the three take ~9 CPU-minutes. Building them with the install keeps that out of the first run (and out of
the test suite's time: ``.ci/run`` calls this). An op already built is loaded from the cache in a second.

    python -m training.build_ops
"""

from __future__ import annotations

import time

OPS = ("CPUAdamBuilder", "AsyncIOBuilder", "PinMemoryBuilder")


def build_ops(names: tuple[str, ...] = OPS, log=print) -> dict[str, str]:
    """Build (or load from the cache) each op of ``names`` this accelerator has and can compile; returns
    ``{name: "built" | "not available here" | "incompatible: <why>"}``."""
    from deepspeed.accelerator import get_accelerator

    acc = get_accelerator()
    done = {}
    for name in names:
        builder = acc.create_op_builder(name)
        if builder is None:
            done[name] = "not available here"
        elif not builder.is_compatible(verbose=False):
            why = getattr(builder, "error_log", None) or ["see DeepSpeed's ds_report"]
            done[name] = "incompatible: " + "; ".join(why)
        else:
            t0 = time.time()
            builder.load(verbose=False)
            done[name] = "built"
            log(f"[build_ops] {name} ({builder.absolute_name()}) ready in {time.time() - t0:.0f} s")
            continue
        log(f"[build_ops] {name}: {done[name]}")
    return done


if __name__ == "__main__":
    build_ops()
