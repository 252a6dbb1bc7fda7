"""CogView2's super-resolution model trained on pairs of token grids of the same images, and loaded back.

    pairs = token_pairs(hi_images, downsample(hi_images, 32), hi_vq, lo_vq)   # low-res + high-res token grids
    summary = train_super_resolution(cfg.sr, pairs, captions, text_encoder, out_dir)
    model = load_sr_export(out_dir / "export")

A pair is one image at the high resolution tokenized by the high-resolution tokenizer, and the same image
box-downsampled to the generator's resolution tokenized by the generator's tokenizer (what the generator writes
at sampling time). The loop is one process on the plain engine of ``training.engine`` (AdamW, warmup + cosine,
clipping); batches and masks come from seeds of (train.seed, step), so a resumed run (from the latest complete
checkpoint, ``training.checkpoint``) repeats the uninterrupted one. The export is ``export/model.safetensors``
(kind ``super_resolution``) + ``export/config.yaml`` (the ``sr`` section).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from core.config import from_dict, to_dict, to_yaml
from training.checkpoint import (
    find_resume,
    load_checkpoint,
    publish_export,
    remove_checkpoints,
    save_checkpoint,
    step_of,
    tag_for,
)
from training.engine import LocalEngine
from training.model.seeded_random import generator_for, mix64
from training.model.super_resolution.config import SRModelConfig
from training.model.super_resolution.model import SRTransformer
from training.model.super_resolution.train_step import SRTrainModule
from training.superres_config import SuperResConfig

Log = Callable[[str], None]
KIND = "super_resolution"


@torch.no_grad()
def token_pairs(hi_images: np.ndarray, lo_images: np.ndarray, hi_vq, lo_vq, batch: int = 256) -> dict[str, np.ndarray]:
    """{"lo": int16 [N, L_lo], "hi": int16 [N, L_hi]}: the uint8 [N, H, W, 3] images tokenized by ``hi_vq`` and
    their low-resolution versions (the same images, downsampled) by ``lo_vq``."""
    from tokenization.vqgan.train import to_model_range

    def encode(vq, images):
        parts = [vq.encode(to_model_range(images[i : i + batch]))[0] for i in range(0, len(images), batch)]
        return torch.cat(parts).cpu().numpy().astype(np.int16)

    return {"lo": encode(lo_vq, lo_images), "hi": encode(hi_vq, hi_images)}


def _batch(pairs: dict, text: tuple, step: int, seed: int, size: int, encoder: Any, device) -> dict:
    """Batch ``step`` (drawn from seeds of (seed, step) only) with its text states."""
    g = generator_for(mix64(seed) ^ step)
    idx = torch.randint(0, len(pairs["hi"]), (size,), generator=g)
    ids, mask = text[0][idx].to(device), text[1][idx].to(device)
    with torch.no_grad():
        states = encoder.encode(ids, mask).detach().float()
    return {
        "lo": torch.from_numpy(pairs["lo"][idx.numpy()]).long().to(device),
        "hi": torch.from_numpy(pairs["hi"][idx.numpy()]).long().to(device),
        "text": states,
        "text_mask": mask,
        "seeds": torch.randint(0, 2**62, (size,), generator=g).to(device),
    }


def train_super_resolution(
    cfg: SuperResConfig,
    pairs: dict,
    captions: list[str],
    encoder: Any,
    out_dir: Path,
    log: Log = print,
    codebooks: Optional[tuple[torch.Tensor, torch.Tensor]] = None,
) -> dict:
    """Train (or resume) the SR model of ``cfg.model`` on ``pairs`` + ``captions`` for ``cfg.train.steps`` steps;
    writes ``out_dir/checkpoints`` and ``out_dir/export``; returns a summary (last metrics, timings).
    ``codebooks`` (the low- and high-resolution tokenizers' code vectors) start the code embeddings
    (``SRTransformer.init_from_codebooks``)."""
    t, out = cfg.train, Path(out_dir)
    ckpt_dir = out / "checkpoints"
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(t.seed)
    model = SRTransformer(cfg.model)
    if codebooks is not None:
        model.init_from_codebooks(*(c.detach().cpu() for c in codebooks), seed=t.seed)
    engine = LocalEngine(SRTrainModule(model, t.mask_ratios, t.direct_fraction), t, device=device, log=log)
    if isinstance(encoder, torch.nn.Module):
        encoder.to(device)
    text = encoder.tokenize(captions)
    start, tag = 0, find_resume(ckpt_dir, log)
    if tag is not None and step_of(tag) > t.steps:  # sr.train.steps lowered: those weights are not the shorter run's
        log(f"[superres] {ckpt_dir / tag} is past sr.train.steps ({t.steps}): training {t.steps} steps from scratch")
        remove_checkpoints(ckpt_dir)  # (the stage's record of what they were made from stays)
        tag = None
    if tag is not None:
        start = load_checkpoint(engine, ckpt_dir, tag)[0]
        log(f"[superres] resumed from {ckpt_dir / tag} at step {start}")
    meta = {"kind": KIND, "model_config": json.dumps(to_dict(cfg.model))}
    n_params = sum(p.numel() for p in model.parameters())
    log(f"[superres] SR model {n_params:,} params, {len(pairs['hi'])} pairs, steps {start}->{t.steps}")
    last: dict = {}
    t0 = time.time()
    for step in range(start + 1, t.steps + 1):
        metrics = engine.forward_backward(_batch(pairs, text, step, t.seed, t.batch_size, encoder, engine.device))
        info = engine.step()
        if step % t.log_every == 0 or step == t.steps:
            last = {"step": step, **{k: float(v) for k, v in {**metrics, **info}.items()}}
            log(f"[superres] step {step}: loss {last['loss']:.3f}, token_acc {last['token_acc']:.3f}")
        if step % t.checkpoint_every == 0 or step == t.steps:
            save_checkpoint(
                engine,
                ckpt_dir,
                step,
                client_state={"step": step},
                rank_state={},
                config_yaml=to_yaml(cfg),
                metadata=meta,
                keep_last=t.keep_last,
                log=log,
            )
    publish_export(ckpt_dir / tag_for(t.steps), out / "export")
    return {"steps": t.steps, "resumed_from": start, "seconds": round(time.time() - t0, 3), "last_metrics": last}


def load_sr_export(folder: str | Path, device: str | torch.device = "cpu") -> SRTransformer:
    """The SR model of an export folder (``model.safetensors`` + ``config.yaml``), in eval mode on ``device``."""
    import yaml

    from training.checkpoint import load_export

    folder = Path(folder)
    weights, config = folder / "model.safetensors", folder / "config.yaml"
    for path in (weights, config):
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: rerun the superres stage (`pt2i run CONFIG --stage superres`)")
    raw = yaml.safe_load(config.read_text()) or {}
    model = SRTransformer(from_dict(SRModelConfig, raw.get("model") or {}, source=str(config), path="model"))
    state, meta = load_export(weights)
    if meta.get("kind") != KIND:
        raise ValueError(f"{weights}: metadata kind is {meta.get('kind')!r}, expected {KIND!r}")
    model.load_state_dict(state, strict=True)
    return model.to(device).eval()
