"""Fréchet distance in the features of a network trained on the run's own images: the tokenizer's VQ
encoder (``tokenization.vqgan.VQModel.features``, before quantization), average-pooled to a 2x2 grid so
that where things are still counts, flattened (4 x embed_dim numbers per image).

At toy scale a random-weight Inception's FID does not rank models (its features do not see the synthetic
shapes); the VQ encoder was trained to reconstruct exactly these images, so its features do. The
distance compares runs that share a tokenizer only (each tokenizer has its own feature space). Images
are resized (bicubic) to the tokenizer's input size and scaled to [-1, 1], as the tokenize stage does.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from evaluation.frechet import GaussianStats, feature_stats, stats_distance
from evaluation.images import Images, ImageSet

POOL = 2


class VQFrechetEvaluator:
    """``evaluator(images)`` -> ``{"fd_vq", "num_images", "reference_images", "protocol"}``."""

    name = "fd_vq"

    def __init__(self, vq, reference: Images, device: str = "cpu", batch_size: int = 64):
        self.vq, self.device, self.batch_size = vq, device, batch_size
        self.size = int(getattr(vq.cfg, "image_size", None) or vq.cfg.resolution)
        self.ref_n = len(ImageSet(reference))
        self.ref = feature_stats(self.features(reference, "FD-VQ reference"))

    @torch.no_grad()
    def features(self, images: Images, desc: str = "FD-VQ") -> np.ndarray:
        out = []
        for batch in ImageSet(images).batches(self.batch_size, desc):
            x = torch.from_numpy(batch).to(self.device).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
            if x.shape[-2:] != (self.size, self.size):
                x = F.interpolate(x, size=(self.size, self.size), mode="bicubic", align_corners=False)
            z = F.adaptive_avg_pool2d(self.vq.features(x).float(), POOL)
            out.append(z.flatten(1).cpu().numpy())
        return np.concatenate(out)

    def __call__(self, images: Images, prompts: Sequence[str] | None = None, refs=None) -> dict:
        stats: GaussianStats = feature_stats(self.features(images))
        return {
            "fd_vq": stats_distance(stats, self.ref),
            "num_images": stats.n,
            "reference_images": self.ref_n,
            "protocol": {
                "features": f"the run's VQ encoder (pre-quantization), average-pooled to {POOL}x{POOL}",
                "input": f"{self.size}x{self.size}, [-1, 1]",
                "comparable": "between runs with the same tokenizer only",
            },
        }
