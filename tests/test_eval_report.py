"""The report: paper-like tables with only measured rows, the FID protocol, and the figures."""

import json

import numpy as np
import pytest
from PIL import Image

from evaluation.report import render_markdown, save_grid, save_progression, write_report

PROTOCOL = {
    "extractor": "torch-fidelity FeatureExtractorInceptionV3",
    "weights_sha256": "abc",
    "stand_in": True,
    "note": "stand-in, not comparable to published FID",
    "resize": 256,
    "num_generated": 30,
}


def _results():
    cap = {"Bleu_4": 0.205, "METEOR": 0.197, "CIDEr": 0.748, "ROUGE_L": 0.4}
    return {
        "title": "tiny run",
        "runs": {
            "PDM": {
                "fid": {"fid": np.float64(14.5), "clean_fid": 15.25, "num_images": 30, "protocol": PROTOCOL},
                "captioning": {
                    "vs_prompt": cap,
                    "vs_coco_refs": {**cap, "CIDEr": 0.9},
                    "protocol": {"spice": "SPICE skipped: put x.jar in /lib"},
                },
                "clip_score": {"clip_score": 0.61, "num_images": 30},
            },
            "Retrieval Baseline": {"fid": {"fid": 20.0, "clean_fid": 21.0, "num_images": 30}},
            "Ground Truth (upper bound)": {"captioning": {"vs_coco_refs": {**cap, "SPICE": 0.2}}},
            "my ablation": {"fid": {"fid": 30.0, "num_images": 30}, "paper_row": "minDALL-E"},
        },
        "speed": [
            {
                "method": "progressive",
                "steps": 1024,
                "tokens_per_step": 1,
                "sequential_passes": 1024,
                "seconds_per_image": 10.0,
                "device": "cpu",
            },
            {
                "method": "progressive",
                "steps": 8,
                "tokens_per_step": 128,
                "sequential_passes": 8,
                "seconds_per_image": 0.1,
                "quality": {"fid": 40.0, "cider": 0.5, "num_images": 30},
                "device": "cpu",
            },
            {"steps": 32, "sequential_passes": 32, "seconds_per_image": 0.4, "device": "cpu"},
        ],  # minimal
    }


def _row(md, first_cell, after=""):
    text = md[md.index(after) :] if after else md
    return next(line for line in text.splitlines() if line.startswith(f"| {first_cell} |"))


def test_tables_like_the_paper(tmp_path):
    paths = write_report(tmp_path, _results())
    md = paths["report.md"].read_text()
    assert md.startswith("# tiny run")
    assert "**FID extractor: stand-in, not comparable to published FID.**" in md
    assert _row(md, "PDM") == "| PDM | 14.50 | 15.25 | 30 | 13.28 |"
    assert _row(md, "Retrieval Baseline") == "| Retrieval Baseline | 20.00 | 21.00 | 30 | 19.12 |"
    assert _row(md, "my ablation") == "| my ablation | 30.00 | – | 30 | 24.60 |"
    assert "CogView" not in md and "Imagen" not in md  # unmeasured paper rows are not printed
    assert "- weights_sha256: abc" in md and "FID protocol:" in md
    prompt_row = _row(md, "PDM", after="input prompt")
    assert prompt_row == "| PDM | 20.5 | 19.7 | 74.8 | – | 20.5 | 19.7 | 74.8 | 13.5 |"
    assert (
        _row(md, "Ground Truth (upper bound)", after="COCO references")
        == "| Ground Truth (upper bound) | 20.5 | 19.7 | 74.8 | 20.0 | 32.5 | 27.5 | 108.3 | 20.4 |"
    )
    assert "Note: SPICE skipped: put x.jar in /lib" in md
    assert _row(md, "PDM", after="CLIP score") == "| PDM | 61.00 | 30 |"
    speed = md[md.index("Table 4") :]  # evaluation.speed.speed_markdown: quality beside T, then timings
    assert "| method | T (steps) | FID (↓) | CIDEr (↑) | N (quality) | tokens / step |" in speed
    assert (
        "| progressive | 8 | 40.00 | 50.0 | 30 | 128 | 8 | 0.1000 | – | – | 100.0× | – | 8 | 19.80 | 53.5 | "
        "97.1× |" in speed
    )
    assert "| progressive | 32 | – | – | – | 32 | 32 | 0.4000 | – | – | 25.0× | – | – | – | – | – |" in speed
    assert "speed-up vs T=1024" in speed and "Measured on: cpu" in speed and "L = 1024" in speed
    saved = json.loads(paths["report.json"].read_text())
    assert saved["runs"]["PDM"]["fid"]["fid"] == 14.5 and saved["speed"][1]["steps"] == 8


def test_the_fid_title_names_ms_coco_only_for_a_coco_evaluation():
    """Synthetic and held-out runs carry no paper row (evaluate stage): their FID is not Table 1's."""
    fid = {"fid": 1.0, "num_images": 2}
    assert "FID on MS COCO (Table 1)" in render_markdown({"runs": {"PDM": {"fid": fid}}})
    md = render_markdown({"runs": {"PDM": {"fid": fid, "paper_row": None}}})
    assert "## Image quality: FID\n" in md and "MS COCO" not in md


def test_only_measured_sections(tmp_path):
    md = render_markdown({"runs": {"PDM": {"clip_score": {"clip_score": 0.5, "num_images": 2}}}})
    assert "CLIP score" in md and "FID" not in md and "Table 2" not in md and "Table 4" not in md
    assert "No metric was measured." in render_markdown({})


def _steps(n, size=8):
    return [np.full((size, size, 3), 10 * i, np.uint8) for i in range(n)]


def test_grid(tmp_path):
    path = save_grid(_steps(5), tmp_path / "grid.png", cols=3, pad=2)
    grid = np.asarray(Image.open(path))
    assert grid.shape == (2 * 8 + 3 * 2, 3 * 8 + 4 * 2, 3)
    assert (grid[2:10, 12:20] == 10).all() and (grid[12:20, 12:20] == 40).all()  # #1 top middle, #4 bottom middle
    assert (grid[12:20, 22:30] == 255).all()  # no sixth image: background


def test_progression_strip_and_gif(tmp_path):
    out = save_progression(
        _steps(20), tmp_path / "prog.png", tmp_path / "prog.gif", max_columns=5, frame_ms=100, final_ms=900
    )
    strip = np.asarray(Image.open(out["png"]))
    assert strip.shape == (8 + 4, 5 * 8 + 6 * 2, 3)
    assert strip[2, 2, 0] == 0 and strip[2, 2 + 4 * 10, 0] == 190  # first and last step are shown
    gif = Image.open(out["gif"])
    assert gif.n_frames == 20
    gif.seek(19)
    assert gif.info["duration"] == 900 and np.asarray(gif.convert("RGB"))[0, 0, 0] == 190


def test_progression_mixed_sizes_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="mixed sizes"):
        save_progression(_steps(3) + _steps(1, size=16), tmp_path / "p.png")
