"""A small sample grid every ``train.sample_every`` steps, so a collapsed run is visible early.

The first ``n`` captions of the current batch are sampled with the sampler of the model's kind (T =
``train.stages``, argmax tokens, fixed seed: the grids of successive steps are comparable), decoded
with the run's VQ tokenizer and written to ``RUN/train/samples/step_NNNNNNNN.png``. Every rank runs the
sampler (under ZeRO-3 each forward gathers the partitioned weights); rank 0 decodes and writes.
Sampling uses its own generator, so the training RNG streams (and an exact resume) are untouched.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from core.files import atomic_path


class SampleGrid:
    def __init__(self, tokenizer_dir: str, out_dir: Path, stages: int, n: int = 8, rank: int = 0, seed: int = 0):
        self.tokenizer_dir, self.out_dir = tokenizer_dir, Path(out_dir)
        self.stages, self.n, self.rank, self.seed = stages, n, rank, seed
        self._vq = None

    def vq(self):
        if self._vq is None:
            from tokenization.vqgan import load_tokenizer_dir

            self._vq = load_tokenizer_dir(self.tokenizer_dir).eval()
        return self._vq

    @torch.no_grad()
    def __call__(self, step: int, model: torch.nn.Module, batch: dict) -> Path | None:
        from training.model import KIND_SAMPLERS
        from training.model.sampling import SampleConfig, generate

        text, mask = batch["text"][: self.n], batch["text_mask"][: self.n]
        sampler = KIND_SAMPLERS[getattr(model, "kind", "pdm")]  # the sampler of the model being trained
        cfg = SampleConfig(
            sampler=sampler, steps=self.stages, temperature=0.0, batch_size=self.n, seed=self.seed, record_steps=False
        )
        tokens = generate(model, text, mask, cfg).tokens  # text in the engine's compute dtype, as in training
        if self.rank != 0:
            return None
        from PIL import Image
        from torchvision.utils import make_grid

        images = ((self.vq().decode(tokens.cpu()) + 1) * 127.5).round().clamp(0, 255).byte()
        grid = make_grid(images, nrow=math.ceil(math.sqrt(len(images))), padding=2, pad_value=255)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        path = self.out_dir / f"step_{step:08d}.png"
        with atomic_path(path) as tmp:
            Image.fromarray(grid.permute(1, 2, 0).numpy()).save(tmp, format="PNG")
        return path
