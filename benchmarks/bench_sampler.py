"""Sampler overhead benchmark (plain script): prints one table, all figures measured in this run.

Progressive: time of `progressive_sample` with T steps / (T x one PDM forward on the same batch). Goal <= 1.10,
i.e. the sampler's own bookkeeping (selection, sampling, scatter) < 10% of the model time. "in-run" divides the
same sampler run by the time spent inside the model during it (robust to load changes between measurements);
"bookkeep" measures the sampler alone, driven by a stand-in model that returns precomputed outputs.
Autoregressive: `autoregressive_sample` with the KV cache (L calls of one token) / one full forward of L
tokens, and the speed-up over decoding without a cache (L full forwards, estimated as L x forward).

    .venv/bin/python benchmarks/bench_sampler.py --preset small --batch 1 16 --steps 4 16 64
    .venv/bin/python benchmarks/bench_sampler.py --threads 1 --batch 16 --steps 16 --rng per_chunk per_prompt --no-ar
Timings are the minimum over --reps runs (the machine is shared; the minimum is the least disturbed).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training.model.ar_model import ARModel  # noqa: E402
from training.model.config import model_config  # noqa: E402
from training.model.pdm import PDM, PDMOutput  # noqa: E402
from training.model.sampling import SampleConfig, autoregressive_sample, progressive_sample  # noqa: E402
from training.model.seeded_random import sampling_generator  # noqa: E402


def _once(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def best_time(fn, reps: int) -> float:
    """Minimum wall time of fn() over reps runs (after one warm-up run)."""
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


class Timed(torch.nn.Module):
    """Wraps a model and adds up the wall time spent inside its forward (CPU: calls are synchronous)."""

    def __init__(self, model):
        super().__init__()
        self.model, self.seconds = model, 0.0
        self.seq_len, self.mask_id, self.codebook_size, self.grid = (
            model.seq_len,
            model.mask_id,
            model.codebook_size,
            model.grid,
        )

    def forward(self, *args, **kw):
        t0 = time.perf_counter()
        out = self.model(*args, **kw)
        self.seconds += time.perf_counter() - t0
        return out


def timed_sample(model, run, forward, T: int, reps: int) -> tuple[float, float, float]:
    """Fastest of reps sampler runs (after a warm-up): (total, time inside the model, T x one forward).
    The reference forward is timed right after each run (min(T, 4) calls, scaled to T), so that both see the
    same machine load."""
    run(model)
    k = min(T, 4)
    best = (float("inf"), 0.0)
    ref = float("inf")
    for _ in range(reps):
        timed = Timed(model)
        t0 = time.perf_counter()
        run(timed)
        best = min(best, (time.perf_counter() - t0, timed.seconds))
        t0 = time.perf_counter()
        for _ in range(k):
            forward()
        ref = min(ref, (time.perf_counter() - t0) * T / k)
    return best[0], best[1], ref


class Replay(torch.nn.Module):
    """Stand-in PDM returning precomputed outputs: isolates the sampler's own work."""

    def __init__(self, model: PDM, out: PDMOutput):
        super().__init__()
        self.seq_len, self.mask_id, self.codebook_size, self.grid = (
            model.seq_len,
            model.mask_id,
            model.codebook_size,
            model.grid,
        )
        self.out = out

    def forward(self, tokens, text, text_mask, drop_text=None, attn_bias_text=0.0):
        return self.out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="small")
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--steps", type=int, nargs="+", default=[4, 16, 64], help="T values (uniform schedule)")
    ap.add_argument("--max-steps-big-batch", type=int, default=16, help="skip T above this for batches > 1 (CPU time)")
    ap.add_argument("--guidance", type=float, default=1.0, help="guidance scale (!= 1: 2B rows per forward)")
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--text-len", type=int, default=16)
    ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: leave as is)")
    ap.add_argument("--no-ar", action="store_true", help="skip the autoregressive rows")
    ap.add_argument(
        "--rng",
        nargs="+",
        default=["per_chunk"],
        choices=["per_chunk", "per_prompt"],
        help="sample.rng of the progressive rows (per_prompt: a generator per prompt, a draw per prompt)",
    )
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    mcfg = model_config(args.preset)
    pdm = PDM(mcfg).eval()
    ar = None if args.no_ar else ARModel(mcfg).eval()
    L = mcfg.seq_len
    print(
        f"preset={args.preset} L={L} K={mcfg.codebook_size} dim={mcfg.dim} layers={mcfg.layers} "
        f"threads={torch.get_num_threads()} guidance={args.guidance} reps={args.reps}"
    )
    head = (
        f"{'sampler':<24}{'batch':>6}{'sample s':>10}{'reference s':>13}{'ratio':>7}{'in-run':>8}{'bookkeep':>10}  note"
    )
    print(head + "\n" + "-" * len(head), flush=True)

    def row(name, B, s, ref, inrun, book, note):
        f = lambda x: "" if x is None else f"{x:.3f}"  # noqa: E731
        print(f"{name:<24}{B:>6}{s:>10.3f}{ref:>13.3f}{s / ref:>7.3f}{f(inrun):>8}{f(book):>10}  {note}", flush=True)

    for B in args.batch:
        text = torch.randn(B, args.text_len, mcfg.text_dim)
        tmask = torch.ones(B, args.text_len, dtype=torch.bool)
        rows_b = 2 * B if args.guidance != 1.0 else B
        tokens = torch.randint(0, mcfg.codebook_size, (rows_b, L))
        tokens[:, ::2] = pdm.mask_id
        ftext, fmask = text.repeat(rows_b // B, 1, 1), tmask.repeat(rows_b // B, 1)
        forward = torch.no_grad()(lambda: pdm(tokens, ftext, fmask))
        replay = Replay(pdm, forward())
        for T in args.steps:
            if L % T or (B > 1 and T > args.max_steps_big_batch):
                continue
            for rng in args.rng:
                cfg = SampleConfig(steps=T, guidance_scale=args.guidance, top_k=100, revise=True, rng=rng)
                run = lambda m: progressive_sample(m, text, tmask, cfg, sampling_generator(rng, 0, range(B), "cpu"))  # noqa
                samp, inside, ref = timed_sample(pdm, run, forward, T, args.reps)
                book = best_time(lambda: run(replay), max(args.reps, 3))
                row(
                    f"progressive T={T}" + (" per_prompt" if rng == "per_prompt" else ""),
                    B,
                    samp,
                    ref,
                    samp / inside,
                    book / ref,
                    f"forward {ref / T:.3f}s alone, {inside / T:.3f}s inside the run",
                )
        if ar is not None:
            ar_tokens = torch.randint(0, mcfg.codebook_size, (B, L))
            cfg = SampleConfig(sampler="autoregressive", top_k=100, record_steps=False)
            ar_run = lambda: autoregressive_sample(ar, text, tmask, cfg, torch.Generator().manual_seed(0))  # noqa
            ar_full = torch.no_grad()(lambda: ar(ar_tokens, text, tmask))
            ar_full()
            samp, full = float("inf"), float("inf")
            for _ in range(max(1, args.reps - 1)):  # alternate: both timings see the same load
                samp = min(samp, _once(ar_run))
                full = min(full, _once(ar_full))
            row(
                "autoregressive KV cache",
                B,
                samp,
                full,
                None,
                None,
                f"{L * full / samp:.1f}x faster than no cache (L full forwards)",
            )
    print(
        "reference: T x one PDM forward on the same batch (progressive) | one full AR forward of L tokens\n"
        "ratio = sample / reference; in-run = sample / time inside the model in that same run (robust to\n"
        "load changes between measurements); bookkeep = sampler-only time (replayed model outputs) / reference"
    )


if __name__ == "__main__":
    main()
