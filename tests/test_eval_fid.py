"""FID: the Fréchet distance, the Inception loader, the reference-statistics cache, bad inputs."""

import json
import os

import numpy as np
import pytest
import torch

from evaluation.fid import FIDEvaluator, main, reference_stats
from evaluation.frechet import feature_stats, frechet_distance
from evaluation.images import center_crop_resize
from evaluation.inception import (
    STAND_IN_NOTE,
    STANDARD_WEIGHTS_NAME,
    InceptionFeatures,
    MissingWeightsError,
    file_sha256,
    stand_in_state_dict,
    state_dict_sha256,
)


def _spd(rs, d):
    a = rs.randn(d, d)
    return a @ a.T / d + 0.1 * np.eye(d)


# --- Fréchet distance -------------------------------------------------------------------------------


def test_identical_gaussians_distance_zero():
    s = feature_stats(np.random.RandomState(0).randn(400, 32))
    assert abs(frechet_distance(s.mu, s.sigma, s.mu, s.sigma)) < 1e-8 * np.trace(s.sigma)


def test_equal_covariances_give_squared_mean_distance():
    rs = np.random.RandomState(1)
    sigma, mu1, mu2 = _spd(rs, 16), rs.randn(16), rs.randn(16)
    assert frechet_distance(mu1, sigma, mu2, sigma) == pytest.approx(np.sum((mu1 - mu2) ** 2), rel=1e-8)


def test_agrees_with_torch_fidelity():
    from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric

    rs = np.random.RandomState(2)
    a = rs.randn(500, 64) @ rs.randn(64, 64)
    b = 0.5 + rs.randn(500, 64) @ rs.randn(64, 64)
    sa, sb = feature_stats(a), feature_stats(b)
    ours = frechet_distance(sa.mu, sa.sigma, sb.mu, sb.sigma)
    ta, tb = fid_features_to_statistics(torch.from_numpy(a)), fid_features_to_statistics(torch.from_numpy(b))
    theirs = fid_statistics_to_metric(ta, tb, verbose=False)["frechet_inception_distance"]
    assert ours == pytest.approx(theirs, rel=1e-6)


def test_singular_covariances_are_finite():
    from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric

    rs = np.random.RandomState(3)
    a, b = rs.randn(10, 48), rs.randn(12, 48) + 0.3  # fewer samples than dimensions: rank-deficient
    sa, sb = feature_stats(a), feature_stats(b)
    d = frechet_distance(sa.mu, sa.sigma, sb.mu, sb.sigma)
    theirs = fid_statistics_to_metric(
        fid_features_to_statistics(torch.from_numpy(a)), fid_features_to_statistics(torch.from_numpy(b)), False
    )
    assert np.isfinite(d) and d > 0
    assert d == pytest.approx(theirs["frechet_inception_distance"], rel=1e-3)


def test_significant_imaginary_part_is_an_error():
    with pytest.raises(ValueError, match="imaginary"):
        frechet_distance(np.zeros(2), np.diag([1.0, 1.0]), np.zeros(2), np.diag([1.0, -4.0]))


# --- the Inception extractor ------------------------------------------------------------------------


def test_missing_weights_names_file_and_source(tmp_path):
    with pytest.raises(MissingWeightsError) as exc:
        InceptionFeatures(tmp_path / STANDARD_WEIGHTS_NAME)
    msg = str(exc.value)
    assert STANDARD_WEIGHTS_NAME in msg and "eval.inception_weights" in msg
    assert "github.com/toshas/torch-fidelity/releases" in msg


def test_wrong_weights_file_is_a_clear_error(tmp_path):
    bad = tmp_path / STANDARD_WEIGHTS_NAME
    torch.save({"conv.weight": torch.zeros(3)}, bad)
    with pytest.raises(ValueError, match="FeatureExtractorInceptionV3"):
        InceptionFeatures(bad, sha256=file_sha256(bad))


class _Planted:
    """Unpickling this runs ``open(marker, "w")``: what a tampered weights file could do with any code."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


def test_a_tampered_weights_file_is_refused_before_loading(tmp_path):
    marker = tmp_path / "code_ran"
    state = {"Conv2d_1a_3x3.conv.weight": torch.zeros(3), "x": _Planted(marker)}
    standard, named = tmp_path / STANDARD_WEIGHTS_NAME, tmp_path / "pt_inception-0123abcd.pth"
    torch.save(state, standard)
    torch.save(state, named)
    with pytest.raises(ValueError, match=r"sha256 [0-9a-f]{64} does not start with 6726825d.*refusing to load"):
        InceptionFeatures(standard)  # its name promises 6726825d
    with pytest.raises(ValueError, match="does not start with 0123abcd"):
        InceptionFeatures(named)  # another name, another promise
    with pytest.raises(ValueError, match="GLOBAL _?io.open"):  # a matching hash: still read weights-only
        InceptionFeatures(named, sha256=file_sha256(named))
    assert not marker.exists()  # nothing in the file ever ran


@pytest.fixture(scope="module")
def real_format_weights(tmp_path_factory):
    """Random weights (seed 0) in the real file's layout, under the real file's name."""
    state = stand_in_state_dict(seed=0)
    path = tmp_path_factory.mktemp("inception") / STANDARD_WEIGHTS_NAME
    torch.save(state, path)
    return path, state


def test_weights_file_in_real_format_loads(real_format_weights):
    path, state = real_format_weights
    ours = InceptionFeatures(path, device="cpu", sha256=file_sha256(path))
    assert ours.protocol["stand_in"] is False and ours.protocol["weights_sha256"] == file_sha256(path)
    assert "does not start with 6726825d" in ours.protocol["note"]
    loaded = ours.net.state_dict()
    assert set(loaded) == set(state) and all(torch.equal(loaded[k], v) for k, v in state.items())


@pytest.mark.slow
def test_real_format_features_equal_the_library(real_format_weights):
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    path, _ = real_format_weights
    images = np.random.RandomState(0).randint(0, 256, (2, 64, 64, 3)).astype(np.uint8)
    lib = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(path))
    with torch.no_grad():
        (expected,) = lib(torch.from_numpy(images).permute(0, 3, 1, 2))
    got = InceptionFeatures(path, device="cpu", sha256=file_sha256(path))(images, "fid")
    assert got.shape == (2, 2048) and np.isfinite(got).all() and got.std() > 0
    np.testing.assert_array_equal(got, expected.double().numpy())


def test_stand_in_is_labelled_and_fixed(real_format_weights):
    _, seed0 = real_format_weights
    a = InceptionFeatures(None, device="cpu")
    assert a.protocol["stand_in"] is True and a.protocol["note"] == STAND_IN_NOTE
    assert a.protocol["weights_sha256"] == state_dict_sha256(seed0)  # fixed: the seed-0 weights, every time


def test_features_are_computed_without_tf32_and_the_flags_restored():
    """cuDNN runs convolutions in TF32 by default on Ampere and later GPUs: features (and cached reference
    statistics) would then depend on the device. The extractor turns TF32 off for its forward only."""
    seen = []

    class Probe(torch.nn.Module):
        def forward(self, x):
            seen.append((torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32))
            return (torch.zeros(x.shape[0], 2048),)

    ext = InceptionFeatures(None, device="cpu")
    ext.net = Probe()
    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
    try:
        ext(np.zeros((2, 8, 8, 3), np.uint8))
        assert seen == [(False, False)]
        assert (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32) == (True, True)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before


def test_center_crop_resize():
    img = np.zeros((200, 300, 3), np.uint8)
    img[:, 50:250] = 255  # the central 200x200 square is white, the side bands black
    out = center_crop_resize(img, 64)
    assert out.shape == (64, 64, 3) and out.min() == 255


# --- reference statistics cache and the evaluator (cheap fake extractor) ----------------------------


class FakeExtractor:
    """12-d features (per-channel quadrant means); counts calls."""

    def __init__(self, sha="aaa"):
        self.protocol = {"extractor": "fake", "weights_sha256": sha, "stand_in": True, "note": "test"}
        self.calls = 0

    def __call__(self, batch, mode):
        self.calls += 1
        h, w = batch.shape[1] // 2, batch.shape[2] // 2
        q = [batch[:, i * h : (i + 1) * h, j * w : (j + 1) * w].mean(axis=(1, 2)) for i in (0, 1) for j in (0, 1)]
        return np.concatenate(q, axis=1).astype(np.float64) + (1.0 if mode == "clean_fid" else 0.0)


def _images(n, seed, size=48):
    return [np.random.RandomState(seed + i).randint(0, 256, (size, size + 8, 3)).astype(np.uint8) for i in range(n)]


def _untouchable():
    raise AssertionError("the cache should have been used")
    yield


def test_cache_reused_when_protocol_matches(tmp_path):
    ext, refs = FakeExtractor(), _images(20, 0)
    first = reference_stats(refs, ext, tmp_path, "ref-a", 20, resize=32, batch_size=8)
    assert ext.calls > 0 and len(list(tmp_path.glob("*.npz"))) == 2 and len(list(tmp_path.glob("*.json"))) == 2
    side = json.loads(next(tmp_path.glob("ref-fid-*.json")).read_text())
    assert side["count"] == 20 and side["resize"] == 32 and side["weights_sha256"] == "aaa"
    again = reference_stats(_untouchable(), FakeExtractor(), tmp_path, "ref-a", 20, resize=32)
    for m in ("fid", "clean_fid"):
        np.testing.assert_array_equal(first[m].mu, again[m].mu)
        np.testing.assert_array_equal(first[m].sigma, again[m].sigma)


def test_cache_invalidated_when_a_reference_file_is_rewritten_in_place(tmp_path):
    """The held-out references are rewritten under the same names by a new download: the cache key holds each
    file's size and modification time besides its path."""
    from PIL import Image

    paths = [tmp_path / "refs" / f"{i:08d}.png" for i in range(6)]
    paths[0].parent.mkdir()
    for p, img in zip(paths, _images(6, 0)):
        Image.fromarray(img).save(p)
    first = reference_stats(paths, FakeExtractor(), tmp_path / "cache", "heldout", 6, resize=32, modes=["fid"])
    for i, p in enumerate(paths):  # other images, same names (a later mtime, whatever the clock's resolution)
        Image.fromarray(np.full((48, 56, 3), 250, np.uint8)).save(p)
        os.utime(p, ns=(os.stat(p).st_atime_ns, os.stat(p).st_mtime_ns + 10**9 + i))
    ext = FakeExtractor()
    again = reference_stats(paths, ext, tmp_path / "cache", "heldout", 6, resize=32, modes=["fid"])
    assert ext.calls > 0 and again["fid"].mu.min() > 200 > first["fid"].mu.max()


@pytest.mark.parametrize("change", ["weights", "resize", "reference", "count", "tampered"])
def test_cache_invalidated_when_protocol_differs(tmp_path, change):
    refs = _images(20, 0)
    reference_stats(refs, FakeExtractor(), tmp_path, "ref-a", 20, resize=32, modes=["fid"])
    ext, resize, name, items = FakeExtractor(), 32, "ref-a", refs
    if change == "weights":
        ext = FakeExtractor(sha="bbb")
    elif change == "resize":
        resize = 40
    elif change == "reference":
        name = "ref-b"
    elif change == "count":
        items = refs[:15]
    else:
        side = next(tmp_path.glob("ref-fid-*.json"))
        side.write_text(side.read_text().replace('"aaa"', '"zzz"'))
    reference_stats(items, ext, tmp_path, name, len(items), resize=resize, modes=["fid"])
    assert ext.calls > 0


def test_reference_count_mismatch_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="yielded 5 images, expected count=6"):
        reference_stats(iter(_images(5, 0)), FakeExtractor(), tmp_path, "r", 6, resize=32)
    ext = FakeExtractor()
    with pytest.raises(ValueError, match="has 5 images, expected count=6"):
        reference_stats(_images(5, 0), ext, tmp_path, "r", 6, resize=32)
    assert ext.calls == 0


def test_missing_reference_file_fails_first(tmp_path):
    ext = FakeExtractor()
    with pytest.raises(FileNotFoundError, match="not found"):
        reference_stats([tmp_path / "a.png", tmp_path / "b.png"], ext, tmp_path, "r", 2, resize=32)
    assert ext.calls == 0


def test_evaluator_same_set_near_zero_and_shift_positive(tmp_path):
    ext = FakeExtractor()
    gen = np.stack([center_crop_resize(x, 32) for x in _images(30, 100)])
    ref = reference_stats(list(gen), ext, tmp_path, "r", 30, resize=32)
    fid = FIDEvaluator(ref, ext, resize=32, batch_size=7, reference_info={"set": "r"})
    same = fid(gen)
    assert abs(same["fid"]) < 1e-6 and abs(same["clean_fid"]) < 1e-6 and same["num_images"] == 30
    shifted = fid(np.clip(gen.astype(int) + 40, 0, 255).astype(np.uint8))
    assert shifted["fid"] > 100
    assert shifted["protocol"]["num_generated"] == 30 and "fid" in shifted["protocol"]["modes"]


def test_mixed_sizes_fail_before_features(tmp_path):
    ext = FakeExtractor()
    ref = reference_stats(_images(4, 0), ext, tmp_path, "r", 4, resize=32)
    ext.calls = 0
    with pytest.raises(ValueError, match="mixed sizes"):
        FIDEvaluator(ref, ext, resize=32)(_images(3, 0, size=32) + _images(1, 0, size=40))
    assert ext.calls == 0


@pytest.mark.slow
def test_cli_with_stand_in_end_to_end(tmp_path):
    """Real network (stand-in weights), both modes, files on disk; 2048-d sqrtm takes minutes on 2 cores."""
    from PIL import Image

    for folder, seed in (("gen", 0), ("ref", 50)):
        (tmp_path / folder).mkdir()
        for i, img in enumerate(_images(3, seed, size=64)):
            Image.fromarray(img[:, :64]).save(tmp_path / folder / f"{i}.png")
    out = main(
        [
            str(tmp_path / "gen"),
            str(tmp_path / "ref"),
            "--cache",
            str(tmp_path / "cache"),
            "--resize",
            "64",
            "--batch-size",
            "3",
        ]
    )
    assert np.isfinite(out["fid"]) and np.isfinite(out["clean_fid"]) and out["fid"] != out["clean_fid"]
    assert out["protocol"]["note"] == STAND_IN_NOTE and out["num_images"] == 3


def test_image_folders_leave_out_a_killed_writers_temporary_files(tmp_path):
    """The FID, CLIP-score and captioning commands read a folder's images: not the hidden temporary files
    (``.NAME.tmpPID.png``) a killed atomic writer leaves."""
    from core.files import temp_name
    from evaluation.images import image_files

    for name in ("b.png", "a.JPG", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    temp_name(tmp_path / "c.png").write_bytes(b"half")
    assert [p.name for p in image_files(tmp_path)] == ["a.JPG", "b.png"]
