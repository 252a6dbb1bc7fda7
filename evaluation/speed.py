"""The speed table (PDM Table 4): wall time per image of progressive decoding at several T, and of the
autoregressive baseline (one token per step, KV cache), on the same prompts and device.

Each row records the number of SEQUENTIAL decoder passes per image, counted (not assumed) with a hook on
the model's final LayerNorm, which runs once per pass (progressive: T, classifier-free guidance included
since both branches share one batched forward; autoregressive: L), and the wall time per image at batch 1
and batched (``batch_size`` prompts at once). Speed-ups are ratios of batch-1 times.

    rows = speed_table(pdm, ar, text, mask, sample_cfg, steps=[8, 16, 64], batch_size=16)
    lines = speed_markdown(rows, L=64)
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import replace
from typing import Iterator, Optional, Sequence

import torch

from evaluation.report import PAPER_SPEED

PAPER_L = 1024  # 32x32 tokens, PDM appendix A


def speed_steps(L: int, wanted: Sequence[int]) -> list[int]:
    """The T values to time: ``wanted`` plus L, keeping only divisors of L (T <= L), ascending."""
    return sorted({int(t) for t in list(wanted) + [L] if 1 <= t <= L and L % t == 0})


@contextmanager
def count_passes(model: torch.nn.Module) -> Iterator[list]:
    """Counts sequential decoder passes: calls of ``model.ln_f`` (once per PDM forward / AR step)."""
    box = [0]

    def hook(*_):
        box[0] += 1

    handle = model.ln_f.register_forward_hook(hook)
    try:
        yield box
    finally:
        handle.remove()


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def time_generate(model, text: torch.Tensor, mask: torch.Tensor, cfg, *, batch_size: int, n_single: int,
                  warmup: int = 1, seed: int = 0) -> dict:
    """Passes per image and seconds per image at batch 1 (``n_single`` prompts, one at a time) and batched
    (one batch of ``batch_size`` prompts, cycled from ``text``)."""
    from training.sampling import generate

    device = text.device
    n = text.shape[0]
    rows = torch.arange(batch_size, device=device) % n
    big_t, big_m = text[rows], mask[rows]
    cfg1, cfgb = replace(cfg, batch_size=1), replace(cfg, batch_size=batch_size)

    def run(t, m, c):
        g = torch.Generator(device=device).manual_seed(seed)
        return generate(model, t, m, c, generator=g)

    for i in range(warmup):
        run(text[i % n:i % n + 1], mask[i % n:i % n + 1], cfg1)
        run(big_t, big_m, cfgb)
    with count_passes(model) as passes:
        _sync(device)
        t0 = time.perf_counter()
        for i in range(n_single):
            run(text[i % n:i % n + 1], mask[i % n:i % n + 1], cfg1)
        _sync(device)
        single = (time.perf_counter() - t0) / n_single
        per_image_passes = passes[0] / n_single
    with count_passes(model) as passes_b:
        _sync(device)
        t0 = time.perf_counter()
        run(big_t, big_m, cfgb)
        _sync(device)
        batched = (time.perf_counter() - t0) / batch_size
    return {"sequential_passes": per_image_passes, "batched_passes": passes_b[0],
            "seconds_per_image": single, "seconds_per_image_batched": batched, "batch_size": batch_size}


def speed_table(pdm, ar, text: torch.Tensor, mask: torch.Tensor, sample_cfg, steps: Sequence[int],
                batch_size: int, n_single: int = 4, warmup: int = 1, notes: Optional[dict] = None) -> list[dict]:
    """One row per progressive T in ``speed_steps(L, steps)``, then the autoregressive row (when ``ar``).

    ``sample_cfg`` (a SampleConfig) gives the other sampler settings (guidance, order, temperature...);
    candidates, cluster sampling and step recording are switched off. ``notes`` per method
    ("progressive" / "autoregressive") are copied into the rows (e.g. a randomly initialised baseline)."""
    notes = notes or {}
    base = replace(sample_cfg, record_steps=False, n_candidates=1, cluster_sampling=False)
    device = str(text.device)
    rows = []
    L = pdm.seq_len
    for T in speed_steps(L, steps):
        cfg = replace(base, sampler="progressive", steps=T)
        r = time_generate(pdm, text, mask, cfg, batch_size=batch_size, n_single=n_single, warmup=warmup,
                          seed=sample_cfg.seed)
        rows.append({"method": "progressive", "steps": T, "tokens_per_step": L // T, **r, "device": device,
                     "note": notes.get("progressive", "")})
    if ar is not None:
        cfg = replace(base, sampler="autoregressive", steps=L)
        r = time_generate(ar, text, mask, cfg, batch_size=batch_size, n_single=n_single, warmup=warmup,
                          seed=sample_cfg.seed)
        rows.append({"method": "autoregressive", "steps": L, "tokens_per_step": 1, **r, "device": device,
                     "note": notes.get("autoregressive", "")})
    return rows


def paper_steps(T: int, L: int) -> Optional[int]:
    """The paper's T with the same tokens-per-step fraction of L (its L is 1024), or None."""
    return T * PAPER_L // L if (T * PAPER_L) % L == 0 else None


def _f(v, digits=3) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def speed_markdown(rows: list[dict], L: int, device_name: Optional[str] = None) -> list[str]:
    """The report section: our timings beside the paper's Table 4 (matched by T)."""
    if not rows:
        return []
    full = next((r for r in rows if r["method"] == "progressive" and r["steps"] == L), None)
    ar = next((r for r in rows if r["method"] == "autoregressive"), None)
    header = ["method", "T (steps)", "tokens / step", "sequential passes", "s / image (batch 1)",
              "s / image (batch B)", "B", f"speed-up vs T={L}", "speed-up vs AR",
              "paper T", "paper FID", "paper CIDEr", "paper speed-up vs T=1024"]
    lines = ["## Speed: effect of iterative steps (Table 4)", "",
             f"Measured on: {device_name or rows[0].get('device', '?')}; L = {L} image tokens. Paper: one V100, "
             f"L = {PAPER_L}, speed-up against T = 1024 (one token per step). A row is set beside the paper's row "
             f"with the same fraction of L per step (paper T = T x {PAPER_L} / L). Speed-ups here are ratios of "
             "batch-1 times; sequential passes are counted decoder calls.", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        s = r["seconds_per_image"]
        vs_full = full["seconds_per_image"] / s if full and s else None
        vs_ar = ar["seconds_per_image"] / s if ar and s else None
        pt = paper_steps(r["steps"], L) if r["method"] == "progressive" else None
        paper = PAPER_SPEED.get(pt, (None, None, None))
        method = r["method"] + (" (KV cache)" if r["method"] == "autoregressive" else "")
        lines.append("| " + " | ".join([
            method, str(r["steps"]), str(r["tokens_per_step"]), f"{r['sequential_passes']:g}", _f(s, 4),
            _f(r["seconds_per_image_batched"], 4), str(r["batch_size"]),
            _f(vs_full, 1) + ("×" if vs_full else ""), _f(vs_ar, 1) + ("×" if vs_ar else ""),
            str(pt) if paper[0] is not None else "–", _f(paper[0], 2), _f(paper[1], 1),
            _f(paper[2], 1) + ("×" if paper[2] else "")]) + " |")
    notes = sorted({f"{r['method']}: {r['note']}" for r in rows if r.get("note")})
    return lines + [""] + [f"Note: {n}" for n in notes] + ([""] if notes else [])
