"""Pins for ``evaluation.report`` details the broader report tests leave free (found by mutation testing):
missing values, paper-row matching, the FID section's title and note, the caption notes, markdown table
shape, the FID protocol's source, and what ``report.json`` can hold."""

import json
import math
from pathlib import Path

import numpy as np

from evaluation.report import _num, render_markdown, write_report


def _row(md, first_cell, after=""):
    text = md[md.index(after) :] if after else md
    return next(line for line in text.splitlines() if line.startswith(f"| {first_cell} |"))


def test_nan_prints_as_a_dash_and_inf_as_a_number():
    """A NaN (failed) figure reads as the dash; an infinite one is still printed."""
    assert _num(float("nan")) == "–" and _num(np.float64("nan")) == "–" and _num(None) == "–"
    assert _num(float("inf")) == "inf"
    md = render_markdown({"runs": {"PDM": {"fid": {"fid": float("nan"), "clean_fid": 3.0, "num_images": 4}}}})
    assert _row(md, "PDM") == "| PDM | – | 3.00 | 4 | 13.28 |"


def test_paper_row_is_matched_case_insensitively():
    """``paper_row`` (or the run's name) finds the paper's row whatever its case."""
    runs = {
        "pdm": {"fid": {"fid": 1.0, "num_images": 2}},
        "mine": {"fid": {"fid": 2.0, "num_images": 2}, "paper_row": "retrieval BASELINE"},
    }
    md = render_markdown({"runs": runs})
    assert _row(md, "pdm") == "| pdm | 1.00 | – | 2 | 13.28 |"
    assert _row(md, "mine") == "| mine | 2.00 | – | 2 | 19.12 |"


def test_fid_title_names_ms_coco_when_any_fid_run_has_a_paper_row():
    """One COCO run among runs without a paper row still titles the section Table 1."""
    fid = {"fid": 1.0, "num_images": 2}
    md = render_markdown({"runs": {"PDM": {"fid": fid}, "held-out": {"fid": fid, "paper_row": None}}})
    assert "## Image quality: FID on MS COCO (Table 1)\n" in md
    md = render_markdown({"runs": {"a": {"fid": fid, "paper_row": None}, "b": {"fid": fid, "paper_row": None}}})
    assert "## Image quality: FID\n" in md


def test_extractor_warning_only_for_a_stand_in():
    """The bold 'FID extractor' warning appears only when the protocol says ``stand_in``."""
    real = {"extractor": "pt_inception-2015-12-05", "stand_in": False, "note": "the published weights"}
    md = render_markdown({"runs": {"PDM": {"fid": {"fid": 1.0, "num_images": 2, "protocol": real}}}})
    assert "**FID extractor" not in md and "FID protocol:" in md and "- extractor: pt_inception-2015-12-05" in md
    stand_in = {**real, "stand_in": True, "note": "stand-in"}
    md = render_markdown({"runs": {"PDM": {"fid": {"fid": 1.0, "num_images": 2, "protocol": stand_in}}}})
    assert "**FID extractor: stand-in.**" in md


def test_results_fid_protocol_overrides_the_runs_one():
    """``results["fid_protocol"]`` is the one printed, not the first run's."""
    run_protocol = {"extractor": "from the run"}
    results = {
        "runs": {"PDM": {"fid": {"fid": 1.0, "num_images": 2, "protocol": run_protocol}}},
        "fid_protocol": {"extractor": "from the stage", "reference": {"count": 10}},
    }
    md = render_markdown(results)
    assert "- extractor: from the stage" in md and "from the run" not in md
    assert '- reference: {"count": 10}' in md  # dicts as JSON


def test_only_string_spice_protocols_become_notes():
    """A SPICE protocol entry that is not a message (e.g. a version flag) is not printed as a note."""
    cap = {"Bleu_4": 0.1, "METEOR": 0.1, "CIDEr": 0.1}
    runs = {"PDM": {"captioning": {"vs_prompt": cap, "protocol": {"spice": True}}}}
    assert "Note:" not in render_markdown({"runs": runs})


def test_a_note_is_followed_by_a_blank_line_before_the_next_section():
    cap = {"Bleu_4": 0.1, "METEOR": 0.1, "CIDEr": 0.1}
    runs = {
        "PDM": {
            "captioning": {"vs_prompt": cap, "protocol": {"spice": "SPICE skipped"}},
            "clip_score": {"clip_score": 0.3, "num_images": 2},
        }
    }
    assert "Note: SPICE skipped\n\n## CLIP score" in render_markdown({"runs": runs})


def test_every_table_has_one_separator_cell_per_column():
    """Each markdown table's separator row has as many cells as its header (else it does not render)."""
    cap = {"Bleu_4": 0.1, "METEOR": 0.1, "CIDEr": 0.1, "SPICE": 0.1}
    runs = {
        "PDM": {
            "fid": {"fid": 1.0, "num_images": 2},
            "captioning": {"vs_prompt": cap},
            "clip_score": {"clip_score": 0.3, "num_images": 2},
        }
    }
    lines = render_markdown({"runs": runs}).splitlines()
    seps = [i for i, line in enumerate(lines) if line.startswith("|---")]
    assert len(seps) == 3
    for i in seps:
        assert lines[i].count("---|") == lines[i - 1].count("|") - 1 == lines[i + 1].count("|") - 1


def test_report_json_holds_arrays_paths_and_nan(tmp_path):
    """Arrays become lists, 0-d arrays numbers, paths strings; NaN is kept (not an error)."""
    results = {
        "runs": {"PDM": {"fid": {"fid": float("nan"), "num_images": 2}}},
        "per_image": np.array([1.5, 2.5]),
        "scalar": np.array(3.0),
        "images": Path("/data/x"),
        "steps": (8, np.int64(16)),
    }
    paths = write_report(tmp_path, results)
    saved = json.loads(paths["report.json"].read_text())
    assert saved["per_image"] == [1.5, 2.5] and saved["scalar"] == 3.0 and saved["images"] == "/data/x"
    assert saved["steps"] == [8, 16] and math.isnan(saved["runs"]["PDM"]["fid"]["fid"])
