"""What makes token shards stale: the image size the VQ-GAN is given is part of every shard's lineage; and the
caption cut: a caption of exactly ``max_length`` ids fits (no warning, no error, ids kept)."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

from tokenization.text import CaptionTokenizer, TextEncoderConfig, TextTruncationWarning

ROOT = Path(__file__).resolve().parents[1]


class _Ids(CaptionTokenizer):
    pad_id = 0


def test_a_caption_of_exactly_max_length_fits():
    strict = _Ids(TextEncoderConfig(truncation="error"), 4)
    ids, mask = strict._fit([[5, 6, 7, 1], [5, 1]], 1)
    assert ids.tolist() == [[5, 6, 7, 1], [5, 1, 0, 0]] and mask.sum(1).tolist() == [4, 2]
    with pytest.raises(ValueError, match="exceed"):
        strict._fit([[5, 6, 7, 8, 1]], 1)
    warn = _Ids(TextEncoderConfig(truncation="warn"), 4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn._fit([[5, 6, 7, 1]], 1)
    with pytest.warns(TextTruncationWarning):
        ids, _ = warn._fit([[5, 6, 7, 8, 9, 1]], 1)
    assert ids.tolist() == [[5, 6, 7, 1]]  # cut, and the end token kept last


def test_token_shard_lineage_holds_the_image_size(tmp_path, monkeypatch):
    """Images are centre-cropped and resized to ``tokenizer.image_size`` before the VQ-GAN sees them: another
    size gives other tokens (another grid), so the shards must be redone."""
    from pipeline.experiment import load_config
    from tests.image_shard_utils import tokenize_lineage_probe

    run = tmp_path / "run"
    lineage = tokenize_lineage_probe(run, monkeypatch)
    base = lineage()
    tok = load_config(ROOT / "configs" / "tiny.yaml", [f"run_dir={run}"]).tokenizer
    size, n = tok.pixels, tok.pixels * 2 // tok.factor
    assert lineage(f"tokenizer.image_size={size * 2}", f"model.grid_h={n}", f"model.grid_w={n}") != base
