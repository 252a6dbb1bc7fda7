"""Where a ZeRO-3 offload run's host memory goes: DeepSpeed's own buffers, read from a live engine, beside
DeepSpeed's estimator for the same settings (``benchmarks/scale_1p2b.py`` prints both)."""

from __future__ import annotations

import contextlib
import io
from typing import Any

GiB = 1024**3


def nbytes(t: Any) -> int:
    return t.numel() * t.element_size() if t is not None else 0


def ds_buffers(eng: Any) -> dict[str, int]:
    """Bytes of one rank's long-lived DeepSpeed buffers (0 where a setting has none)."""
    opt = eng.engine.optimizer
    params = list(eng.module.parameters())
    out = {"grad_partition": nbytes(getattr(opt, "grad_partitions_flat_buffer", None))}
    swapper = next((p.nvme_swapper for p in params if getattr(p, "nvme_swapper", None) is not None), None)
    out["param_swap_buffers"] = nbytes(getattr(swapper, "buffers", None))
    opt_swapper = getattr(opt, "optimizer_swapper", None)
    manager = getattr(opt_swapper, "swap_buffer_manager", None)
    out["optimizer_swap_buffers"] = sum(nbytes(b) for b in getattr(manager, "all_buffers", []))
    out["ipg_bucket"] = sum(nbytes(getattr(b, "buffer", None)) for b in getattr(opt, "ipg_buckets", {}).values())
    persist = [p for p in params if getattr(p, "ds_persist", False)]
    out["persistent_params"] = sum(p.ds_numel * p.element_size() for p in persist)
    in_ram = [
        p
        for p in params
        if not getattr(p, "ds_persist", False)
        and getattr(p, "ds_tensor", None) is not None
        and str(getattr(p.ds_tensor, "final_location", "")) != "OffloadDeviceEnum.nvme"
    ]
    out["partitions_in_ram"] = sum(nbytes(p.ds_tensor) for p in in_ram)
    fp32 = getattr(opt, "fp32_partitioned_groups_flat", [])
    out["fp32_master_in_ram"] = sum(nbytes(t) for t in fp32)
    return out


LABELS = {
    "grad_partition": "fp32 gradient partition (grad_partitions_flat_buffer)",
    "param_swap_buffers": "parameter swap buffers (offload_param buffer_count x buffer_size)",
    "optimizer_swap_buffers": "optimizer swap buffers (offload_optimizer buffer_count x sub_group_size)",
    "ipg_bucket": "gradient reduce bucket (reduce_bucket_size)",
    "persistent_params": "parameters kept whole on every rank (stage3_param_persistence_threshold)",
    "partitions_in_ram": "partitions too small for async I/O, kept in RAM",
    "fp32_master_in_ram": "fp32 master weights + Adam states in RAM (not swapped)",
}


def estimator(t: Any, total: int, largest: int, ranks: int) -> dict:
    """DeepSpeed's ZeRO-3 estimate for ``ranks`` CPU ranks on one node: its host ("CPU") figure plus its
    per-device figure times the ranks (a CPU rank's device memory is host RAM too). The estimator knows
    CPU offload only: NVMe offload is estimated as CPU offload (the states it puts in host RAM are the ones
    NVMe moves to disk)."""
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs

    offload_opt, offload_par = t.offload_optimizer != "none", t.offload_params != "none"
    with contextlib.redirect_stdout(io.StringIO()):
        cpu, dev, _ = estimate_zero3_model_states_mem_needs(
            total,
            largest,
            num_gpus_per_node=ranks,
            num_nodes=1,
            cpu_offload=offload_opt,
            cpu_offload_params=offload_par,
            zero_init=True,
            additional_buffer_factor=1.0,
        )
    ram = cpu + ranks * dev
    text = (
        f"{ram / GiB:.2f} GiB = {ram / total:.2f} B/param of host RAM (estimate_zero3_model_states_mem_needs: "
        f"offload optimizer {offload_opt}, params {offload_par}, zero_init, buffer factor 1: 'CPU' "
        f"{cpu / GiB:.2f} GiB + {ranks} x 'device' {dev / GiB:.2f} GiB; model states only)"
    )
    return {"ram": ram, "cpu": cpu, "device": dev, "text": text}


def breakdown_lines(ranks: list[dict], params: int, peak_sum: int, est: dict) -> list[str]:
    """The measured peak split into the imported runtimes, DeepSpeed's buffers and the rest."""
    lines = ["breakdown of the measured peak (all ranks; B/param):"]

    def row(label: str, b: float) -> str:
        return f"  {b / params:6.2f}  {b / GiB:6.2f} GiB  {label}"

    runtime = sum(r["rss_before_model"] for r in ranks)
    lines.append(row("torch + DeepSpeed after import (RSS before the model is built)", runtime))
    known = runtime
    for key, label in LABELS.items():
        b = sum(r["buffers"].get(key, 0) for r in ranks)
        if b:
            lines.append(row(label, b))
            known += b
    rest = "the rest: gathered layers, activations (checkpoints, one recomputed layer, logits), allocator"
    lines.append(row(rest, peak_sum - known))
    lines.append(
        f"DeepSpeed's estimate counts model states only ({est['ram'] / params:.2f} B/param): bf16 params 2 + fp32 "
        "master 4 + Adam 8 + fp32 grads 4 in host RAM when offloaded, plus 4 x the largest layer per rank; with NVMe "
        "the params, master and Adam states are on disk and only the buffers above stay in RAM"
    )
    return lines
