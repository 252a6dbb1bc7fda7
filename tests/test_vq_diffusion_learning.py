"""The VQ-Diffusion baseline learns to follow captions on the built-in synthetic set, trained by the production
step (``TrainModule`` mode ``vq_diffusion``) and engine, sampled with Improved VQ-Diffusion's high-quality
strategy, scored by reading the shapes back from the pixels (as the evaluate stage does)."""

from __future__ import annotations

import numpy as np
import pytest

from tests.test_model_learning import caption_following
from training.model.sampling import SampleConfig
from training.model.train_module import StepSettings

VQD_STEPS = 200  # batch 32, lr 3e-3, 2000 scenes; measured 39% of 64 held-out captions right after 58 CPU-s of
# training (75 s for the whole test) on the loaded 2-core machine; 400 steps at batch 64: 77-80% after 240 CPU-s
VQD_SETTINGS = StepSettings(mode="vq_diffusion", diffusion_aux_weight=1.0)  # the x_0 loss at weight 1: see README
VQD_SAMPLER = SampleConfig(
    sampler="vq_diffusion", diffusion_strategy="purity", steps=16, temperature=0.0, batch_size=64
)  # Improved VQ-Diffusion's high-quality strategy (Algorithm 2), 16 steps of 4 tokens


@pytest.mark.slow
def test_tiny_vq_diffusion_generates_images_that_match_their_captions(shapes_tokenizer, shapes_t5):
    """>= 25% of 64 held-out captions drawn with every attribute of every shape right (chance < 1%) after at most
    2 CPU-minutes of training (the shared tiny tokenizer and pretrained tiny T5 of the PDM caption test)."""
    from tests.data_utils import make_dataset

    images, captions = make_dataset(2000, seed=0, size=32)
    attrs, cpu, losses = caption_following(
        shapes_tokenizer[0],
        shapes_t5,
        images,
        captions,
        VQD_STEPS,
        batch=32,
        settings=VQD_SETTINGS,
        kind="vq_diffusion",
        sample=VQD_SAMPLER,
        lr=3e-3,
    )
    assert np.mean(losses[-50:]) < 0.5 * np.mean(losses[:10])
    assert cpu <= 120, f"training took {cpu:.0f} CPU-s, more than 2 CPU-minutes"
    assert attrs["all"] >= 0.25, attrs
