"""The ``superres`` stage and the ``sample`` stage chaining the generator (8x8 tokens, 32 px) into CogView2's
super-resolution (16x16 tokens, 64 px), on a hand-built tiny run (``tests.eval_utils.make_run``)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from pipeline import cli
from tests.eval_utils import make_run, run
from tests.trainer_utils import one_thread  # noqa: F401  (the shared autouse fixture)

SR = [
    "sr.enabled=true",
    "sr.n_images=12",
    "sr.tokenizer.steps=2",
    "sr.tokenizer.batch_size=4",
    "sr.tokenizer.z_channels=16",
    "sr.tokenizer.embed_dim=8",
    "sr.model.dim=32",
    "sr.model.layers=1",
    "sr.model.heads=2",
    "sr.model.ffn_dim=64",
    "sr.model.text_dim=32",
    "sr.train.steps=3",
    "sr.train.batch_size=4",
    "sr.train.checkpoint_every=3",
    "sr.train.warmup_steps=0",
]


def test_superres_stage_trains_resumes_and_sampling_chains_it(tmp_path):
    cfg = make_run(tmp_path, SR)
    m = run(cfg, "superres")
    out = tmp_path / "run" / "superres"
    assert m["counts"] == {"pairs": 12, "steps": 3} and m["metrics"]["loss"] > 0
    with np.load(out / "pairs.npz") as f:
        assert f["lo"].shape == (12, 64) and f["hi"].shape == (12, 256)  # 8x8 and 16x16 token grids
    assert (out / "export" / "model.safetensors").is_file() and (out / "tokenizer" / "vqgan.safetensors").is_file()
    pairs_mtime = (out / "pairs.npz").stat().st_mtime_ns

    longer = make_run(tmp_path, SR + ["sr.train.steps=5"])  # more steps: resumes from the checkpoint of step 3
    m2 = run(longer, "superres")
    assert m2["resumed_from"] == 3 and m2["counts"]["steps"] == 5
    assert (out / "pairs.npz").stat().st_mtime_ns == pairs_mtime  # the same tokenizers and images: pairs kept
    wider = make_run(tmp_path, SR + ["sr.train.steps=5", "sr.model.ffn_dim=32"])  # another model: from scratch
    assert run(wider, "superres")["resumed_from"] == 0

    s = run(wider, "sample")
    sample = tmp_path / "run" / "sample"
    assert Image.open(sample / "images" / "00000000.png").size == (64, 64)  # decoded by the 64 px tokenizer
    assert np.load(sample / "tokens.npy").shape == (10, 64)  # the generator's own 8x8 tokens are kept
    assert s["inputs"]["superres"] == run(wider, "superres")["fingerprint"]
    run(wider, "evaluate")  # the attribute reader takes the 64 px images
    assert "CogView2 super-resolution" in (tmp_path / "run" / "evaluate" / "report.md").read_text()

    # pt2i generate on this run chains the same SR model: the eval prompts, in order, give the stage's images
    rd = tmp_path / "run"
    prompts = [json.loads(x)["prompt"] for x in (sample / "prompts.jsonl").read_text().splitlines()]
    (tmp_path / "prompts.txt").write_text("\n".join(prompts) + "\n")
    assert cli.main(["generate", str(rd), "--prompts-file", str(tmp_path / "prompts.txt"), "--name", "sr"]) == 0
    assert np.array_equal(np.load(rd / "generate" / "sr" / "tokens.npy"), np.load(sample / "tokens.npy"))
    for i in range(len(prompts)):
        name = f"images/{i:08d}.png"
        assert Image.open(rd / "generate" / "sr" / name).size == (64, 64)
        assert (rd / "generate" / "sr" / name).read_bytes() == (sample / name).read_bytes(), name
    job = json.loads((rd / "generate" / "sr" / "job.json").read_text())
    assert job["inputs"]["superres"] == s["inputs"]["superres"]


@pytest.mark.parametrize(
    "overrides, match",
    [
        (["sr.model.hi_grid=8"], r"sr.model.hi_grid \(8\) != the grid of sr.tokenizer"),
        (["sr.model.text_dim=16"], r"sr.model.text_dim \(16\) != model.text_dim"),
        (["sr.image_size=32", "sr.tokenizer.resolution=32", "sr.model.hi_grid=8"], "must exceed"),
        (["data.download.source=laion", "data.download.url_list=urls.parquet"], "data.download.source: synthetic"),
        (["sr.model.window=8"], "window must be odd"),
    ],
)
def test_sr_section_is_checked_against_the_generator_and_its_tokenizers(tmp_path, overrides, match):
    from core.config import ConfigError
    from tests.eval_utils import load

    with pytest.raises(ConfigError, match=match):
        load(tmp_path / "run", SR + overrides)
