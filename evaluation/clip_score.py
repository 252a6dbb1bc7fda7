"""CLIP score (Hessel et al., 2021): per image-prompt pair ``w * max(cos(E_img, E_txt), 0)``, w = 2.5.

``python -m evaluation.clip_score DIR PROMPTS.json --checkpoint FILE`` runs it alone.

The embeddings come from open_clip with a local checkpoint (:mod:`evaluation.clip_model`); images go
through the model's own eval preprocessing (resize shortest side, center crop, normalise). The result
is the mean over pairs (0 .. w); the report prints it x100 as is customary.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from evaluation.clip_model import ClipEncoder
from evaluation.images import Images, ImageSet, check_prompts, image_files


def clip_scores(image_emb: np.ndarray, text_emb: np.ndarray, weight: float = 2.5) -> np.ndarray:
    """Per-pair ``weight * max(cos, 0)`` for row-aligned embeddings (normalised here again)."""
    a = image_emb / np.linalg.norm(image_emb, axis=1, keepdims=True)
    b = text_emb / np.linalg.norm(text_emb, axis=1, keepdims=True)
    return weight * np.maximum(np.sum(a * b, axis=1), 0.0)


class ClipScoreEvaluator:
    """``evaluator(images, prompts)`` -> ``{"clip_score": mean, "per_sample": [...], "protocol": {...}}``."""

    name = "clip_score"

    def __init__(self, encoder: ClipEncoder, weight: float = 2.5, batch_size: int = 64):
        self.encoder, self.weight, self.batch_size = encoder, weight, batch_size

    def __call__(self, images: Images, prompts: Sequence[str] | None = None, refs=None) -> dict:
        imgs = ImageSet(images)  # checks before the model is loaded
        prompts = check_prompts(prompts, imgs.n)
        image_emb = np.concatenate([self.encoder.images(b) for b in imgs.batches(self.batch_size, "CLIP score")])
        scores = clip_scores(image_emb, self.encoder.texts(prompts), self.weight)
        return {
            "clip_score": float(scores.mean()),
            "per_sample": scores.tolist(),
            "num_images": imgs.n,
            "protocol": {**self.encoder.protocol, "formula": f"{self.weight} * max(cos, 0), mean over pairs"},
        }

    @classmethod
    def from_config(cls, cfg, device: str | None = None) -> ClipScoreEvaluator:
        encoder = ClipEncoder(cfg.clip_model, cfg.clip_checkpoint, device, cfg.clip_batch_size)
        return cls(encoder, cfg.clip_score_weight, cfg.clip_batch_size)


def main(argv: list[str] | None = None) -> dict:
    """``python -m evaluation.clip_score IMAGES_DIR PROMPTS.json --checkpoint FILE [--model ViT-B-32]``."""
    import argparse
    import json
    from pathlib import Path

    p = argparse.ArgumentParser(description="CLIP score of a folder of images (sorted by name) and prompts")
    p.add_argument("images"), p.add_argument("prompts", help='JSON list of strings or of {"prompt": str}')
    p.add_argument("--model", default="ViT-B-32"), p.add_argument("--checkpoint", required=True)
    a = p.parse_args(argv)
    items = json.loads(Path(a.prompts).read_text())
    prompts = [x["prompt"] if isinstance(x, dict) else x for x in items]
    files = image_files(a.images)
    out = ClipScoreEvaluator(ClipEncoder(a.model, a.checkpoint))(files, prompts)
    print(json.dumps({k: v for k, v in out.items() if k != "per_sample"}, indent=2))
    return out


if __name__ == "__main__":
    main()
