"""Pins for ``evaluation.evaluate_inputs.preflight`` (found by mutation testing), on a hand-made stage context:
which images are the FID reference and ground truth (synthetic, held-out, MS COCO), the COCO references,
the checks that refuse a plan and the notes it carries. No model or network is built."""

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import evaluation.evaluate_inputs as ei
from core.stage import StageError


def _png(path: Path, side: int = 8) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((side, side, 3), np.uint8)).save(path)
    return path


def _ctx(tmp_path, recs, source="synthetic", synthetic_eval=3, **ev):
    sample = tmp_path / "sample"
    sample.mkdir(parents=True, exist_ok=True)
    (sample / "prompts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    for r in recs:
        _png(sample / "images" / f"{r['index']:08d}.png")
    split = tmp_path / "synthetic" / "eval"
    split.mkdir(parents=True, exist_ok=True)
    names = [f"eval_{i:05d}.png" for i in range(synthetic_eval)]
    pd.DataFrame({"URL": [f"http://synthetic/eval/{n}" for n in names]}).to_parquet(split / "urls.parquet")
    for n in names:
        _png(split / "images" / n)
    evcfg = dict(
        metrics=["fid"],
        inception_weights=None,
        coco_images=None,
        captioner_path=None,
        clip_checkpoint=None,
        clip_model="ViT-B-32",
        ar_export=None,
    )
    evcfg.update(ev)
    config = SimpleNamespace(
        eval=SimpleNamespace(**evcfg), data=SimpleNamespace(download=SimpleNamespace(source=source))
    )
    return SimpleNamespace(
        config=config,
        input_dir=lambda name: tmp_path / name,
        input_manifest=lambda name: {"stage": name},
        out_dir=tmp_path / "evaluate",
    )


def _synthetic_recs(n=2):
    return [{"index": i, "prompt": f"shape {i}", "image": f"eval/images/eval_{i:05d}.png"} for i in range(n)]


def _coco_recs(n=2):
    return [
        {"index": i, "prompt": f"p{i}", "refs": [f"p{i}", f"q{i}"], "image_id": i, "file_name": f"COCO_{i}.jpg"}
        for i in range(n)
    ]


def test_synthetic_plan_reads_the_synthetic_eval_split(tmp_path):
    ctx = _ctx(tmp_path, _synthetic_recs(), metrics=["fid", "attributes", "fid"])
    plan = ei.preflight(ctx)
    split = tmp_path / "synthetic" / "eval"
    assert plan.metrics == ["fid", "attributes"] and plan.synthetic and plan.refs is None and not plan.heldout
    assert plan.fid_reference == [split / "images" / f"eval_{i:05d}.png" for i in range(3)]
    assert plan.fid_reference_name == f"synthetic eval split {split}"
    assert plan.gt_images == [tmp_path / "synthetic" / "eval" / "images" / f"eval_{i:05d}.png" for i in range(2)]
    assert plan.image_size == (8, 8) and plan.prompts == ["shape 0", "shape 1"]
    assert any("stand-in Inception extractor" in n for n in plan.notes)


def test_no_stand_in_note_with_inception_weights(tmp_path):
    weights = tmp_path / "pt_inception.pth"
    weights.write_bytes(b"")
    plan = ei.preflight(_ctx(tmp_path, _synthetic_recs(), inception_weights=str(weights)))
    assert not any("stand-in" in n for n in plan.notes)


def test_synthetic_reference_of_mixed_sizes_is_refused(tmp_path):
    ctx = _ctx(tmp_path, _synthetic_recs())
    _png(tmp_path / "synthetic" / "eval" / "images" / "eval_00002.png", side=16)
    with pytest.raises(ValueError, match="mixed sizes"):
        ei.preflight(ctx)


def test_fd_vq_needs_synthetic_data(tmp_path):
    with pytest.raises(StageError, match="'fd_vq' compares with the synthetic eval images"):
        ei.preflight(_ctx(tmp_path, _coco_recs(), source="laion", metrics=["fd_vq"]))


@pytest.mark.parametrize("source", ["synthetic", "laion"])
def test_heldout_prompts_use_the_downloaded_images(tmp_path, monkeypatch, source):
    """Held-out prompts: the FID reference is the whole downloaded split (even for synthetic data), the ground
    truth each prompt's own image, in prompt order."""
    held = {k: _png(tmp_path / "held" / f"{k}.png") for k in ("k0", "k1", "k2")}
    seen = []

    def fake_heldout_images(manifest, folder, side, n):
        seen.append((manifest, folder, side, n))
        return held

    monkeypatch.setattr(ei, "heldout_images", fake_heldout_images)
    recs = [{**r, "heldout": k, "refs": [r["prompt"]]} for r, k in zip(_synthetic_recs(), ("k2", "k0"))]
    plan = ei.preflight(_ctx(tmp_path, recs, source=source))
    assert plan.heldout and plan.fid_reference == list(held.values())
    assert plan.gt_images == [held["k2"], held["k0"]]
    what = (
        "synthetic eval split, as downloaded" if source == "synthetic" else "held-out eval split of the downloaded data"
    )
    assert plan.fid_reference_name == f"the {what} (3 images)"
    assert seen == [({"stage": "download"}, tmp_path / "evaluate" / "heldout", 8, 2)]


def test_a_prompt_missing_from_the_heldout_split_is_a_stage_error(tmp_path, monkeypatch):
    monkeypatch.setattr(ei, "heldout_images", lambda *a: {"k0": _png(tmp_path / "held" / "k0.png")})
    recs = [{**r, "heldout": k, "refs": ["x"]} for r, k in zip(_synthetic_recs(), ("k0", "gone"))]
    with pytest.raises(StageError, match=r"prompts \[1\] of prompts.jsonl are not in the download stage's held-out"):
        ei.preflight(_ctx(tmp_path, recs, source="laion"))


def test_coco_plan_keeps_the_references_and_uses_the_prompt_images(tmp_path, monkeypatch):
    import evaluation.coco as coco

    seen = []
    monkeypatch.setattr(
        coco, "image_paths", lambda prompts, d: seen.append(prompts) or [f"{d}/{p.file_name}" for p in prompts]
    )
    plan = ei.preflight(_ctx(tmp_path, _coco_recs(), source="laion", coco_images="/val2014"))
    assert plan.refs == [["p0", "q0"], ["p1", "q1"]] and not plan.synthetic
    assert plan.gt_images == [Path("/val2014/COCO_0.jpg"), Path("/val2014/COCO_1.jpg")]
    assert plan.fid_reference == plan.gt_images
    assert plan.fid_reference_name == "MS COCO val2014 /val2014 (the 2 prompt images)"
    assert [(p.image_id, p.file_name) for p in seen[0]] == [(0, "COCO_0.jpg"), (1, "COCO_1.jpg")]


def test_coco_prompts_without_coco_fields_are_a_stage_error(tmp_path):
    recs = [{"index": 0, "prompt": "p", "refs": ["p"]}]
    with pytest.raises(StageError, match="prompts.jsonl has no 'image_id' field"):
        ei.preflight(_ctx(tmp_path, recs, source="laion", coco_images="/val2014"))


def test_notes_for_metrics_without_weights(tmp_path):
    ctx = _ctx(tmp_path, _synthetic_recs(), metrics=["captioning", "clip_score", "retrieval"])
    notes = ei.preflight(ctx).notes
    assert any(n.startswith("Captioning metrics not measured: eval.captioner_path is not set") for n in notes)
    assert any(n.startswith("CLIP score not measured: eval.clip_checkpoint is not set") for n in notes)
    assert any(n.startswith("Retrieval baseline not measured: eval.clip_checkpoint is not set") for n in notes)


def test_a_home_relative_captioner_folder_is_found(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "home" / "captioner").mkdir(parents=True)
    ctx = _ctx(tmp_path, _synthetic_recs(), metrics=["captioning"], captioner_path="~/captioner")
    assert ei.preflight(ctx).notes == []


def _export(folder: Path, files=("model.safetensors", "config.yaml")) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for f in files:
        (folder / f).write_text("x")
    return folder


@pytest.mark.parametrize("missing", ["model.safetensors", "config.yaml"])
def test_speed_needs_both_export_files(tmp_path, missing):
    keep = [f for f in ("model.safetensors", "config.yaml") if f != missing]
    _export(tmp_path / "train" / "export", keep)
    with pytest.raises(FileNotFoundError, match=f"exported model file not found: .*{missing}"):
        ei.preflight(_ctx(tmp_path, _synthetic_recs(), metrics=["speed"]))


def test_speed_checks_the_ar_export(tmp_path):
    _export(tmp_path / "train" / "export")
    ar = _export(tmp_path / "ar", ["config.yaml"])
    with pytest.raises(FileNotFoundError, match="eval.ar_export file not found: .*model.safetensors"):
        ei.preflight(_ctx(tmp_path, _synthetic_recs(), metrics=["speed"], ar_export=str(ar)))
    _export(ar)
    assert ei.preflight(_ctx(tmp_path, _synthetic_recs(), metrics=["speed"], ar_export=str(ar))).notes == []
