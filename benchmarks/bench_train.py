"""Training-step benchmark (plain script): every figure and ratio is measured in this run.

1. MFU: model FLOPs of one training step (fwd+bwd, counted by torch's FlopCounterMode) / step time,
   over the machine's GEMM peak of the same precision measured here (best square matmul). Goal >= 70% on
   the CPU; on a GPU the figure is reported.
2. Engine overhead: our DeepSpeed step (``DeepSpeedEngine``, 1 rank, each ZeRO stage of --zero) / a
   bare PyTorch fwd + bwd + clip + AdamW step of the same model, batch and loss. Goal <= 1.10. Also
   counted (torch profiler, immune to load): the elements each step copies and its aten ops. With one
   rank ZeRO-2/3 add copies of the gradients and weights into and out of their flat fp32 partitions
   (3-4 x the parameters per step, whatever the batch); ``build_ds_config`` turns DeepSpeed's
   contiguous gradient buffer off on CPU ranks, which saved 2 more copies per parameter and ~1,700
   ops per step (ZeRO-2).
3. Loader headroom: ``ShardLoader`` samples/s over token shards of this model's shape / the samples/s
   the training step consumes. Goal >= 20.

    .venv/bin/python benchmarks/bench_train.py --preset small --batch 8 --reps 3 [--threads 2]
    python benchmarks/bench_train.py --device cuda --precision bf16 --preset pdm-paper-appendix --batch 8

On a GPU (``--device cuda``) the peak is the best square matmul of ``--precision`` (bf16: the chip's bf16
tensor-core peak, measured here rather than taken from a data sheet), every time is synchronized wall time
(``torch.cuda.synchronize`` before and after), and the CPU-time clock is not used. The steps run the same
code as the trainer on a GPU: autocast for the bare step, DeepSpeed's bf16 and torch's fused AdamW for the
engine. ``--profile N`` adds each variant's N ops of most CPU time in one step under torch.profiler.
Threads: 1 by default. On a shared machine (this one runs other jobs: load ~10 on 2 cores) a 2-thread
parallel region stalls whenever either thread is preempted, so 2-thread timings measure the scheduler;
the peak and the step always use the same thread count, so the ratio is fair either way. On an idle
machine pass --threads <cores>.
Text states are random [B, S, text_dim] tensors (the frozen encoder runs outside the trained step).
Timings are minima over --reps, measured alternately so load changes hit every variant. Two clocks:
wall time, and this process's CPU time (``time.process_time``: what its threads actually ran, immune
to preemption by the other jobs of a shared machine; spin-waiting still counts). The goals are judged
on CPU time, the peak and the steps measured the same way; wall-time figures are printed beside them.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training.engine import DeepSpeedEngine, init_distributed, param_groups  # noqa: E402
from training.host_allocator import host_allocator  # noqa: E402
from training.model import build_model  # noqa: E402
from training.model.config import model_config  # noqa: E402
from training.model.train_module import StepSettings, TrainModule  # noqa: E402
from training.train_config import TrainConfig  # noqa: E402

CPU_SIZES, GPU_SIZES = (1024, 2048, 3072), (4096, 8192)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def gemm_peak(reps: int, sizes=CPU_SIZES, dtype=torch.float32, device=torch.device("cpu")) -> tuple[float, float, int]:
    """Best matmul FLOP/s of ``dtype`` over square sizes (2 n^3 FLOPs each): (by wall time, by CPU time, n)."""
    best_w = best_c = 0.0
    best_n = 0
    for n in sizes:
        a, b = torch.randn(n, n, dtype=dtype, device=device), torch.randn(n, n, dtype=dtype, device=device)
        a @ b
        for _ in range(reps):
            w, c = timed(torch.matmul, a, b, device=device)
            best_c = max(best_c, 2 * n**3 / c)
            if 2 * n**3 / w > best_w:
                best_w, best_n = 2 * n**3 / w, n
    return best_w, best_c, best_n


def make_batch(cfg, B: int, S: int = 32, seed: int = 0, device="cpu") -> dict:
    """A random batch, drawn on the CPU (the same values on every device), then moved to ``device``."""
    g = torch.Generator().manual_seed(seed)
    L = cfg.grid_h * cfg.grid_w
    batch = {
        "tokens": torch.randint(0, cfg.codebook_size, (B, L), generator=g),
        "qerr": torch.rand(B, L, generator=g),
        "seeds": torch.arange(B) + seed * 1000,
        "text": torch.randn(B, S, cfg.text_dim, generator=g),
        "text_mask": torch.ones(B, S, dtype=torch.bool),
    }
    return {k: v.to(device) for k, v in batch.items()}


def step_flops(module: TrainModule, batch: dict) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc:
        loss, _ = module(batch)
        loss.backward()
    module.zero_grad(set_to_none=True)
    return fc.get_total_flops()


class BareStep:
    """The reference: plain fwd, bwd, clip, AdamW on the same TrainModule (no engine code); bf16 through
    autocast (fp32 weights and optimizer), fused AdamW on a GPU."""

    def __init__(self, module: TrainModule, t: TrainConfig, device=torch.device("cpu")):
        self.module, self.t, self.device = module, t, device
        fused = True if device.type == "cuda" else None
        groups = param_groups(module, t.weight_decay)
        self.opt = torch.optim.AdamW(groups, lr=t.lr, betas=tuple(t.betas), fused=fused)

    def __call__(self, batch: dict) -> None:
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.t.precision == "bf16"):
            loss, _ = self.module(batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.module.parameters(), self.t.grad_clip)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)


COPIES = {"aten::copy_", "aten::_to_copy", "aten::clone", "aten::cat"}


def copy_count(fn, *args) -> tuple[int, int]:
    """(elements copied, top-level aten ops) in one call of ``fn``: the work an engine adds to a step,
    counted (torch profiler) rather than timed, so load on the machine does not change it."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        fn(*args)
    copied = ops = 0
    for e in prof.events():
        parent = e.cpu_parent
        if e.name.startswith("aten::") and (parent is None or not parent.name.startswith("aten::")):
            ops += 1
        while parent is not None and parent.name not in COPIES:
            parent = parent.cpu_parent
        if e.name in COPIES and parent is None and e.input_shapes and e.input_shapes[0]:
            copied += math.prod(e.input_shapes[0])
    return copied, ops


def page_faults(fn, *args) -> int:
    """Minor page faults of this process in one call of ``fn`` (counted by the kernel, immune to load): fresh
    zeroed pages for memory that the allocator gave back and took again (``cluster.host_allocator``)."""
    import resource

    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    fn(*args)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


def timed(fn, *args, device=torch.device("cpu")) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process / threads): the CPU figure is 'seconds the step
    would take if its threads were never preempted'. On a GPU both are the synchronized wall time."""
    sync(device)
    w0, c0 = time.perf_counter(), time.process_time()
    fn(*args)
    sync(device)
    wall = time.perf_counter() - w0
    if device.type == "cuda":
        return wall, wall
    return wall, (time.process_time() - c0) / torch.get_num_threads()


def loader_rate(cfg, n_samples: int, workers: int, batch: int) -> float:
    from tokenization.shards import write_token_shard
    from training.data import LoaderSpec, ShardLoader

    L = cfg.grid_h * cfg.grid_w
    tmp = Path(tempfile.mkdtemp(prefix="bench_train_"))
    try:
        rng = np.random.default_rng(0)
        per = 256
        shards = []
        for s in range(max(1, n_samples // per)):
            samples = [
                {
                    "key": f"k{s}_{i}",
                    "tokens": rng.integers(0, cfg.codebook_size, L),
                    "qerr": rng.random(L),
                    "text_ids": rng.integers(0, 32000, int(rng.integers(8, 40))),
                    "txt": "x",
                }
                for i in range(per)
            ]
            p = tmp / f"{s:05d}.tar"
            write_token_shard(p, samples)
            shards.append(str(p))
        spec = LoaderSpec(shards, L, cfg.codebook_size, micro_batch=batch, num_workers=workers, shuffle_buffer=1000)
        it = iter(ShardLoader(spec))
        next(it)
        n_batches = n_samples // batch
        t0 = time.perf_counter()
        for _ in range(n_batches):
            next(it)
        return n_batches * batch / (time.perf_counter() - t0)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="small")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--zero", type=int, nargs="+", default=[0, 2, 3], help="ZeRO stages of the DeepSpeed steps (1 rank)")
    p.add_argument("--threads", type=int, default=1, help="torch threads for the peak and the steps")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where the peak and the steps run")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32", help="of the peak matmul and the steps")
    p.add_argument(
        "--peak-sizes",
        type=int,
        nargs="+",
        default=None,
        help=f"square matmul sizes of the GEMM peak (default {CPU_SIZES} on CPU, {GPU_SIZES} on CUDA; a CPU without "
        "native bf16 runs a 3072 bf16 matmul in over a minute)",
    )
    p.add_argument(
        "--profile",
        type=int,
        default=0,
        metavar="N",
        help="after the timings: the N ops of most self CPU time in one step of each variant (torch.profiler; on "
        "a GPU also its kernels' time, to tell launch-bound from GPU-bound)",
    )
    p.add_argument("--loader-samples", type=int, default=2048)
    p.add_argument("--loader-workers", type=int, default=1)
    p.add_argument(
        "--host-allocator",
        choices=["keep", "system"],
        default="keep",
        help="for the whole process, bare step included: keep (what the trainer's cluster.host_allocator: auto "
        "does on a CPU rank without offload) or system (glibc's default)",
    )
    return p


def profile_step(name: str, fn, *a, device: torch.device, rows: int) -> None:
    """One step of ``fn`` under torch.profiler: its ops of most self CPU time, and on a GPU the kernels' total
    time against the step's CPU time (kernels well under the CPU time: the step waits on its launches)."""
    from torch.profiler import ProfilerActivity, profile

    gpu = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if gpu else [])
    sync(device)
    with profile(activities=activities) as prof:
        fn(*a)
        sync(device)
    events = prof.key_averages()
    cpu_us = sum(e.self_cpu_time_total for e in events)
    kernels = f", GPU kernels {sum(e.self_device_time_total for e in events) / 1e3:.1f} ms" if gpu else ""
    print(f"--- profile: {name}: {sum(e.count for e in events)} op calls, CPU {cpu_us / 1e3:.1f} ms{kernels} ---")
    print(events.table(sort_by="self_cpu_time_total", row_limit=rows, max_name_column_width=48))


def main(argv=None) -> None:
    args = parser().parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA device")
    if args.device == "cpu":  # DeepSpeed's engines too where a GPU is visible (it picks its accelerator at import)
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    with host_allocator(args.host_allocator) as applied:
        run(args, applied)


def run(args, allocator_applied: bool) -> None:
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32
    cfg = model_config(args.preset, dropout=0.0)
    t = TrainConfig(batch_size=args.batch, stages=16, p_error=0.3, precision=args.precision)
    settings = StepSettings.from_config(t)
    batch = make_batch(cfg, args.batch, device=device)
    where = (
        f"GPU {torch.cuda.get_device_name(device)}"
        if gpu
        else f"torch threads {torch.get_num_threads()}; cpu count {os.cpu_count()}"
    )
    print(
        f"preset {args.preset}: L={cfg.grid_h * cfg.grid_w} dim={cfg.dim} layers={cfg.layers} K={cfg.codebook_size}; "
        f"batch {args.batch}; {args.precision}; {where}; "
        f"load average {os.getloadavg()[0]:.1f}; host allocator {args.host_allocator}"
        + ("" if allocator_applied or args.host_allocator == "system" else " (not glibc: not applied)")
    )

    sizes = tuple(args.peak_sizes) if args.peak_sizes else GPU_SIZES if gpu else CPU_SIZES
    peak_args = dict(sizes=sizes, dtype=dtype, device=device)
    peak_w, peak_c, n = gemm_peak(args.reps, **peak_args)
    torch.manual_seed(0)
    bare_mod = TrainModule(build_model(cfg, "progressive"), settings).to(device)
    flops = step_flops(bare_mod, batch)
    n_params = sum(p.numel() for p in bare_mod.parameters())
    bare = BareStep(bare_mod, t, device)

    init_distributed(log=lambda m: None)
    engines = {}
    for z in args.zero:
        torch.manual_seed(0)
        tz = TrainConfig(**{**t.__dict__, "zero_stage": z})
        engines[z] = DeepSpeedEngine(TrainModule(build_model(cfg, "progressive"), settings), tz, log=print)
        if engines[z].device.type != device.type:  # DeepSpeed names its device with an index: cuda:0
            raise SystemExit(f"DeepSpeed put the model on {engines[z].device}, the benchmark runs on {device}")

    def ds_step(eng, b):
        # text states in the engine's compute dtype, as the trainer's text encoder hands them over (a bf16
        # DeepSpeed engine holds bf16 weights)
        eng.forward_backward({**b, "text": b["text"].to(eng.compute_dtype)})
        eng.step()

    bare(batch)
    for eng in engines.values():
        ds_step(eng, batch)  # warm-up (allocations, first-step setup)
    work = {"bare": copy_count(bare, batch)} | {z: copy_count(ds_step, eng, batch) for z, eng in engines.items()}
    faults = {"bare": page_faults(bare, batch)} | {z: page_faults(ds_step, eng, batch) for z, eng in engines.items()}
    tb, td = [], {z: [] for z in engines}
    for _ in range(args.reps):  # alternate, so load changes hit every variant
        tb.append(timed(bare, batch, device=device))
        for z, eng in engines.items():
            td[z].append(timed(ds_step, eng, batch, device=device))
    peak_w2, peak_c2, _ = gemm_peak(args.reps, **peak_args)  # re-measured after the steps: keep the best
    peak = {"wall": max(peak_w, peak_w2), "cpu": max(peak_c, peak_c2)}
    k = {"wall": 0, "cpu": 1}
    bare_t = {c: min(x[k[c]] for x in tb) for c in k}
    ds_t = {z: {c: min(x[k[c]] for x in v) for c in k} for z, v in td.items()}
    consumed = args.batch / max(v["wall"] for v in ds_t.values())
    rate = loader_rate(cfg, args.loader_samples, args.loader_workers, args.batch)
    goal_clock = "wall" if gpu else "cpu"  # on a GPU both clocks hold the synchronized wall time

    def row(name, t):
        if gpu:
            return f"{name:<24} wall {t['wall'] * 1e3:8.1f} ms  MFU {flops / t['wall'] / peak['wall']:6.1%}"
        return (
            f"{name:<24} cpu {t['cpu']:7.2f} s  MFU {flops / t['cpu'] / peak['cpu']:6.1%} | "
            f"wall {t['wall']:7.2f} s  MFU {flops / t['wall'] / peak['wall']:6.1%}"
        )

    if gpu:
        print(
            f"{args.precision} GEMM peak           {peak['wall'] / 1e12:6.1f} TFLOP/s (best square matmul, n={n}, "
            "synchronized wall time)"
        )
    else:
        print(
            f"{args.precision} GEMM peak           cpu {peak['cpu'] / 1e9:6.1f} GFLOP/s | wall "
            f"{peak['wall'] / 1e9:6.1f} GFLOP/s (best square matmul, n={n}, {torch.get_num_threads()} thread(s))"
        )
    print(f"model                    {n_params / 1e6:.2f} M params; step {flops / 1e9:.1f} GFLOP (fwd+bwd, counted)")
    print(row("bare PyTorch step", bare_t))
    for z, v in ds_t.items():
        ratio = (
            f" | / bare: {v['wall'] / bare_t['wall']:.3f}"
            if gpu
            else (f" | / bare: cpu {v['cpu'] / bare_t['cpu']:.3f}, wall {v['wall'] / bare_t['wall']:.3f}")
        )
        print(row(f"DeepSpeed ZeRO-{z} step", v) + ratio)
    if gpu:
        print(f"GPU memory at most {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB (all variants)")
    print("work per step (counted): elements copied (copy_, to, clone, cat), top-level aten ops, minor page faults")
    for name, (copied, ops) in work.items():
        extra = copied - work["bare"][0]
        label = "bare PyTorch step" if name == "bare" else f"DeepSpeed ZeRO-{name} step"
        print(
            f"  {label:<24} {copied / 1e6:7.1f} M copied ({extra / n_params:+.1f} x the parameters over bare), "
            f"{ops} ops ({ops - work['bare'][1]:+d}), {faults[name]} page faults"
        )
    print(
        f"loader                   {rate:8.0f} samples/s ({args.loader_workers} worker(s), wall); the slowest "
        f"step consumes {consumed:.2f} samples/s (wall)"
    )
    print(f"ratios (goal; {'synchronized wall time' if gpu else 'CPU time'}):")
    for z, v in ds_t.items():
        mfu = flops / v[goal_clock] / peak[goal_clock]
        goal = "(reported)" if gpu else f"(>= 70%)  {'ok' if mfu >= 0.7 else 'BELOW GOAL'}"  # the goal is the CPU's
        print(f"  MFU, DeepSpeed ZeRO-{z} step        {mfu:6.1%}   {goal}")
    for z, v in ds_t.items():
        r = v[goal_clock] / bare_t[goal_clock]
        print(f"  DeepSpeed ZeRO-{z} step / bare step  {r:6.3f}   (<= 1.10) {'ok' if r <= 1.1 else 'ABOVE GOAL'}")
    print(
        f"  loader / step consumption (wall)   {rate / consumed:6.0f}x  (>= 20)   "
        f"{'ok' if rate / consumed >= 20 else 'BELOW GOAL'}"
    )
    if args.profile:
        profile_step("bare PyTorch step", bare, batch, device=device, rows=args.profile)
        for z, eng in engines.items():
            profile_step(f"DeepSpeed ZeRO-{z} step", ds_step, eng, batch, device=device, rows=args.profile)


if __name__ == "__main__":
    main()
