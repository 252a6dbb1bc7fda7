"""DeepSpeed ZeRO offload settings (CPU or NVMe) that bound host memory; used by ``engine.build_ds_config``.

What each setting holds in host RAM per rank (DeepSpeed 0.19, ZeRO-3):

* ``offload_param`` (nvme): ``buffer_count`` swap buffers of ``buffer_size`` elements (model dtype, locked
  memory), each holding one parameter's partition while it is read or written; ``buffer_size`` must fit the
  largest partition (``ceil(largest_param / world_size)``). ``max_in_cpu``: partitions kept in RAM instead
  (0: every partition above the persistence threshold lives on disk).
* ``offload_optimizer`` (nvme): the fp32 master weights and Adam moments live on disk and are read and
  written one ``sub_group_size`` block at a time, through ``buffer_count`` buffers of that block's size.
* both: a flat fp32 gradient partition (4 bytes per parameter / world size) stays in RAM between backward and
  the optimizer step: DeepSpeed's ``grad_partitions_flat_buffer``.

``benchmarks/scale_1p2b.py`` measures the result for ``pdm-1.2b`` (configs/pdm-1.2b-one-node-offload.yaml).
"""

from __future__ import annotations

import math
from typing import Any

import torch.nn as nn

PARAM_BUFFERS = 16  # parameter partitions in flight (a block's matrices + the next block's prefetch)
OPTIMIZER_BUFFERS = 4  # fp32 master, grad and the two Adam moments of one sub-group
NVME_SUB_GROUP = 2e7  # elements per optimizer block on NVMe (x 16 bytes in RAM while it is updated)
AIO = {
    "block_size": 1048576,
    "queue_depth": 8,
    "intra_op_parallelism": 1,
    "single_submit": False,
    "overlap_events": True,
}


def largest_param(module: nn.Module) -> int:
    """Elements of the largest parameter tensor (``ds_numel`` under ZeRO-3, where ``numel`` is 0)."""
    return max((getattr(p, "ds_numel", p.numel()) for p in module.parameters()), default=0)


def offload_settings(t: Any, world_size: int, device_type: str, biggest: int = 0) -> tuple[dict, dict]:
    """(``zero_optimization`` entries, top-level entries) for ``t.offload_optimizer`` / ``t.offload_params``.

    ``biggest``: elements of the model's largest parameter (``largest_param``), needed to size the NVMe
    parameter buffers; 0 keeps DeepSpeed's default buffer size (1e8 elements)."""
    pin = device_type == "cuda"  # locked pages only help host-to-GPU copies
    zero: dict = {}
    if t.offload_optimizer != "none":
        opt: dict = {"device": t.offload_optimizer, "pin_memory": pin}
        if t.offload_optimizer == "nvme":
            opt.update(nvme_path=t.nvme_path, buffer_count=OPTIMIZER_BUFFERS)
            zero["sub_group_size"] = int(NVME_SUB_GROUP)
        zero["offload_optimizer"] = opt
    if t.offload_params != "none":
        par: dict = {"device": t.offload_params, "pin_memory": pin}
        if t.offload_params == "nvme":
            par.update(nvme_path=t.nvme_path, buffer_count=PARAM_BUFFERS, max_in_cpu=0)
            if biggest:
                par["buffer_size"] = math.ceil(biggest / world_size)
            # Every gathered partition holds one swap buffer until it is released. DeepSpeed keeps a parameter
            # whose next use (activation checkpointing's recomputed forward) is within stage3_max_reuse_distance
            # (default 1e9 elements: the whole 1.2B model), which holds more partitions than there are buffers
            # from the second step on ("Not enough buffers 0 for swapping 1"): release each after its use.
            # Its NVMe prefetch can list one parameter twice (a block run again by activation checkpointing)
            # and fails: "param N already assigned swap buffer id M": no prefetch.
            zero.update(stage3_max_reuse_distance=0, stage3_prefetch_bucket_size=0)
        zero["offload_param"] = par
    top = {"aio": dict(AIO)} if "nvme" in (t.offload_optimizer, t.offload_params) else {}
    return zero, top
