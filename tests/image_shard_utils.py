"""Test data in the download stage's layout: webdataset image shards as img2dataset writes them
(``KEY.jpg``/``.png``, ``KEY.txt``, ``KEY.json``) and a download manifest listing them."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image


def write_image_shard(path: Path, images, captions, fmt: str = "PNG", first_key: int = 0, order=None) -> Path:
    """One image shard of ``images`` (uint8 [N, H, W, 3]) with their ``captions``; keys are 9 digits, written in
    ``order`` (indices; default in key order: img2dataset writes them in the order their downloads finish)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for i in order if order is not None else range(len(images)):
            img, cap, key = images[i], captions[i], f"{first_key + i:09d}"
            buf = io.BytesIO()
            Image.fromarray(np.asarray(img, np.uint8)).save(buf, format=fmt)
            ext = "jpg" if fmt == "JPEG" else fmt.lower()
            for name, data in (
                (f"{key}.{ext}", buf.getvalue()),
                (f"{key}.txt", cap.encode()),
                (f"{key}.json", json.dumps({"key": key, "caption": cap}).encode()),
            ):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


def write_split(folder: Path, images, captions, per_shard: int, shuffle: bool = False) -> dict:
    """Shards ``folder/NNNNN.tar`` of ``per_shard`` samples (``shuffle``: each in reverse key order); the
    split's entry of a download manifest."""
    shards = []
    for s, start in enumerate(range(0, len(images), per_shard)):
        end = start + per_shard
        n = len(images[start:end])
        order = list(range(n))[::-1] if shuffle else None
        write_image_shard(folder / f"{s:05d}.tar", images[start:end], captions[start:end], first_key=start, order=order)
        shards.append({"name": f"{s:05d}.tar", "count": n, "success": n})
    return {"folder": str(folder), "shards": shards}


def write_download(run: Path, splits: dict[str, tuple], per_shard: int = 10, shuffle: bool = False) -> dict:
    """The download stage's shards of {split: (images, captions)} and its ``manifest.json``, where the stage
    writes them: ``run/download/<split>/``, or ``run/download/sources/<source>/<split>/`` for ``<split>/<source>``
    (every source's keys start at 0)."""

    def folder(name: str) -> Path:
        split, _, source = name.partition("/")
        return run / "download" / ("sources/" + source + "/" + split if source else split)

    manifest = {"splits": {name: write_split(folder(name), *data, per_shard, shuffle) for name, data in splits.items()}}
    (run / "download").mkdir(parents=True, exist_ok=True)
    (run / "download" / "manifest.json").write_text(json.dumps(manifest))
    return manifest


def tokenize_lineage_probe(run: Path, monkeypatch):
    """``probe(*overrides)``: the lineage the tokenize stage records for ``configs/tiny.yaml`` with those ``--set``
    overrides, on a two-image download in ``run`` (the text and tokenizer stages stand in by their manifests;
    nothing is encoded)."""
    import tokenization.tokenize_stage as ts
    from core.stage import StageContext, registered
    from pipeline.experiment import load_config

    write_download(run, {"train": (np.zeros((2, 8, 8, 3), np.uint8), ["a red circle", "a blue square"])})
    for name in ("text", "tokenizer"):
        (run / name).mkdir(parents=True)
        (run / name / "manifest.json").write_text(json.dumps({"stage": name, "identity": f"{name}-id"}))
    seen = []
    monkeypatch.setattr(ts, "run_tokenize", lambda *a, lineage=None, **k: seen.append(lineage) or {})
    config = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"

    def probe(*sets: str) -> dict:
        cfg = load_config(config, [f"run_dir={run}", *sets])
        ts.tokenize_stage(StageContext(cfg, run, registered()["tokenize"], run / "tokenize", log=lambda m: None))
        return seen[-1]

    return probe
