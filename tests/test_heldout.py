"""Evaluation on the held-out split of the user's own data: prompts, ground truth and FID reference."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from evaluation.heldout import heldout_images, heldout_prompts, uses_heldout
from tests.image_shard_utils import write_download
from tests.own_data import texture
from tokenization.t5_pretrain import restatement


def _data(n, seed):
    rng = np.random.default_rng(seed)
    return np.stack([texture(i % 9, rng) for i in range(n)]), [f"caption {seed}-{i}" for i in range(n)]


def test_prompts_and_images_are_the_held_out_samples_in_order(tmp_path):
    train, (ev_a, cap_a), ev_b = _data(20, 0), _data(12, 1), _data(6, 2)
    cap_a[3] = ""  # a sample without a caption is no prompt
    splits = {"train/laion": train, "eval/laion": (ev_a, cap_a), "eval/cc3m": ev_b}
    manifest = write_download(tmp_path, splits, shuffle=True)  # each shard's samples in reverse key order
    recs, source = heldout_prompts(manifest, 14)
    # eval/cc3m before eval/laion (sorted), in key order, the captionless sample skipped, never the train split
    want = ev_b[1] + [c for c in cap_a if c][:8]
    assert [r["prompt"] for r in recs] == want and [r["refs"] for r in recs] == [[c] for c in want]
    assert [r["index"] for r in recs] == list(range(14)) and "held-out eval split" in source
    images = heldout_images(manifest, tmp_path / "heldout", 32, len(recs))
    assert list(images) == [r["heldout"] for r in recs]
    assert len(set(images.values())) == len(recs)  # one image each: both sources' keys start at 0
    first = np.asarray(Image.open(images[recs[0]["heldout"]]))
    assert first.shape == (32, 32, 3)  # 48 px center-cropped and resized to the samples' size
    assert (
        np.abs(first.astype(int) - np.asarray(Image.fromarray(ev_b[0][0]).resize((32, 32), Image.BICUBIC))).mean() < 3
    )
    with pytest.raises(ValueError, match="no eval split"):
        heldout_prompts({"splits": {"train": manifest["splits"]["train/laion"]}}, 4)


def test_an_unreadable_image_is_skipped_and_the_next_in_its_shard_taken(tmp_path, monkeypatch):
    import evaluation.heldout as heldout

    ev, caps = _data(12, 1)
    manifest = write_download(tmp_path, {"eval": (ev, caps)})  # shards of 10 and 2 samples
    real, calls = heldout.decode, []

    def decode(data, size):  # the second image of the first shard does not decode
        calls.append(data)
        return None if len(calls) == 2 else real(data, size)

    monkeypatch.setattr(heldout, "decode", decode)
    recs, _ = heldout_prompts(manifest, 6)
    assert [r["prompt"] for r in recs] == [caps[i] for i in (0, 2, 3, 4, 5, 6)]  # all from the first shard
    assert len(calls) == 7  # reads no further than it needs


def test_which_prompts_a_config_uses():
    def cfg(source, coco=None):
        return SimpleNamespace(
            data=SimpleNamespace(download=SimpleNamespace(source=source)), eval=SimpleNamespace(coco_captions=coco)
        )

    assert uses_heldout(cfg("sources")) and uses_heldout(cfg("laion"))
    assert not uses_heldout(cfg("laion", "captions_val2014.json")) and not uses_heldout(cfg("synthetic"))


def test_the_tiny_t5_pretraining_target_of_a_caption():
    assert restatement("a large blue square at the bottom right and a small red circle at the top left") == (
        "a small red circle at the top left and a large blue square at the bottom right"  # synthetic: reordered
    )
    assert restatement("fabric with red checks") == "fabric with red checks"  # any other caption: itself


def test_the_loss_curve_figure(tmp_path):
    from evaluation.figures import save_loss_curve

    records = [{"step": s, "loss": 5 / s, "token_loss": 4 / s, "token_acc": 1 - 1 / s} for s in range(1, 50)]
    img = np.asarray(Image.open(save_loss_curve(records, tmp_path / "loss.png")).convert("RGB"))
    assert img.shape == (360, 640, 3) and (img < 100).any()  # drawn, not blank
