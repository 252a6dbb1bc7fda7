"""Building a study: pairs matched by prompt index, attention checks, balanced and reproducible layouts,
and clear refusals of bad inputs."""

from __future__ import annotations

import json
import random
from collections import Counter

import pytest

from evaluation.humaneval import HumanEvalError
from evaluation.humaneval.study import balanced_flips, build_study, layout, load_study, shown_item, winner
from tests.humaneval_utils import make_run, make_study


def test_pairs_match_prompts_and_checks_pair_a_sample_with_another_prompts(tmp_path):
    study = load_study(make_study(tmp_path, n_prompts=5, checks=3, baselines=("random", "ar")))
    kinds = Counter((p["kind"], p["group"]) for p in study.pairs)
    assert kinds == {("compare", "random"): 5, ("compare", "ar"): 5, ("check", "check"): 3}
    assert study.reference == "pdm" and study.baselines == ["random", "ar"]
    prompts = {
        json.loads(line)["index"]: json.loads(line)["prompt"]
        for line in (tmp_path / "runs/pdm/sample/prompts.jsonl").read_text().splitlines()
    }
    for p in study.pairs:
        assert p["prompt"] == prompts[p["prompt_index"]] and p["a"]["index"] == p["prompt_index"]
        assert (study.folder / p["a"]["image"]).is_file() and (study.folder / p["b"]["image"]).is_file()
        if p["kind"] == "compare":
            assert (p["a"]["run"], p["b"]["run"], p["b"]["index"]) == ("pdm", p["group"], p["prompt_index"])
        else:  # the same run's sample for a prompt with another text
            assert p["a"]["run"] == p["b"]["run"] and prompts[p["b"]["index"]] != p["prompt"]
    ids = [p["id"] for p in study.pairs]
    assert len(set(ids)) == len(ids) and all(i.isdigit() for i in ids)  # opaque: no run name, no kind


def test_balanced_flips():
    rng = random.Random(0)
    for n in range(12):
        flips = balanced_flips(n, rng)
        assert len(flips) == n and sum(flips) in (n // 2, (n + 1) // 2)


def test_layout_balanced_per_rater_and_reproducible(tmp_path):
    study = load_study(make_study(tmp_path, n_prompts=7, checks=3, baselines=("random", "ar")))
    groups = {p["id"]: p["group"] for p in study.pairs}
    total_left = Counter()
    for k in range(40):
        lay = layout(study, f"rater{k}")
        assert sorted(pid for pid, _ in lay) == sorted(groups)  # every pair once
        per_group = Counter(groups[pid] for pid, swapped in lay if swapped)
        for g, n in Counter(groups.values()).items():
            assert per_group[g] in (n // 2, (n + 1) // 2), (g, per_group[g], n)
        total_left.update(g for pid, swapped in lay for g in [groups[pid]] if not swapped)
    # 40 raters x 7 pairs: each rater has the reference on the left 3 or 4 times, the odd one drawn at random
    assert 40 * 3 < total_left["random"] < 40 * 4
    assert layout(study, "rater1") == layout(load_study(study.folder), "rater1")
    assert layout(study, "rater1") != layout(study, "rater2")


def test_same_seed_same_study_other_seed_other(tmp_path):
    runs = [str(make_run(tmp_path / "runs", n, 6, noise=0.1 * k)) for k, n in enumerate(("pdm", "random"))]
    docs = []
    for name, seed in (("s1", 3), ("s2", 3), ("s3", 4)):
        build_study(runs, tmp_path / name, attention_checks=2, seed=seed)
        docs.append(json.loads((tmp_path / name / "study.json").read_text())["pairs"])
    assert docs[0] == docs[1] and docs[0] != docs[2]
    s1, s3 = load_study(tmp_path / "s1"), load_study(tmp_path / "s3")
    assert layout(s1, "r") != layout(s3, "r")


def test_prompt_subset_and_names(tmp_path):
    a = make_run(tmp_path / "runs", "one", 6)
    b = make_run(tmp_path / "runs", "two", 6, noise=0.2)
    build_study([f"ours={a}", f"base={b / 'sample'}"], tmp_path / "st", attention_checks=0, seed=1, max_prompts=3)
    study = load_study(tmp_path / "st")
    assert study.reference == "ours" and study.baselines == ["base"] and len(study.pairs) == 3


def test_sides_and_answers_agree():
    pair = {"a": {"run": "pdm"}, "b": {"run": "random"}}
    assert shown_item(pair, False, "left")["run"] == "pdm" and shown_item(pair, True, "left")["run"] == "random"
    for swapped in (False, True):
        for side in ("left", "right"):
            assert winner(side, swapped) == ("a" if shown_item(pair, swapped, side)["run"] == "pdm" else "b")
        assert winner("same", swapped) == "same"


def test_refusals(tmp_path):
    a = make_run(tmp_path / "runs", "a", 4)
    with pytest.raises(HumanEvalError, match="at least two runs"):
        build_study([str(a)], tmp_path / "s")
    with pytest.raises(HumanEvalError, match="no sample/prompts.jsonl"):
        build_study([str(a), str(tmp_path / "nowhere")], tmp_path / "s")
    with pytest.raises(HumanEvalError, match="names repeat"):
        build_study([str(a), f"a={a}"], tmp_path / "s")
    other = make_run(tmp_path / "other", "b", 4)
    lines = (other / "sample/prompts.jsonl").read_text().splitlines()
    rec = json.loads(lines[2])
    rec["prompt"] = "a large yellow triangle"
    lines[2] = json.dumps(rec)
    (other / "sample/prompts.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(HumanEvalError, match="prompt 2 differs between runs a .* and b"):
        build_study([str(a), str(other)], tmp_path / "s")
    missing = make_run(tmp_path / "m", "c", 4)
    (missing / "sample/images/00000001.png").unlink()
    with pytest.raises(HumanEvalError, match="run c: no image for prompt 1"):
        build_study([str(a), str(missing)], tmp_path / "s")
    b = make_run(tmp_path / "runs", "b", 4)
    build_study([str(a), str(b)], tmp_path / "s")
    with pytest.raises(HumanEvalError, match="already holds a study"):
        build_study([str(a), str(b)], tmp_path / "s")
    with pytest.raises(HumanEvalError, match="no study.json"):
        load_study(tmp_path / "empty")
