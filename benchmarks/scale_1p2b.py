"""pdm-1.2b at scale: parameter counts, DeepSpeed ZeRO-2/3 memory estimates, one real ZeRO-3 step here.

    .venv/bin/python benchmarks/scale_1p2b.py [--budget-frac 0.5] [--layers N] [--skip-run]

1. Builds ``pdm-1.2b`` on the meta device (no memory): parameter counts by part.
2. DeepSpeed's own estimators (``estimate_zero2/3_model_states_mem_needs_all_cold``; the ``_all_live``
   variants read ``p.data_ptr()``, which is 0 for every meta tensor, so the counts are passed in) for
   nodes of 8 x 80 GB GPUs.
3. One real ZeRO-3 training step (fp32, AdamW, activation checkpointing, micro-batch 1, 1024 tokens)
   with 2 CPU ranks on this machine through the ``deepspeed`` launcher (gloo on 127.0.0.1), the model
   built under ``deepspeed.zero.Init`` (partitioned as it is created). The depth is the largest that
   fits ``--budget-frac`` of the RAM available at start (other jobs share this machine); a watchdog
   kills the run if free memory falls under 1.5 GiB. NVMe offload needs DeepSpeed's async_io op
   (libaio), which this machine lacks; CPU offload moves nothing off a CPU-only machine's RAM.
   Reported: step time, peak RSS per rank, measured bytes/param vs DeepSpeed's estimate.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training.model.config import model_config  # noqa: E402

GiB = 1024**3


def meta_counts(cfg) -> tuple[int, int, dict]:
    """(total params, largest single-module params, params by part) of PDM(cfg) built on meta."""
    from training.model.pdm import PDM

    with torch.device("meta"):
        m = PDM(cfg)
    seen, total, largest, parts = set(), 0, 0, {}
    for name, p in m.named_parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        part = name.split(".")[0]
        parts[part] = parts.get(part, 0) + p.numel()
    for mod in m.modules():
        largest = max(largest, sum(p.numel() for p in mod.parameters(recurse=False)))
    return total, largest, parts


def ds_estimates(total: int, largest: int, gpus: int, nodes: int) -> str:
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs_all_cold
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs_all_cold

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        estimate_zero2_model_states_mem_needs_all_cold(total, num_gpus_per_node=gpus, num_nodes=nodes)
        estimate_zero3_model_states_mem_needs_all_cold(total, largest, num_gpus_per_node=gpus, num_nodes=nodes)
    return buf.getvalue()


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


# ------------------------------------------------------------------ one rank (under the launcher)
def worker(args) -> None:
    import deepspeed

    from benchmarks.bench_train import make_batch
    from training.engine import DeepSpeedEngine, build_ds_config, init_distributed
    from training.model.train_module import StepSettings, TrainModule
    from training.train_config import TrainConfig

    rank, world, _ = init_distributed()
    cfg = model_config("pdm-1.2b", layers=args.layers, dropout=0.0, cond_dropout=0.0)
    t = TrainConfig(
        batch_size=world,
        zero_stage=3,
        precision="fp32",
        activation_checkpointing=True,
        stages=16,
        p_error=0.3,
        steps=10,
    )
    rss0 = rss_bytes()
    t0 = time.perf_counter()
    with deepspeed.zero.Init(config_dict_or_path=build_ds_config(t, world, "fp32")):
        from training.model.pdm import PDM

        model = PDM(cfg)  # partitioned as built (its GPT-2 re-init sees empty shards: irrelevant here)
    eng = DeepSpeedEngine(TrainModule(model, StepSettings.from_config(t)), t, log=lambda m: None)
    t_init = time.perf_counter() - t0
    rss_init = rss_bytes()
    batch = make_batch(cfg, 1, S=32, seed=rank)
    t1 = time.perf_counter()
    metrics = eng.forward_backward(batch)
    info = eng.step()
    t_step = time.perf_counter() - t1
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    params = sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters())
    out = {
        "rank": rank,
        "world": world,
        "layers": args.layers,
        "params": params,
        "init_s": t_init,
        "step_s": t_step,
        "rss_before_model": rss0,
        "rss_after_init": rss_init,
        "rss_after_step": rss_bytes(),
        "peak_rss": peak,
        "grad_norm": info["grad_norm"],
        "loss": float(metrics["loss"]),
    }
    Path(args.out).with_name(f"rank{rank}.json").write_text(json.dumps(out))


# ------------------------------------------------------------------ the driver
BYTES_PER_PARAM = 44  # measured here (peak RSS, both ranks, fp32 ZeRO-3, torch AdamW on CPU); see the report
RUNTIME = int(0.6 * GiB)  # per rank: torch + DeepSpeed after import


def footprint(params: int, bytes_per_param: float) -> int:
    return int(bytes_per_param * params) + 2 * RUNTIME


def pick_layers(per_layer: int, fixed: int, budget: int, max_layers: int, bytes_per_param: float) -> int:
    """Largest depth whose measured-rate footprint fits ``budget``."""
    for n in range(max_layers, 0, -1):
        if footprint(fixed + n * per_layer, bytes_per_param) <= budget:
            return n
    return 0


def run_ranks(layers: int, work: Path) -> tuple[list[dict], float, int]:
    from cluster import deepspeed_launch as dl
    from cluster.config import ClusterConfig
    from training.engine import free_port

    c = ClusterConfig(launcher="deepspeed", procs_per_node=2, master_port=free_port())
    cmd = [
        dl.deepspeed_executable(),
        "--num_nodes",
        "1",
        "--num_gpus",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(c.master_port),
        "--module",
        "benchmarks.scale_1p2b",
        "--worker",
        "--layers",
        str(layers),
        "--out",
        str(work / "out.json"),
    ]
    env = dl.launch_env(c)
    t0 = time.time()
    log = open(work / "launcher.log", "w")
    proc = subprocess.Popen(
        cmd, env=env, cwd=dl.PROJECT_ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    import psutil

    min_avail = psutil.virtual_memory().available
    while proc.poll() is None:
        avail = psutil.virtual_memory().available
        min_avail = min(min_avail, avail)
        if avail < 1.5 * GiB:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise MemoryError(f"free memory fell to {avail / GiB:.1f} GiB: run killed to protect the machine")
        time.sleep(0.5)
    if proc.returncode != 0:
        raise RuntimeError(f"ranks failed ({proc.returncode}); see {work / 'launcher.log'}")
    return [json.loads((work / f"rank{r}.json").read_text()) for r in range(2)], time.time() - t0, min_avail


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--out", default=None, help=argparse.SUPPRESS)
    p.add_argument("--layers", type=int, default=None, help="depth of the real step (default: largest that fits)")
    p.add_argument("--budget-frac", type=float, default=0.5, help="share of the available RAM the run may use")
    p.add_argument(
        "--bytes-per-param",
        type=float,
        default=BYTES_PER_PARAM,
        help="peak host bytes per parameter assumed when picking the depth",
    )
    p.add_argument("--skip-run", action="store_true")
    args = p.parse_args()
    if args.worker:
        return worker(args)

    cfg = model_config("pdm-1.2b")
    total, largest, parts = meta_counts(cfg)
    one, _, _ = meta_counts(model_config("pdm-1.2b", layers=1))
    two, _, _ = meta_counts(model_config("pdm-1.2b", layers=2))
    per_layer, fixed = two - one, one - (two - one)
    print(
        f"pdm-1.2b: {cfg.layers} layers, dim {cfg.dim}, ffn {cfg.ffn_dim}, heads {cfg.heads}, K {cfg.codebook_size}, "
        f"L {cfg.seq_len}, text_dim {cfg.text_dim}"
    )
    print(
        f"trainable parameters {total:,} ({total / 1e9:.3f} B); per decoder layer {per_layer:,}; "
        f"outside the layers {fixed:,}; largest module {largest:,}"
    )
    print("  by part: " + ", ".join(f"{k} {v / 1e6:.1f}M" for k, v in sorted(parts.items(), key=lambda kv: -kv[1])))
    for nodes in (1, 2):
        print(f"\n--- DeepSpeed estimates, {nodes} node(s) x 8 GPUs (80 GB each) ---")
        print(ds_estimates(total, largest, 8, nodes).rstrip())
    per_gpu = {"ZeRO-2": 2 * total + 18 * total / 8, "ZeRO-3": 4 * largest + 18 * total / 8}
    print(
        "\nper-GPU model states without offload, 1 node x 8: "
        + ", ".join(
            f"{k} {v / GiB:.1f} GiB ({'fits' if v < 80e9 * 0.9 else 'does not fit'} 80 GB)" for k, v in per_gpu.items()
        )
    )
    if args.skip_run:
        return

    import psutil

    avail = psutil.virtual_memory().available
    budget = int(args.budget_frac * avail)
    need_full = footprint(total, args.bytes_per_param)
    print(f"\n--- one real ZeRO-3 step here: 2 CPU ranks, fp32, micro-batch 1 x {cfg.seq_len} tokens ---")
    print(
        f"RAM: total {psutil.virtual_memory().total / GiB:.1f} GiB, available {avail / GiB:.1f} GiB, budget "
        f"{budget / GiB:.1f} GiB ({args.budget_frac:.0%}); full pdm-1.2b needs ~{need_full / GiB:.1f} GiB "
        f"(at {args.bytes_per_param:.0f} B/param peak, measured here; model states alone: 16 B/param in fp32)"
    )
    layers = args.layers or pick_layers(per_layer, fixed, budget, cfg.layers, args.bytes_per_param)
    if layers >= cfg.layers:
        print("full depth fits the budget: running pdm-1.2b itself")
    else:
        print(
            f"pdm-1.2b does NOT fit ({need_full / GiB:.1f} GiB > {budget / GiB:.1f} GiB; NVMe offload unavailable: "
            f"no libaio for DeepSpeed's async_io). Running the largest depth that fits: {layers} layers"
        )
    if layers < 1:
        return
    work = Path(os.environ.get("TMPDIR", "/tmp")) / f"scale_1p2b_{os.getpid()}"
    work.mkdir(parents=True, exist_ok=True)
    ranks, wall, min_avail = run_ranks(layers, work)
    params = ranks[0]["params"]
    states = [r["peak_rss"] - r["rss_before_model"] for r in ranks]
    measured = sum(states) / params
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs

    _, gpu_no_offload, _ = estimate_zero3_model_states_mem_needs(
        params, 0, num_gpus_per_node=2, num_nodes=1, cpu_offload=False, zero_init=True, additional_buffer_factor=1.0
    )
    est = 2 * gpu_no_offload / params
    print(
        f"depth {layers}: {params:,} params ({params / 1e9:.3f} B); launcher wall {wall:.0f} s; "
        f"lowest free RAM during the run {min_avail / GiB:.1f} GiB"
    )
    for r, s in zip(ranks, states):
        print(
            f"  rank {r['rank']}: build+initialize {r['init_s']:.1f} s, one step (fwd+bwd+AdamW) {r['step_s']:.1f} s, "
            f"loss {r['loss']:.3f}, grad norm {r['grad_norm']:.3g}"
        )
        print(
            f"          RSS GiB: after imports {r['rss_before_model'] / GiB:.2f}, after initialize "
            f"{r['rss_after_init'] / GiB:.2f}, after the step {r['rss_after_step'] / GiB:.2f}, peak "
            f"{r['peak_rss'] / GiB:.2f} (+{s / GiB:.2f} over the imports)"
        )
    after = sum(r["rss_after_step"] - r["rss_before_model"] for r in ranks) / params
    init = sum(r["rss_after_init"] - r["rss_before_model"] for r in ranks) / params
    print(
        f"measured bytes/param over both ranks (RSS above the imports): after initialize {init:.1f}, after the step "
        f"{after:.1f}, peak {measured:.1f}"
    )
    print(
        f"DeepSpeed ZeRO-3 estimate (no offload, zero.Init, buffer factor 1): {est:.1f} B/param of model states "
        f"(fp16 params + fp32 master/grad/Adam); fp32 training: param 4 + fp32 master copy 4 + grad 4 + Adam 8 = 20 "
        f"B/param in the ZeRO-3 optimizer; the rest of the peak is transient (torch AdamW temporaries over the flat "
        f"partition, gathered layers up to stage3_max_live_parameters, reduce/prefetch buckets, allocator)"
    )
    print(f"extrapolated to the full {total / 1e9:.3f} B: ~{measured * total / GiB:.1f} GiB over 2 ranks")
    shutil_rm(work)


def shutil_rm(p: Path) -> None:
    import shutil

    shutil.rmtree(p, ignore_errors=True)


if __name__ == "__main__":
    main()
