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


# ``weighted`` turns target shares into whole repeats by rounding to the nearest whole number (not truncating or
# rounding up): r_s = round((w_s / n_s) / min_t (w_t / n_t)).
def test_weighted_repeats_are_rounded_to_the_nearest_whole_number(tmp_path):
    # 100 images each; weights 1, 2.6, 2.4, 1.4 -> exact repeats 1, 2.6, 2.4, 1.4 -> 1, 3, 2, 1
    shards = _shards(tmp_path, {"a": [100], "b": [60, 40], "c": [100], "d": [100]})
    weights = {"a": 1.0, "b": 2.6, "c": 2.4, "d": 1.4}
    mixed, report = mix_shards(shards, tmp_path, MixingConfig("weighted", weights), log=lambda *_: None)
    assert {src: r["repeats"] for src, r in report.items()} == {"a": 1, "b": 3, "c": 2, "d": 1}
    assert Counter(p.split("/")[-2] for p in mixed) == {"a": 1, "b": 6, "c": 2, "d": 1}  # b has 2 shards
    total = 100 * (1 + 3 + 2 + 1)
    assert report["b"]["share"] == round(300 / total, 4) and report["c"]["share"] == round(200 / total, 4)


def test_weighted_repeats_round_a_ratio_from_unequal_sizes(tmp_path):
    # equal weights (the default 1), 200 / 100 / 70 images: w/n = 1/200, 1/100, 1/70 -> 1, 2, 2.86 x the least
    shards = _shards(tmp_path, {"a": [200], "b": [100], "c": [70]})
    mixed, report = mix_shards(shards, tmp_path, MixingConfig("weighted", {}), log=lambda *_: None)
    assert {src: r["repeats"] for src, r in report.items()} == {"a": 1, "b": 2, "c": 3}
    assert Counter(p.split("/")[-2] for p in mixed) == {"a": 1, "b": 2, "c": 3}
