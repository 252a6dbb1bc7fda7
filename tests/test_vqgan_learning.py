"""Slow test: the tiny tokenizer learns the synthetic coloured-shapes domain within a few CPU-minutes.

Bounds: held-out MAE <= 0.05 and codebook usage >= 50% (the brief's), plus two that a trivial model
cannot pass: MAE at most 40% of the all-background baseline (~0.053 on this data, so the 0.05 bound
alone is almost free) and >= 95% (measured ~99% after 800 steps; 94% after 400) of reconstructions
of new images read back as their captions.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.conftest import SHAPES_TOKENIZER_STEPS as STEPS  # noqa: E402
from tests.data_utils import make_dataset
from tokenization.vqgan import load_tokenizer_dir
from tokenization.vqgan.train import to_model_range


@pytest.mark.slow
def test_tiny_tokenizer_reconstructs_synthetic_shapes(shapes_tokenizer):
    folder, metrics = shapes_tokenizer  # trained by the session fixture (conftest.py), shared with other tests
    print(f"\ntokenizer: {metrics}")
    assert metrics["steps"] == STEPS
    assert metrics["mae"] <= 0.05
    assert metrics["codebook_usage"] >= 0.5

    # new images (another seed), through the saved files
    new, captions = make_dataset(200, seed=1, size=32)
    x = to_model_range(new)
    baseline = float((x - x.new_tensor([128 / 127.5 - 1]).view(1, 1, 1, 1)).abs().mean()) / 2
    model = load_tokenizer_dir(folder)
    with torch.no_grad():
        ids, qerr = model.encode(x)
        rec = model.decode(ids)
    mae = float((rec - x).abs().mean()) / 2
    assert mae <= 0.05 and mae <= 0.4 * baseline, (mae, baseline)
    assert ids.unique().numel() >= 0.5 * model.codebook_size
    assert torch.isfinite(qerr).all() and (qerr >= 0).all()
    from tokenization.synthetic import attributes_match

    pixels = ((rec + 1) * 127.5).round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()
    ok = np.mean([attributes_match(p, c) for p, c in zip(pixels, captions)])
    print(f"new images: mae={mae:.4f} (background-only {baseline:.4f}), captions read back {ok:.0%}")
    assert ok >= 0.95, f"only {ok:.0%} of reconstructions read back as their captions"
