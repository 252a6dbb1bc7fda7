"""Checkpoint lineage and resume choice (``training.checkpoint``) on checkpoint folders written by hand: every
lineage part is compared (``version`` too), a checkpoint without a lineage is refused by ``auto``, ``never`` and
``force`` do what they say, pruning keeps what ``latest`` names, step order past 10^8 steps, and the published
export records what made it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from training import checkpoint as ckpt

LINEAGE = {
    "version": 2,
    "inputs": {"text": "x", "tokens": "t"},
    "data": {"shards": "abc"},
    "model": {"dim": 128},
    "train": {"lr": 0.001, "seed": 0},
    "text_encoder": {"dtype": "float32"},
}


def complete(d: Path, step: int, lineage=None, latest: bool = True, **extra) -> str:
    tag = ckpt.tag_for(step)
    (d / tag).mkdir(parents=True)
    done = {"step": step, "world_size": 1, "time": 0.0, **({"lineage": lineage} if lineage is not None else {})}
    (d / tag / ckpt.COMPLETE).write_text(json.dumps({**done, **extra}))
    if latest:
        (d / ckpt.LATEST).write_text(tag)
    return tag


def quiet(_msg: str) -> None:
    pass


def test_every_lineage_part_is_compared_including_plain_values():
    assert ckpt.lineage_changes(LINEAGE, LINEAGE) == []
    assert ckpt.lineage_changes({**LINEAGE, "version": 1}, LINEAGE) == ["version: 1 -> 2"]
    older = {k: v for k, v in LINEAGE.items() if k != "version"}  # a version-1 lineage had no such key
    assert ckpt.lineage_changes(older, LINEAGE) == ["version: None -> 2"]
    other = {**LINEAGE, "inputs": {"text": "x", "tokens": "u"}, "data": {"shards": None}}
    assert ckpt.lineage_changes(other, LINEAGE) == ["inputs.tokens: 'u' -> 't'", "data.shards: None -> 'abc'"]
    # a part only the older lineage has counts as changed too (None in the new one), either way round
    assert ckpt.lineage_changes({**LINEAGE, "extra": {"k": 1}}, LINEAGE) == ["extra: {'k': 1} -> None"]
    assert ckpt.lineage_changes(LINEAGE, {**LINEAGE, "extra": {"k": 1}}) == ["extra: None -> {'k': 1}"]


def test_auto_resumes_the_same_lineage_and_refuses_one_without_a_lineage(tmp_path):
    d = tmp_path / "checkpoints"
    tag = complete(d, 4, LINEAGE)
    assert ckpt.choose_resume(d, LINEAGE, "auto", quiet) == (tag, [])
    assert ckpt.choose_resume(d, LINEAGE, "never", quiet) == (None, [])
    e = tmp_path / "old"
    old = complete(e, 4)  # written before checkpoints recorded their lineage
    with pytest.raises(ckpt.ResumeRefused, match="written before checkpoints recorded one"):
        ckpt.choose_resume(e, LINEAGE, "auto", quiet)
    assert ckpt.choose_resume(e, LINEAGE, "force", quiet) == (
        old,
        ["its lineage (written before checkpoints recorded one)"],
    )
    assert ckpt.choose_resume(tmp_path / "none", LINEAGE, "auto", quiet) == (None, [])


def test_auto_refuses_naming_the_changes_never_starts_over_force_continues(tmp_path):
    d = tmp_path / "checkpoints"
    tag = complete(d, 6, LINEAGE)
    new = {**LINEAGE, "train": {"lr": 0.002, "seed": 0}, "version": 3}
    changes = ["version: 2 -> 3", "train.lr: 0.001 -> 0.002"]
    with pytest.raises(ckpt.ResumeRefused, match=r"step_00000006 was made from something else: version: 2 -> 3; "):
        ckpt.choose_resume(d, new, "auto", quiet)
    assert ckpt.choose_resume(d, new, "never", quiet) == (None, changes)
    assert ckpt.choose_resume(d, new, "force", quiet) == (tag, changes)
    many = {**LINEAGE, "model": {f"k{i}": i for i in range(8)}}
    with pytest.raises(ckpt.ResumeRefused, match=r"\(\+3 more\)"):  # 9 changes: 6 shown
        ckpt.choose_resume(d, many, "auto", quiet)


def test_resume_follows_a_complete_latest_else_the_newest_complete_step(tmp_path):
    d = tmp_path / "checkpoints"
    complete(d, 99_999_999, LINEAGE)
    big = complete(d, 100_000_000, LINEAGE, latest=False)  # 9 digits: by step, not by name
    assert ckpt.complete_tags(d) == ["step_99999999", big]
    (d / ckpt.LATEST).write_text("step_100000002")  # a pointer to nothing complete is not followed
    (d / "step_100000002").mkdir()
    assert ckpt.find_resume(d, quiet) == big


def test_prune_keeps_the_newest_and_what_latest_names(tmp_path):
    d = tmp_path / "checkpoints"
    for step in (2, 4, 6):
        complete(d, step, LINEAGE)
    (d / ckpt.LATEST).write_text(ckpt.tag_for(2))  # latest names an older checkpoint (a resume from it)
    (d / "step_00000001").mkdir()  # an unfinished save older than latest: debris
    (d / "step_00000008").mkdir()  # newer than latest: a save that may be under way
    ckpt.prune(d, keep_last=1)
    assert sorted(p.name for p in d.iterdir() if p.is_dir()) == ["step_00000002", "step_00000006", "step_00000008"]


def test_the_published_export_records_the_checkpoint_it_came_from(tmp_path):
    import torch

    d = tmp_path / "checkpoints"
    tag = complete(d, 4, LINEAGE)
    ckpt.write_export(d / tag, {"w": torch.ones(2)}, None, "train: {}\n", {"kind": "pdm"})
    ckpt.publish_export(d / tag, tmp_path / "export")
    recorded = json.loads((tmp_path / "export" / ckpt.LINEAGE).read_text())
    assert recorded == json.loads((d / tag / ckpt.COMPLETE).read_text())
    assert recorded["step"] == 4 and recorded["lineage"] == LINEAGE
