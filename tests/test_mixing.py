"""Mixing sources in training (``data.mixing``): the token shard list the train stage hands the loader."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from tokenization.source_config import MixingConfig
from training.mixing import mix_shards


def _shards(root, sizes: dict[str, list[int]]) -> list[str]:
    out = []
    for src, counts in sizes.items():
        for i, n in enumerate(counts):
            tar = root / src / f"{i:05d}.tar"
            tar.parent.mkdir(parents=True, exist_ok=True)
            tar.write_bytes(b"")
            (root / src / f"{i:05d}_stats.json").write_text(json.dumps({"samples": n}))
            out.append(str(tar))
    return out


def test_proportional_trains_on_every_shard_once(tmp_path):
    shards = _shards(tmp_path, {"laion": [100, 100, 100], "cc3m": [100]})
    mixed, report = mix_shards(shards, tmp_path, MixingConfig(), log=lambda *_: None)
    assert sorted(mixed) == sorted(shards)
    assert report["laion"] == {"images": 300, "shards": 3, "repeats": 1, "share": 0.75}
    assert report["cc3m"]["share"] == 0.25


def test_weighted_repeats_the_smaller_source_to_reach_its_share(tmp_path):
    shards = _shards(tmp_path, {"laion": [100, 100, 100, 100], "cc3m": [100, 100]})
    logs = []
    mixed, report = mix_shards(shards, tmp_path, MixingConfig("weighted", {"laion": 1, "cc3m": 2}), logs.append)
    per_source = Counter(p.split("/")[-2] for p in mixed)
    assert per_source == {"laion": 4, "cc3m": 8}  # 400 vs 2 x 200 -> 2:1 -> cc3m's shards x4
    assert report["cc3m"]["repeats"] == 4 and report["cc3m"]["share"] == pytest.approx(2 / 3, abs=1e-4)
    assert "cc3m 67% of the samples (x4)" in logs[0]
    left_out, rep = mix_shards(shards, tmp_path, MixingConfig("weighted", {"cc3m": 0}), lambda *_: None)
    assert all("/laion/" in p for p in left_out) and rep["cc3m"]["share"] == 0


def test_one_source_and_unknown_names(tmp_path):
    shards = _shards(tmp_path, {"": [10, 10]})  # tokenize/train/NNNNN.tar: a one-source run
    mixed, report = mix_shards(shards, tmp_path, MixingConfig(), lambda *_: None)
    assert mixed == shards and report == {"all": {"images": 20, "shards": 2, "repeats": 1, "share": 1.0}}
    with pytest.raises(ValueError, match=r"names \['cc3m'\], which are not sources of this run"):
        mix_shards(shards, tmp_path, MixingConfig("weighted", {"cc3m": 1}), lambda *_: None)
    with pytest.raises(ValueError, match="weights apply to rule: weighted"):
        MixingConfig("proportional", {"a": 1})
