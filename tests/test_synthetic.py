"""The synthetic shapes dataset: determinism, exact read-back from pixels, robustness, captions, files."""

import numpy as np
import pytest
from PIL import Image

from tests.data_utils import make_dataset
from tokenization.synthetic import (
    COLORS,
    KINDS,
    POSITIONS,
    SIZES,
    Scene,
    Shape,
    SyntheticConfig,
    attribute_scores,
    attributes_match,
    caption,
    load_images,
    parse_caption,
    read_attributes,
    render,
    sample_scene,
    write_dataset,
)


def degrade(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """2x bilinear down-up resample, then gaussian noise sigma 10/255 (a mild reconstruction)."""
    h, w = img.shape[:2]
    small = Image.fromarray(img).resize((w // 2, h // 2), Image.BILINEAR).resize((w, h), Image.BILINEAR)
    return np.clip(np.asarray(small, np.float32) + rng.normal(0, 10, img.shape), 0, 255).astype(np.uint8)


def test_deterministic_from_seed():
    a, ca = make_dataset(20, seed=3)
    b, cb = make_dataset(20, seed=3)
    c, cc = make_dataset(20, seed=4)
    assert a.dtype == np.uint8 and a.shape == (20, 32, 32, 3)
    assert np.array_equal(a, b) and ca == cb
    assert ca != cc
    p, cp = make_dataset(7, seed=3)  # image i depends only on (seed, i)
    assert np.array_equal(p, a[:7]) and cp == ca[:7]


def test_sampling_covers_every_attribute():
    rng = np.random.default_rng(0)
    scenes = [sample_scene(rng) for _ in range(400)]
    shapes = [s for sc in scenes for s in sc.shapes]
    assert {len(sc.shapes) for sc in scenes} == {1, 2}
    for attr, values in (("kind", KINDS), ("color", COLORS), ("size", SIZES), ("position", POSITIONS)):
        assert {getattr(s, attr) for s in shapes} == set(values)
    assert all(len({s.position for s in sc.shapes}) == len(sc.shapes) for sc in scenes)  # no overlaps


@pytest.mark.parametrize("size", [32, 64])
def test_read_attributes_exact_on_clean_renders(size):
    images, captions = make_dataset(500, seed=11, size=size)
    assert images.shape[1:] == (size, size, 3)
    misses = [c for img, c in zip(images, captions) if not attributes_match(img, c)]
    assert misses == []


@pytest.mark.parametrize("size", [32, 64])
def test_read_attributes_robust_to_blur_and_noise(size):
    rng = np.random.default_rng(0)
    images, captions = make_dataset(300, seed=12, size=size)
    ok = np.mean([attributes_match(degrade(img, rng), c) for img, c in zip(images, captions)])
    assert ok >= 0.98


def test_every_single_shape_reads_back():
    for kind in KINDS:
        for color in COLORS:
            for size in SIZES:
                for pos in POSITIONS:
                    scene = Scene([Shape(kind, color, size, pos)])
                    assert read_attributes(render(scene)).canonical() == scene.canonical()


def test_caption_parse_round_trip():
    rng = np.random.default_rng(1)
    for _ in range(200):
        scene = sample_scene(rng, 1, 4)
        text = caption(scene)
        assert parse_caption(text) == scene
    assert (
        caption(parse_caption("a small red circle at the top left and a large blue square at the bottom right"))
        == "a small red circle at the top left and a large blue square at the bottom right"
    )
    assert parse_caption("A  small red circle at the top left.").shapes == [Shape("circle", "red", "small", "top left")]
    with pytest.raises(ValueError, match="grammar"):
        parse_caption("a purple hexagon in the middle")


def test_scorer_can_fail():
    scene = Scene([Shape("circle", "red", "small", "top left"), Shape("square", "blue", "large", "bottom right")])
    img = render(scene)
    good = caption(scene)
    assert attributes_match(img, good)
    assert attribute_scores(img, good) == {
        "position": 1.0,
        "color": 1.0,
        "kind": 1.0,
        "size": 1.0,
        "count": 1.0,
        "all": 1.0,
    }
    wrong_color = good.replace("red", "green")
    assert not attributes_match(img, wrong_color)
    s = attribute_scores(img, wrong_color)
    assert s["color"] == 0.5 and s["kind"] == 1.0 and s["all"] == 0.0
    assert not attributes_match(img, good.replace("circle", "triangle"))
    assert not attributes_match(img, good.replace("large", "small"))
    assert not attributes_match(img, good.replace("top left", "top right"))
    assert not attributes_match(img, "a small red circle at the top left")  # an extra shape in the image
    blank = np.full_like(img, 128)
    assert not attributes_match(blank, good) and attribute_scores(blank, good)["position"] == 0.0


def test_write_and_load_dataset(tmp_path):
    out = write_dataset(tmp_path / "ds", 12, seed=5, size=32)
    import pandas as pd

    df = pd.read_parquet(out / "urls.parquet")
    assert list(df.columns) == ["URL", "TEXT", "WIDTH", "HEIGHT"]
    assert df["URL"][3] == "images/00000003.png" and (df["WIDTH"] == 32).all() and (df["HEIGHT"] == 32).all()
    images, captions = load_images(out)
    ref, ref_caps = make_dataset(12, seed=5, size=32)
    assert np.array_equal(images, ref) and captions == ref_caps == list(df["TEXT"])
    assert not list(out.rglob("*.tmp*"))

    # idempotent: finished images are not rewritten; a different seed rewrites them
    mtime = (out / "images/00000000.png").stat().st_mtime_ns
    write_dataset(out, 12, seed=5, size=32)
    assert (out / "images/00000000.png").stat().st_mtime_ns == mtime
    write_dataset(out, 12, seed=6, size=32, base_url="http://127.0.0.1:8000/")
    images6, caps6 = load_images(out)
    assert np.array_equal(images6, make_dataset(12, seed=6)[0]) and caps6 != captions
    assert pd.read_parquet(out / "urls.parquet")["URL"][0] == "http://127.0.0.1:8000/images/00000000.png"


def test_config_checks():
    with pytest.raises(ValueError, match="min_objects"):
        SyntheticConfig(min_objects=3, max_objects=2)
    with pytest.raises(ValueError, match="even"):
        SyntheticConfig(image_size=33)


def test_stage_writes_both_splits(tmp_path):
    pytest.importorskip("pipeline.runner")
    from tokenization.synthetic_stage import run_synthetic

    report = run_synthetic(SyntheticConfig(n_train=10, n_eval=4, seed=2), tmp_path)
    assert report["counts"] == {"train": 10, "eval": 4}
    assert report["metrics"]["self_check_match"] == 1.0
    train, _ = load_images(tmp_path / "train")
    evl, eval_caps = load_images(tmp_path / "eval")
    assert train.shape == (10, 32, 32, 3) and evl.shape == (4, 32, 32, 3)
    assert eval_caps == make_dataset(4, seed=3)[1]
