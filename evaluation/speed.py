"""The speed table (PDM Table 4): wall time per image of progressive decoding at several T, and of the
autoregressive baseline (one token per step, KV cache), on the same prompts and device.

Each row records the number of SEQUENTIAL decoder passes per image, counted (not assumed) with a hook on
the model's final LayerNorm, which runs once per pass (progressive: T, classifier-free guidance included
since both branches share one batched forward; autoregressive: L), and the wall time per image at batch 1
and batched (``batch_size`` prompts at once). Speed-ups are ratios of batch-1 times.

As in the paper's Table 4, a row can also carry the quality of the same model at that T: ``quality(method,
model, cfg, generate_kwargs)`` (given to :func:`speed_table`) samples the evaluation prompts with the row's
sampler settings (:func:`sample_batches`) and scores them (the evaluate stage: FID, CIDEr, attribute match, CLIP score);
its dict is stored as ``row["quality"]`` and printed beside the paper's FID and CIDEr.

    rows = speed_table(pdm, ar, text, mask, sample_cfg, steps=[8, 16, 64], batch_size=16, quality=score)
    lines = speed_markdown(rows, L=64)
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from typing import Optional

import numpy as np
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


def time_generate(
    model,
    text: torch.Tensor,
    mask: torch.Tensor,
    cfg,
    *,
    batch_size: int,
    n_single: int,
    warmup: int = 1,
    seed: int = 0,
    **generate_kwargs,
) -> dict:
    """Passes per image and seconds per image at batch 1 (``n_single`` prompts, one at a time) and batched
    (one batch of ``batch_size`` prompts, cycled from ``text``). ``generate_kwargs`` go to ``generate``
    (e.g. ``order=Learned(policy, model)``)."""
    from training.model.sampling import generate
    from training.model.seeded_random import sampling_generator

    device = text.device
    n = text.shape[0]
    rows = torch.arange(batch_size, device=device) % n
    big_t, big_m = text[rows], mask[rows]
    cfg1, cfgb = replace(cfg, batch_size=1), replace(cfg, batch_size=batch_size)

    def run(t, m, c):  # with sample.rng: per_prompt the timing includes a draw per prompt
        g = sampling_generator(c.rng, seed, range(t.shape[0]), device)
        return generate(model, t, m, c, generator=g, **generate_kwargs)

    for i in range(warmup):
        run(text[i % n : i % n + 1], mask[i % n : i % n + 1], cfg1)
        run(big_t, big_m, cfgb)
    with count_passes(model) as passes:
        _sync(device)
        t0 = time.perf_counter()
        for i in range(n_single):
            run(text[i % n : i % n + 1], mask[i % n : i % n + 1], cfg1)
        _sync(device)
        single = (time.perf_counter() - t0) / n_single
        per_image_passes = passes[0] / n_single
    with count_passes(model) as passes_b:
        _sync(device)
        t0 = time.perf_counter()
        run(big_t, big_m, cfgb)
        _sync(device)
        batched = (time.perf_counter() - t0) / batch_size
    return {
        "sequential_passes": per_image_passes,
        "batched_passes": passes_b[0],
        "seconds_per_image": single,
        "seconds_per_image_batched": batched,
        "batch_size": batch_size,
    }


Quality = Callable[[str, torch.nn.Module, object, dict], Optional[dict]]  # method, model, cfg, generate kwargs


def sample_batches(
    model,
    decode: Callable[[torch.Tensor], np.ndarray],
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    cfg,
    seed: int,
    **generate_kwargs,
) -> Iterator[np.ndarray]:
    """``uint8 [B, H, W, 3]`` per ``(text states, mask)`` batch: ``generate`` with ``cfg`` (and
    ``generate_kwargs``) and one generator seeded with ``seed`` (on the text's device) for the whole
    sequence, token maps decoded with ``decode`` (ids [B, L] -> uint8 [B, H, W, 3])."""
    from training.model.sampling import generate

    g = None
    for text, mask in batches:
        g = g or torch.Generator(device=text.device).manual_seed(seed)
        with torch.no_grad():
            yield decode(generate(model, text, mask, cfg, generator=g, **generate_kwargs).tokens)


def speed_table(
    pdm,
    ar,
    text: torch.Tensor,
    mask: torch.Tensor,
    sample_cfg,
    steps: Sequence[int],
    batch_size: int,
    n_single: int = 4,
    warmup: int = 1,
    notes: Optional[dict] = None,
    quality: Optional[Quality] = None,
    order=None,
) -> list[dict]:
    """One row per progressive T in ``speed_steps(L, steps)``, then the autoregressive row (when ``ar``).

    ``sample_cfg`` (a SampleConfig) gives the other sampler settings (guidance, order, temperature...);
    candidates, cluster sampling and step recording are switched off. ``notes`` per method
    ("progressive" / "autoregressive") are copied into the rows (e.g. a randomly initialised baseline).
    ``quality(method, model, row_cfg, generate_kwargs)``, when given, is stored as ``row["quality"]`` unless
    it returns None.
    ``order`` (e.g. ``Learned(policy, pdm)`` for ``sample.order: learned``) picks the progressive rows'
    positions; the autoregressive row then runs in raster order."""
    notes = notes or {}
    base = replace(sample_cfg, record_steps=False, n_candidates=1, cluster_sampling=False)
    device = str(text.device)
    rows = []
    L = pdm.seq_len
    runs = [("progressive", pdm, T) for T in speed_steps(L, steps)] + (
        [("autoregressive", ar, L)] if ar is not None else []
    )
    for method, model, T in runs:
        progressive = method == "progressive"
        cfg = replace(
            base, sampler=method, steps=T, order=base.order if progressive or base.order != "learned" else "raster"
        )
        kwargs = {"order": order} if progressive and order is not None else {}
        r = time_generate(
            model,
            text,
            mask,
            cfg,
            batch_size=batch_size,
            n_single=n_single,
            warmup=warmup,
            seed=sample_cfg.seed,
            **kwargs,
        )
        row = {
            "method": method,
            "steps": T,
            "tokens_per_step": L // T,
            **r,
            "device": device,
            "note": notes.get(method, ""),
        }
        q = quality(method, model, cfg, kwargs) if quality else None
        if q is not None:
            row["quality"] = q
        rows.append(row)
    return rows


def paper_steps(T: int, L: int) -> Optional[int]:
    """The paper's T with the same tokens-per-step fraction of L (its L is 1024), or None."""
    return T * PAPER_L // L if (T * PAPER_L) % L == 0 else None


def _f(v, digits=3) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


QUALITY_COLUMNS = (
    ("fid", "FID (↓)", 1.0, 2),
    ("clean_fid", "clean-FID (↓)", 1.0, 2),
    ("cider", "CIDEr (↑)", 100.0, 1),
    ("attribute_match", "attribute match (↑)", 1.0, 3),
    ("clip_score", "CLIP-S (↑)", 100.0, 2),
)  # key, header, scale (x100 like Tables 2 and 4), digits


def speed_markdown(rows: list[dict], L: Optional[int] = None, device_name: Optional[str] = None) -> list[str]:
    """The report section: our quality (when measured) and timings beside the paper's Table 4 (matched by
    the fraction of L per step). ``L`` defaults to the rows' ``steps x tokens_per_step``."""
    if not rows:
        return []
    L = L or max(r["steps"] * r.get("tokens_per_step", 1) for r in rows)
    full = next((r for r in rows if r.get("method", "progressive") == "progressive" and r["steps"] == L), None)
    ar = next((r for r in rows if r.get("method") == "autoregressive"), None)
    qcols = [c for c in QUALITY_COLUMNS if any(c[0] in r.get("quality", {}) for r in rows)]
    header = (
        ["method", "T (steps)"]
        + [c[1] for c in qcols]
        + (["N (quality)"] if qcols else [])
        + [
            "tokens / step",
            "sequential passes",
            "s / image (batch 1)",
            "s / image (batch B)",
            "B",
            f"speed-up vs T={L}",
            "speed-up vs AR",
            "paper T",
            "paper FID",
            "paper CIDEr",
            "paper speed-up vs T=1024",
        ]
    )
    lines = [
        "## Speed: effect of iterative steps (Table 4)",
        "",
        f"Measured on: {device_name or rows[0].get('device', '?')}; L = {L} image tokens. Paper: one V100, "
        f"L = {PAPER_L}, speed-up against T = 1024 (one token per step). A row is set beside the paper's row "
        f"with the same fraction of L per step (paper T = T x {PAPER_L} / L). Speed-ups here are ratios of "
        "batch-1 times; sequential passes are counted decoder calls.",
        "",
    ]
    if qcols:
        lines += [
            "Quality: the first N evaluation prompts sampled by the same model with that T (the other sampler "
            "settings as for timing), scored like the samples (CIDEr and CLIP-S x100; FID on few images is "
            "biased upwards: compare rows, not with the paper).",
            "",
        ]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        method = r.get("method", "progressive")
        s = r["seconds_per_image"]
        vs_full = full["seconds_per_image"] / s if full and s else None
        vs_ar = ar["seconds_per_image"] / s if ar and s else None
        pt = paper_steps(r["steps"], L) if method == "progressive" else None
        paper = PAPER_SPEED.get(pt, (None, None, None))
        q = r.get("quality", {})
        quality = [_f(None if q.get(k) is None else scale * q[k], d) for k, _, scale, d in qcols]
        quality += [str(q["num_images"]) if "num_images" in q else "–"] if qcols else []
        lines.append(
            "| "
            + " | ".join(
                [method + (" (KV cache)" if method == "autoregressive" else ""), str(r["steps"])]
                + quality
                + [
                    str(r.get("tokens_per_step", L // r["steps"])),
                    f"{r['sequential_passes']:g}",
                    _f(s, 4),
                    _f(r.get("seconds_per_image_batched"), 4),
                    str(r.get("batch_size", "–")),
                    _f(vs_full, 1) + ("×" if vs_full else ""),
                    _f(vs_ar, 1) + ("×" if vs_ar else ""),
                    str(pt) if paper[0] is not None else "–",
                    _f(paper[0], 2),
                    _f(paper[1], 1),
                    _f(paper[2], 1) + ("×" if paper[2] else ""),
                ]
            )
            + " |"
        )
    notes = sorted({f"{r.get('method', 'progressive')}: {r['note']}" for r in rows if r.get("note")})
    return lines + [""] + [f"Note: {n}" for n in notes] + ([""] if notes else [])
