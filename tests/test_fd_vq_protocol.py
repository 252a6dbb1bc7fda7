"""The protocol ``evaluation.fd_vq`` states: images scaled to [-1, 1] as the tokenize stage does, bicubic-resized
to the tokenizer's input size, VQ encoder features average-pooled to 2x2 (4 x embed_dim numbers per image)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from evaluation.fd_vq import VQFrechetEvaluator
from tests.trainer_utils import one_thread  # noqa: F401 (autouse fixture)


def test_features_follow_the_stated_protocol():
    from tokenization.vqgan import TokenizerConfig, VQModel

    torch.manual_seed(0)
    vq = VQModel(TokenizerConfig(resolution=32)).eval()
    rs = np.random.RandomState(0)
    ref = rs.randint(0, 256, (4, 32, 32, 3)).astype(np.uint8)
    small = rs.randint(0, 256, (3, 16, 16, 3)).astype(np.uint8)
    ev = VQFrechetEvaluator(vq, ref)

    def expected(images, resize=False):
        x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0
        if resize:
            x = F.interpolate(x, size=(32, 32), mode="bicubic", align_corners=False)
        with torch.no_grad():
            z = vq.features(x).float()
        return F.adaptive_avg_pool2d(z, 2).flatten(1).numpy()

    got = ev.features(ref)
    assert got.shape == (4, 4 * vq.cfg.embed_dim)
    np.testing.assert_allclose(got, expected(ref), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ev.features(small), expected(small, resize=True), rtol=1e-5, atol=1e-5)
    assert ev.ref.n == 4 and ev.ref.mu.dtype == np.float64
