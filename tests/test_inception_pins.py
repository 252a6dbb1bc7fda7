"""Pins of ``evaluation.inception``'s protocol details the FID tests leave open: clean-fid's resize (float32
per-channel bicubic, clipped, rounded), the uint8 NCHW layout handed to the network, float64 output, the
stand-in's seed and init, the state-dict hash, a configured sha256 in upper case and the protocol note of a
standard file. A probe network or the random stand-in: no real weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from evaluation import inception
from evaluation.inception import (
    STANDARD_SHA256_PREFIX,
    InceptionFeatures,
    clean_resize,
    expected_sha256,
    file_sha256,
    stand_in_state_dict,
    state_dict_sha256,
)


def _reference_clean_resize(batch, size):
    out = np.empty((len(batch), size, size, 3), np.uint8)
    for i, img in enumerate(batch):
        for c in range(3):
            ch = Image.fromarray(img[:, :, c].astype(np.float32)).resize((size, size), Image.BICUBIC)
            out[i, :, :, c] = np.rint(np.clip(np.asarray(ch), 0, 255))
    return out


def test_clean_resize_is_float_bicubic_clipped_and_rounded():
    """Pins ``clean_resize``: sharp 0/255 edges (bicubic overshoot clipped, not wrapped) and random pixels
    (float32 bicubic, round-to-nearest) equal the documented recipe exactly."""
    rs = np.random.RandomState(0)
    edges = np.zeros((1, 12, 12, 3), np.uint8)
    edges[:, :, ::2] = 255
    noisy = rs.randint(0, 256, (2, 10, 14, 3)).astype(np.uint8)
    for batch, size in ((edges, 29), (noisy, 23), (noisy, 6)):
        np.testing.assert_array_equal(clean_resize(batch, size), _reference_clean_resize(batch, size))
    up = clean_resize(edges, 29)
    assert up.min() == 0 and up.max() == 255  # clipped at both ends
    as_float = Image.fromarray(edges[0, :, :, 0].astype(np.float32)).resize((29, 29), Image.BICUBIC)
    assert np.asarray(as_float).min() < 0 and np.asarray(as_float).max() > 255  # the overshoot being clipped


class Probe(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, x):
        self.seen.append(x.clone())
        return (x.float().mean(dim=(2, 3)).repeat(1, 8)[:, :24],)


def test_network_gets_uint8_nchw_and_features_are_float64():
    """Pins the layout: [B, H, W, 3] -> [B, 3, H, W] (not H/W swapped), uint8; clean_fid resizes to 299 first."""
    ext = InceptionFeatures(None, device="cpu")
    ext.net = probe = Probe()
    batch = np.random.RandomState(1).randint(0, 256, (2, 6, 10, 3)).astype(np.uint8)
    feats = ext(batch, "fid")
    (x,) = probe.seen
    assert x.dtype == torch.uint8 and tuple(x.shape) == (2, 3, 6, 10)
    assert torch.equal(x, torch.from_numpy(batch).permute(0, 3, 1, 2))
    assert feats.dtype == np.float64 and feats.shape == (2, 24)
    ext(batch, "clean_fid")
    assert tuple(probe.seen[1].shape) == (2, 3, 299, 299)
    assert torch.equal(probe.seen[1], torch.from_numpy(clean_resize(batch)).permute(0, 3, 1, 2))
    with pytest.raises(ValueError, match="unknown FID mode"):
        ext(batch, "kid")


def test_stand_in_follows_its_seed_and_kaiming_fan_in():
    """Pins the stand-in: another seed -> other weights (and protocol hash); convolutions ~ N(0, 2 / fan_in)."""
    s0, s1 = stand_in_state_dict(0), stand_in_state_dict(1)
    w = s0["Conv2d_4a_3x3.conv.weight"]  # 80 -> 192, 3x3: fan_in 720, fan_out 1728
    assert w.std().item() == pytest.approx((2 / (80 * 9)) ** 0.5, rel=0.05)
    assert not torch.equal(s0["Conv2d_4a_3x3.conv.weight"], s1["Conv2d_4a_3x3.conv.weight"])
    assert state_dict_sha256(s0) != state_dict_sha256(s1)
    fc = s0["fc.weight"]
    assert fc.std().item() == pytest.approx(0.01, rel=0.05) and torch.count_nonzero(s0["fc.bias"]) == 0


def test_state_dict_hash_covers_shapes_and_is_order_free():
    z = torch.zeros(6)
    assert state_dict_sha256({"a": z.view(2, 3)}) != state_dict_sha256({"a": z.view(3, 2)})
    a, b = {"x": torch.ones(2), "y": torch.zeros(2)}, {"y": torch.zeros(2), "x": torch.ones(2)}
    assert state_dict_sha256(a) == state_dict_sha256(b)


def test_configured_sha256_is_case_free_and_a_standard_file_has_no_note(tmp_path, monkeypatch):
    """Pins ``expected_sha256(configured)`` lower-casing (hex digests are lower case) and the protocol note:
    empty for a file whose sha256 starts with the standard prefix, else a warning."""
    path = tmp_path / "mine.pth"
    torch.save(stand_in_state_dict(0), path)
    sha = file_sha256(path)
    assert expected_sha256(path, sha[:12].upper()) == sha[:12]
    ours = InceptionFeatures(path, device="cpu", sha256=sha[:16].upper())  # a prefix, upper case
    assert ours.protocol["weights_sha256"] == sha and "does not start with" in ours.protocol["note"]

    standard = STANDARD_SHA256_PREFIX + "0" * 56
    monkeypatch.setattr(inception, "file_sha256", lambda p, chunk=1 << 20: standard)
    monkeypatch.setattr(inception, "load_extractor", lambda p, s=None: torch.nn.Identity())
    assert InceptionFeatures(path, device="cpu").protocol["note"] == ""


@pytest.mark.parametrize("content", [[torch.zeros(2)], {"Conv2d_1a_3x3.conv.weight": 3}])
def test_a_weights_file_that_is_not_a_dict_of_tensors_is_a_clear_error(tmp_path, content):
    """Pins the dict-of-tensors check of ``load_extractor`` (a list or a plain number loads weights-only)."""
    path = tmp_path / "w.pth"
    torch.save(content, path)
    with pytest.raises(ValueError, match="not an Inception state dict.*expected a dict of tensors"):
        InceptionFeatures(path, device="cpu", sha256=file_sha256(path))
