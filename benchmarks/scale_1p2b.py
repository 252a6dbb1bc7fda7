"""pdm-1.2b at scale: real ZeRO-3 training steps of the full model on one machine (NVMe offload), memory per
parameter measured beside DeepSpeed's estimate; parameter counts and GPU estimates.

    python benchmarks/scale_1p2b.py [--config configs/pdm-1.2b-one-node-offload.yaml] [--steps 3]
                                    [--set model.layers=4 ...] [--skip-run] [--min-available-gib 10]

1. Builds the config's model on the meta device (no memory): parameter counts by part; DeepSpeed's
   estimators (``estimate_zero2/3_model_states_mem_needs_all_cold``: the ``_all_live`` variants read
   ``p.data_ptr()``, 0 for every meta tensor) for nodes of 8 x 80 GB GPUs.
2. ``--steps`` real training steps (forward, backward, optimizer) on one fixed batch (micro-batch 1 per rank,
   the config's 1024 image tokens + ``--text-len`` text states) with the config's ``train`` section: its
   ZeRO stage, offload, precision, activation checkpointing and its ``cluster.procs_per_node`` CPU ranks
   through the ``deepspeed`` launcher (gloo on 127.0.0.1). The model is built under ``deepspeed.zero.Init``
   (each parameter partitioned, and with NVMe offload written to disk, as it is created). The learning rate
   is the config's, held constant (no warmup) so that the steps move the weights.
   A watchdog samples the ranks' RSS, the NVMe folder's size and the free memory every 0.2 s and kills the
   ranks if free memory falls under ``--kill-below-gib``; the run does not start with less than
   ``--min-available-gib`` available. The NVMe folder (``train.nvme_path``/scale_<pid>) is deleted after.
3. Reported: loss per step, step time by phase, peak RSS of all ranks together (sampled) and of each rank
   (``ru_maxrss``), disk held by the NVMe files, bytes per parameter of each, DeepSpeed's estimate for the
   same settings, and a breakdown of the measured peak from DeepSpeed's own buffers.
``--set KEY=VALUE`` overrides the config like ``pt2i --set`` (e.g. ``model.layers=4`` for a scaled-down
model); ``--json PATH`` writes the figures.

``--device cuda``: the same steps on one GPU in this process, where the model states fit without ZeRO or offload
(AdamW with fp32 weights and moments: 16 bytes per parameter, ~19 GB): the trainer's single-device engine
(``LocalEngine``: bf16 autocast, fused AdamW) with the config's precision and activation checkpointing, micro-batch
``--batch`` (halved until it fits). Reported: loss per step, step time, peak GPU memory per parameter, and MFU:
model FLOPs of one step (counted by torch's FlopCounterMode at micro-batch 1, without the recomputed forward,
times the batch) over the bf16 matmul peak measured in the same run.

    python benchmarks/scale_1p2b.py --device cuda [--batch 8] [--steps 3]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

GiB = 1024**3
CONFIG = "configs/pdm-1.2b-one-node-offload.yaml"


def load(args):
    """(experiment config, train section for the benchmark): constant lr, no warmup, ``--steps`` steps."""
    from dataclasses import replace

    from pipeline.experiment import load_config

    cfg = load_config(ROOT / args.config if not Path(args.config).is_absolute() else args.config, args.set)
    t = replace(cfg.train, steps=args.steps, warmup_steps=0, schedule="constant", ema_decay=None)
    return cfg, t


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


def biggest_tensor(cfg) -> int:
    from training.ds_offload import largest_param
    from training.model.pdm import PDM

    with torch.device("meta"):
        return largest_param(PDM(cfg))


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
    from benchmarks.offload_breakdown import ds_buffers
    from training.engine import DeepSpeedEngine, build_ds_config, init_distributed
    from training.model.pdm import PDM
    from training.model.train_module import StepSettings, TrainModule

    cfg, t = load(args)
    t = type(t)(**{**t.__dict__, "nvme_path": args.nvme})
    torch.manual_seed(0)
    rank, world, _ = init_distributed()
    record: dict = {"rank": rank, "world": world, "rss_before_model": rss_bytes(), "steps": []}
    t0 = time.perf_counter()
    ds_cfg = build_ds_config(t, world, t.precision, "cpu", biggest_tensor(cfg.model))
    with deepspeed.zero.Init(config_dict_or_path=ds_cfg, enabled=t.zero_stage == 3):
        model = PDM(cfg.model)  # partitioned (and written to NVMe) as built
    eng = DeepSpeedEngine(TrainModule(model, StepSettings.from_config(t)), t, log=lambda m: None)
    record.update(init_s=time.perf_counter() - t0, rss_after_init=rss_bytes(), precision=eng.precision)
    record["params"] = sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters())
    batch = make_batch(cfg.model, 1, S=args.text_len, seed=rank)
    batch["text"] = batch["text"].to(eng.compute_dtype)
    for _ in range(args.steps):
        eng.engine.train()
        times = [time.perf_counter()]
        loss, _ = eng.engine(batch)  # DeepSpeedEngine.forward_backward, phase by phase
        times.append(time.perf_counter())
        eng.engine.backward(loss)
        times.append(time.perf_counter())
        eng.engine.step()
        times.append(time.perf_counter())
        record["steps"].append(
            {
                "loss": loss.item(),
                "forward_s": times[1] - times[0],
                "backward_s": times[2] - times[1],
                "optimizer_s": times[3] - times[2],
                "grad_norm": float(eng.engine.get_global_grad_norm() or float("nan")),
                "rss": rss_bytes(),
            }
        )
        if rank == 0:
            st = record["steps"][-1]
            print(f"step {len(record['steps'])}: loss {st['loss']:.4f}, {times[3] - times[0]:.0f} s", flush=True)
    record.update(peak_rss=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, buffers=ds_buffers(eng))
    Path(args.out).with_name(f"rank{rank}.json").write_text(json.dumps(record))


# ------------------------------------------------------------------ the driver
def rank_processes(launcher) -> list:
    import psutil

    out = []
    for p in launcher.children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if "--worker" in p.cmdline():
                out.append(p)
    return out


def folder_bytes(path: Path) -> int:
    """Disk blocks held by the files under ``path`` (sparse parts do not count)."""
    total = 0
    for dirpath, _, files in os.walk(path):
        for f in files:
            with contextlib.suppress(OSError):
                total += os.stat(os.path.join(dirpath, f)).st_blocks * 512
    return total


def run_ranks(args, procs: int, nvme: Path, work: Path) -> tuple[list[dict], dict]:
    """Launch the ranks and watch them: (per-rank records, {wall, peak_rss_sum, peak_disk, min_avail})."""
    import psutil

    from cluster import deepspeed_launch as dl
    from cluster.config import ClusterConfig
    from training.engine import free_port

    c = ClusterConfig(launcher="deepspeed", procs_per_node=procs, master_port=free_port())
    cmd = [dl.deepspeed_executable(), "--num_nodes", "1", "--num_gpus", str(procs), "--master_addr", "127.0.0.1"]
    cmd += ["--master_port", str(c.master_port), "--module", "benchmarks.scale_1p2b", "--worker"]
    cmd += ["--config", args.config, "--steps", str(args.steps), "--text-len", str(args.text_len)]
    cmd += ["--nvme", str(nvme), "--out", str(work / "out.json")] + [f"--set={s}" for s in args.set]
    t0 = time.time()
    with open(work / "launcher.log", "w") as log:
        proc = subprocess.Popen(
            cmd, env=dl.launch_env(c), cwd=dl.PROJECT_ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    launcher = psutil.Process(proc.pid)
    seen = {"peak_rss_sum": 0, "peak_disk": 0, "min_avail": psutil.virtual_memory().available}
    last_print = time.time()
    while proc.poll() is None:
        avail = psutil.virtual_memory().available
        rss = 0
        for p in rank_processes(launcher):
            with contextlib.suppress(psutil.Error):
                rss += p.memory_info().rss
        disk = folder_bytes(nvme)
        seen["peak_rss_sum"] = max(seen["peak_rss_sum"], rss)
        seen["peak_disk"] = max(seen["peak_disk"], disk)
        seen["min_avail"] = min(seen["min_avail"], avail)
        if avail < args.kill_below_gib * GiB:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise MemoryError(
                f"free memory fell to {avail / GiB:.1f} GiB (--kill-below-gib {args.kill_below_gib}): ranks killed "
                f"to protect the machine; see {work / 'launcher.log'}"
            )
        if time.time() - last_print > 60:
            print(f"  ... {time.time() - t0:.0f} s: ranks RSS {rss / GiB:.2f} GiB, NVMe files {disk / GiB:.2f} GiB")
            last_print = time.time()
        time.sleep(0.2)
    seen["wall"] = time.time() - t0
    if proc.returncode != 0:
        tail = (work / "launcher.log").read_text()[-4000:]
        raise RuntimeError(
            f"ranks failed ({proc.returncode}) after {seen['wall']:.0f} s (peak RSS of the ranks "
            f"{seen['peak_rss_sum'] / GiB:.2f} GiB, NVMe files {seen['peak_disk'] / GiB:.2f} GiB, lowest free RAM "
            f"{seen['min_avail'] / GiB:.1f} GiB); {work / 'launcher.log'} ends:\n{tail}"
        )
    return [json.loads((work / f"rank{r}.json").read_text()) for r in range(procs)], seen


def report_run(args, cfg, t, total: int, largest: int) -> dict:
    import psutil

    from benchmarks.offload_breakdown import breakdown_lines, estimator

    procs = cfg.cluster.procs_per_node
    avail = psutil.virtual_memory().available
    print(
        f"\n--- {args.steps} real training steps here: {procs} CPU ranks, ZeRO-{t.zero_stage}, {t.precision}, "
        f"offload optimizer {t.offload_optimizer} / params {t.offload_params}, activation checkpointing "
        f"{t.activation_checkpointing}, micro-batch 1 x ({cfg.model.seq_len} image tokens + {args.text_len} text) ---"
    )
    print(f"RAM: total {psutil.virtual_memory().total / GiB:.1f} GiB, available {avail / GiB:.1f} GiB")
    if avail < args.min_available_gib * GiB:
        raise SystemExit(
            f"only {avail / GiB:.1f} GiB available (< --min-available-gib {args.min_available_gib}): not starting"
        )
    base = Path(t.nvme_path or "runs/nvme")
    base = base if base.is_absolute() else ROOT / base
    nvme = base / f"scale_{os.getpid()}"
    work = Path(os.environ.get("TMPDIR", "/tmp")) / f"scale_1p2b_{os.getpid()}"
    work.mkdir(parents=True, exist_ok=True)
    nvme.mkdir(parents=True, exist_ok=True)
    try:
        ranks, seen = run_ranks(args, procs, nvme, work)
    finally:
        shutil.rmtree(nvme, ignore_errors=True)
    shutil.rmtree(work, ignore_errors=True)  # kept (and named in the error) only when the ranks failed
    params = ranks[0]["params"]
    losses = [sum(r["steps"][s]["loss"] for r in ranks) / len(ranks) for s in range(args.steps)]
    print(
        f"{params:,} parameters ({params / 1e9:.3f} B); launcher wall {seen['wall']:.0f} s; lowest free RAM "
        f"{seen['min_avail'] / GiB:.1f} GiB; build + initialize {ranks[0]['init_s']:.0f} s"
    )
    for s, loss in enumerate(losses):
        st = ranks[0]["steps"][s]
        print(
            f"  step {s + 1}: loss {loss:.4f} (mean of the ranks), grad norm {st['grad_norm']:.3g}; rank 0: forward "
            f"{st['forward_s']:.0f} s, backward {st['backward_s']:.0f} s, optimizer {st['optimizer_s']:.0f} s"
        )
    falls = all(b < a for a, b in zip(losses, losses[1:]))
    print(f"  loss falls at every step: {'yes' if falls else 'NO'}")
    est = estimator(t, total, largest, procs)
    peak_sum = seen["peak_rss_sum"]
    rank_peaks = sum(r["peak_rss"] for r in ranks)
    runtime = sum(r["rss_before_model"] for r in ranks)
    print(
        f"peak RSS of all ranks together (sampled every 0.2 s): {peak_sum / GiB:.2f} GiB = "
        f"{peak_sum / params:.2f} B/param ({(peak_sum - runtime) / params:.2f} B/param above the "
        f"{runtime / GiB:.2f} GiB of the imported runtimes); sum of each rank's own peak {rank_peaks / GiB:.2f} GiB "
        f"= {rank_peaks / params:.2f} B/param"
    )
    print(f"NVMe files at most {seen['peak_disk'] / GiB:.2f} GiB = {seen['peak_disk'] / params:.2f} B/param of disk")
    print(f"DeepSpeed's estimate for these settings: {est['text']}")
    for line in breakdown_lines(ranks, params, peak_sum, est):
        print("  " + line)
    return {
        "params": params,
        "losses": losses,
        "peak_rss_sum": peak_sum,
        "peak_rss_sum_per_param": peak_sum / params,
        "rank_peaks_per_param": rank_peaks / params,
        "disk_per_param": seen["peak_disk"] / params,
        "estimate_ram_per_param": est["ram"] / params,
        "wall_s": seen["wall"],
        "ranks": ranks,
    }


# ------------------------------------------------------------------ one GPU (--device cuda)
def single_device_steps(args, cfg, t, batch_size: int, dev: torch.device) -> dict:
    """``args.steps`` steps of the config's model at ``batch_size`` on one device, in this process (the GPU
    run's core; a test runs it on the CPU with a small model). On a GPU it raises OutOfMemoryError."""
    from dataclasses import replace

    from benchmarks.bench_train import make_batch, step_flops, sync
    from training.engine import LocalEngine
    from training.model.pdm import PDM
    from training.model.train_module import StepSettings, TrainModule

    t = replace(t, zero_stage=0, offload_optimizer="none", offload_params="none")
    torch.manual_seed(0)
    gpu = dev.type == "cuda"
    if gpu:
        torch.cuda.reset_peak_memory_stats(dev)
    t0 = time.perf_counter()
    with dev:
        model = PDM(cfg.model)
    module = TrainModule(model, StepSettings.from_config(t))
    params = sum(p.numel() for p in model.parameters())
    flops = step_flops(module, make_batch(cfg.model, 1, S=args.text_len, device=dev)) * batch_size
    eng = LocalEngine(module, t, device=str(dev), log=print)
    batch = make_batch(cfg.model, batch_size, S=args.text_len, device=dev)
    sync(dev)
    out = {"params": params, "batch": batch_size, "flops": flops, "init_s": time.perf_counter() - t0, "steps": []}
    out["precision"] = eng.precision
    for _ in range(args.steps):
        sync(dev)
        t0 = time.perf_counter()
        metrics = eng.forward_backward(batch)
        info = eng.step()
        sync(dev)
        out["steps"].append({"loss": float(metrics["loss"]), "s": time.perf_counter() - t0, **info})
        st = out["steps"][-1]
        print(
            f"step {len(out['steps'])}: loss {st['loss']:.4f}, grad norm {st['grad_norm']:.3g}, {st['s']:.2f} s",
            flush=True,
        )
    out["peak_allocated"] = torch.cuda.max_memory_allocated(dev) if gpu else None
    out["peak_reserved"] = torch.cuda.max_memory_reserved(dev) if gpu else None
    return out


def report_gpu(args, cfg, t) -> dict:
    from benchmarks.bench_train import GPU_SIZES, gemm_peak

    name = torch.cuda.get_device_name()
    total_mem = torch.cuda.get_device_properties(0).total_memory
    peak, _, n = gemm_peak(5, GPU_SIZES, torch.bfloat16, torch.device("cuda"))
    print(
        f"\n--- {args.steps} real training steps on one GPU: {name} ({total_mem / GiB:.0f} GiB), {t.precision}, "
        f"activation checkpointing {t.activation_checkpointing}, no ZeRO, no offload; measured bf16 matmul peak "
        f"{peak / 1e12:.0f} TFLOP/s (n={n}) ---"
    )
    batch = args.batch
    while True:
        try:
            out = single_device_steps(args, cfg, t, batch, torch.device("cuda"))
            break
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            if batch == 1:
                raise
            print(f"micro-batch {batch} does not fit: trying {batch // 2}")
            batch //= 2
    params, losses = out["params"], [s["loss"] for s in out["steps"]]
    best = min(s["s"] for s in out["steps"][1:] or out["steps"])
    mfu = out["flops"] / best / peak
    print(
        f"{params:,} parameters ({params / 1e9:.3f} B); micro-batch {batch} x ({cfg.model.seq_len} image tokens + "
        f"{args.text_len} text); build + first step setup {out['init_s']:.1f} s; engine precision {out['precision']}"
    )
    print(
        f"  step {out['flops'] / 1e12:.1f} TFLOP (model FLOPs, fwd+bwd, counted); fastest step {best:.3f} s "
        f"(first step excluded): {out['flops'] / best / 1e12:.0f} TFLOP/s = MFU {mfu:.1%} of the measured peak; "
        f"{batch / best:.1f} samples/s"
    )
    print(
        f"  peak GPU memory: allocated {out['peak_allocated'] / GiB:.1f} GiB = "
        f"{out['peak_allocated'] / params:.2f} B/param, reserved {out['peak_reserved'] / GiB:.1f} GiB"
    )
    falls = all(b < a for a, b in zip(losses, losses[1:]))
    print(f"  losses {', '.join(f'{x:.4f}' for x in losses)}; falls at every step: {'yes' if falls else 'NO'}")
    return {**out, "device": name, "peak_flops": peak, "mfu": mfu, "losses": losses}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--out", default=None, help=argparse.SUPPRESS)
    p.add_argument("--nvme", default=None, help=argparse.SUPPRESS)
    p.add_argument("--config", default=CONFIG, help="experiment config whose model, train and cluster sections run")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    p.add_argument("--steps", type=int, default=3, help="training steps on one fixed batch")
    p.add_argument("--text-len", type=int, default=128, help="text states per sample (T5 max_length: 128)")
    p.add_argument("--min-available-gib", type=float, default=10.0, help="do not start with less RAM available")
    p.add_argument("--kill-below-gib", type=float, default=1.5, help="kill the ranks if free RAM falls below")
    p.add_argument("--skip-run", action="store_true", help="counts and estimates only")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="cpu: the config's ranks; cuda: one GPU")
    p.add_argument("--batch", type=int, default=8, help="--device cuda: micro-batch (halved until it fits)")
    p.add_argument("--json", default=None, help="write the measured figures here")
    return p


def main(argv=None) -> None:
    args = parser().parse_args(argv)
    if args.worker:
        return worker(args)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA device")

    cfg, t = load(args)
    m = cfg.model
    total, largest, parts = meta_counts(m)
    print(
        f"{args.config}: {m.layers} layers, dim {m.dim}, ffn {m.ffn_dim}, heads {m.heads}, K {m.codebook_size}, "
        f"L {m.seq_len}, text_dim {m.text_dim}"
    )
    print(f"trainable parameters {total:,} ({total / 1e9:.3f} B); largest module {largest:,}")
    print("  by part: " + ", ".join(f"{k} {v / 1e6:.1f}M" for k, v in sorted(parts.items(), key=lambda kv: -kv[1])))
    for nodes in (1, 2):
        print(f"\n--- DeepSpeed estimates, {nodes} node(s) x 8 GPUs (80 GB each) ---")
        try:
            print(ds_estimates(total, largest, 8, nodes).rstrip())
        except ImportError as e:  # the one-GPU run needs no DeepSpeed
            print(f"not printed: {e}")
            break
    if args.skip_run:
        return
    out = report_gpu(args, cfg, t) if args.device == "cuda" else report_run(args, cfg, t, total, largest)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    if not all(b < a for a, b in zip(out["losses"], out["losses"][1:])):
        raise SystemExit("the loss did not fall at every step")


if __name__ == "__main__":
    main()
