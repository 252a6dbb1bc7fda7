"""The ``evaluate`` stage's metrics that load the trained export: the speed table with its quality per T
(PDM Table 4, ``evaluation.speed``) and the held-out token NLL (``evaluation.token_nll``)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from core.files import atomic_path
from core.stage import StageContext, StageError
from evaluation.evaluate_inputs import Plan


def _encode(text_encoder, prompts: list[str], batch: int, device: str):
    """(text states, mask) per batch of ``prompts``."""
    import torch

    for i in range(0, len(prompts), batch):
        with torch.no_grad():
            ids, mask = text_encoder.tokenize(prompts[i : i + batch])
            yield text_encoder.encode(ids, mask).to(device), mask.to(device)  # the encoder's device may differ


def _save_pngs(images, folder: Path) -> list[Path]:
    """Write ``uint8 [H, W, 3]`` images (an iterable of batches) to ``folder/NNNNNNNN.png`` (emptied first)."""
    import shutil

    from PIL import Image

    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    paths = []
    for batch in images:
        for img in batch:
            path = folder / f"{len(paths):08d}.png"
            with atomic_path(path, fsync=False) as tmp:
                Image.fromarray(img).save(tmp, format="PNG")
            paths.append(path)
    return paths


def speed_quality(ctx: StageContext, plan: Plan, scorers, vq, text_encoder, device: str, skip: set):
    """The ``quality`` callable of ``speed_table``: the first ``eval.speed_quality_images`` prompts sampled
    with the row's settings, saved to ``OUT/speed/<method>_T<T>/`` and scored by ``scorers.quality``;
    None (not scored) for the methods in ``skip`` (random weights) or when nothing is measured."""
    from evaluation.sample_files import to_uint8
    from evaluation.speed import sample_batches

    ev, s = ctx.config.eval, ctx.config.sample
    n = len(plan.prompts) if ev.speed_quality_images is None else min(ev.speed_quality_images, len(plan.prompts))

    def quality(method: str, model, cfg, generate_kwargs: dict) -> Optional[dict]:
        if not n or method in skip or not scorers.available():
            return None
        batches = _encode(text_encoder, plan.prompts[:n], cfg.batch_size, device)
        images = sample_batches(model, lambda ids: to_uint8(vq.decode(ids)), batches, cfg, s.seed, **generate_kwargs)
        paths = _save_pngs(images, ctx.out_dir / "speed" / f"{method}_T{cfg.steps:05d}")
        q = scorers.quality(paths)
        ctx.log(f"[evaluate] speed table: {method} T={cfg.steps}: {q}")
        return q

    return quality


def run_speed(ctx: StageContext, plan: Plan, scorers, vq, text_encoder, device: str) -> list[dict]:
    """The Table 4 rows on the trained model (plus the AR baseline), with the quality per T."""
    import torch

    from evaluation.speed import speed_table
    from training.export_loader import load_exported_model
    from training.model import build_model

    cfg, ev = ctx.config, ctx.config.eval
    model, model_cfg, meta = load_exported_model(
        ctx.input_dir("train") / "export", tokenizer=vq, text_dim=text_encoder.dim, device=device, prefer_ema=ev.use_ema
    )
    notes = {}
    torch.manual_seed(cfg.seed)
    if meta["kind"] == "ar":
        ar, pdm = model, build_model(model_cfg, "pdm").to(device).eval()
        notes["progressive"] = (
            "randomly initialised PDM of the same size (the trained model is autoregressive): timing only"
        )
    else:
        pdm = model
        if ev.ar_export:
            ar, _, ar_meta = load_exported_model(
                ev.ar_export, tokenizer=vq, text_dim=text_encoder.dim, device=device, prefer_ema=ev.use_ema
            )
            if ar_meta["kind"] != "ar":
                raise StageError(f"eval.ar_export {ev.ar_export} holds a progressive model, not an autoregressive one")
        else:
            ar = build_model(model_cfg, "ar").to(device).eval()
            notes["autoregressive"] = (
                "randomly initialised AR model of the same size (no eval.ar_export): "
                "timing only, its images are meaningless"
            )
    bs = ev.speed_batch_size or cfg.sample.batch_size
    n = min(len(plan.prompts), max(bs, ev.speed_images))
    text, mask = next(_encode(text_encoder, plan.prompts[:n], n, device))
    ctx.log(f"[evaluate] speed table: T in {ev.speed_steps} + L={model_cfg.seq_len}, batch 1 and {bs}")
    order = None
    if cfg.sample.order == "learned":  # the trained position policy, as the sample stage uses it
        from training.export_loader import load_exported_policy
        from training.model.order_learner import Learned

        policy, _ = load_exported_policy(
            ctx.input_dir("train") / "export", model_cfg=model_cfg, model_meta=meta, device=device
        )
        order = Learned(policy, pdm)
    quality = speed_quality(ctx, plan, scorers, vq, text_encoder, device, skip=set(notes))
    return speed_table(
        pdm, ar, text, mask, cfg.sample, ev.speed_steps, bs, ev.speed_images, ev.speed_warmup, notes, quality, order
    )


VQ_DIFFUSION_NLL = (
    "held-out token NLL: not computed for a VQ-Diffusion model (train.mode vq_diffusion): its likelihood is a "
    "variational bound over its timesteps, not a factorisation of p(Y | X) that evaluation.token_nll reads"
)


def run_token_nll(ctx: StageContext, vq, device: str) -> dict:
    """The held-out token NLL of the trained model on the tokenize stage's eval split."""
    from evaluation.token_nll import eval_token_nll, read_token_shards
    from tokenization.text import load_text_encoder
    from training.export_loader import load_exported_model, load_exported_policy

    cfg = ctx.config
    split = (ctx.input_manifest("tokenize").get("splits") or {}).get("eval")
    if not split:
        raise StageError(
            "eval.metrics: token_nll reads the tokenize stage's eval split, which it did not write (the download "
            "stage has no eval split); remove token_nll or add an eval split"
        )
    export = ctx.input_dir("train") / "export"
    text = load_text_encoder(cfg.text_encoder, ctx.input_dir("text"))
    model, model_cfg, meta = load_exported_model(
        export, tokenizer=vq, text_dim=text.dim, device=device, prefer_ema=cfg.eval.use_ema
    )
    policy = None
    if meta["kind"] == "pdm" and cfg.train.order == "learned" and cfg.train.mode == "progressive":
        policy, _ = load_exported_policy(export, model_cfg=model_cfg, model_meta=meta, device=device)
    samples = read_token_shards(Path(split))
    res = eval_token_nll(model, meta["kind"], cfg.train, samples, text, device, policy)
    ctx.log(f"[evaluate] held-out token NLL {res['token_nll']:.4f} nats/token over {res['samples']} eval samples")
    return res
