"""Pins for ``evaluation.evaluate_report`` (found by mutation testing): which figure the manifest carries under
which name, the evaluation-set lines, the FD / token-NLL / notes / figures sections, and how the extra
sections are joined to ``evaluation.report``'s markdown."""

from evaluation.evaluate_report import GT, RUN, extra_markdown, headline_metrics, write_full_report

SET = {"prompts": 10, "prompt_source": "synthetic eval split", "sampler": "T=4, cfg 3.0", "model": "train/export"}


def _results(**kw):
    return {"evaluation_set": SET, "runs": {RUN: {}}, **kw}


def test_headline_metrics_names_each_figure_of_the_run():
    """Each manifest metric is the run's own figure (not the ground truth's), under its documented name."""
    cap = {"Bleu_4": 0.2, "CIDEr": 0.7}
    runs = {
        RUN: {
            "fid": {"fid": 14.5, "clean_fid": 15.25, "num_images": 10},
            "attributes": {"match": 0.4, "num_images": 10},
            "clip_score": {"clip_score": 0.61, "num_images": 10},
            "token_nll": {"token_nll": 3.2, "token_nll_sd": 0.1, "samples": 6},
            "fd_vq": {"fd_vq": 1.5, "num_images": 10},
            "captioning": {"vs_prompt": cap, "vs_coco_refs": {"Bleu_4": 0.9, "CIDEr": 1.9}},
        },
        GT: {"fid": {"fid": 0.0, "clean_fid": 0.0}, "attributes": {"match": 1.0}},
    }
    assert headline_metrics(runs) == {
        "fid": 14.5,
        "clean_fid": 15.25,
        "attribute_match": 0.4,
        "clip_score": 0.61,
        "token_nll": 3.2,
        "fd_vq": 1.5,
        "caption_Bleu_4": 0.2,
        "caption_CIDEr": 0.7,
    }
    assert headline_metrics({RUN: {"fid": {"fid": 2.0}}}) == {"fid": 2.0} and headline_metrics({}) == {}


def test_evaluation_set_lines_with_the_fid_reference_before_the_blank_line():
    lines = extra_markdown(_results(fid_reference="synthetic eval split run/synthetic/eval"))
    assert lines[:7] == [
        "## Evaluation set",
        "",
        "- prompts: 10 from synthetic eval split",
        "- sampler: T=4, cfg 3.0",
        "- model: train/export",
        "- FID reference set: synthetic eval split run/synthetic/eval",
        "",
    ]
    assert extra_markdown(_results())[:6] == lines[:5] + [""]


def test_fd_vq_rows_nll_line_and_notes():
    runs = {
        RUN: {
            "fd_vq": {"fd_vq": 1.234567, "num_images": 10},
            "token_nll": {"token_nll": 3.14159, "token_nll_sd": 0.27182, "samples": 6},
        },
        GT: {"fd_vq": {"fd_vq": 0.5, "num_images": 10}},
    }
    md = "\n".join(extra_markdown(_results(runs=runs, notes=["first note", "second note"])))
    assert f"| {RUN} | 1.2346 | 10 |\n| {GT} | 0.5000 | 10 |" in md
    assert "3.1416 nats per token (sd over samples 0.2718) on the 6 samples" in md
    assert "## Notes\n\n- first note\n- second note\n" in md
    assert "## Held-out token NLL" not in "\n".join(extra_markdown(_results(runs={GT: runs[RUN]})))


def test_loss_curve_only_when_there_is_one():
    figures = {"progression_prompts": ["a", "b"], "progression_steps": 4, "progression_source": "sample/steps"}
    md = "\n".join(extra_markdown(_results(figures=figures, grid_count=8)))
    assert "Samples (first 8, each under its prompt)" in md and "of the first 2 prompts, one row each (4 steps;" in md
    assert "loss_curve.png" not in md
    md = "\n".join(extra_markdown(_results(figures={**figures, "loss_curve": True}, grid_count=8)))
    assert "![loss curve](loss_curve.png)" in md


def test_full_report_drops_no_metric_line_for_extra_metrics_and_joins_with_a_blank_line(tmp_path):
    """A run measured only by token NLL (or FD) has a metric: no 'No metric was measured.' line; the extra
    sections follow the base report after one blank line."""
    runs = {RUN: {"token_nll": {"token_nll": 3.0, "token_nll_sd": 0.1, "samples": 6}}}
    md = write_full_report(tmp_path / "a", _results(runs=runs))["report.md"].read_text()
    assert "No metric was measured" not in md
    assert md.startswith("# Evaluation report\n\n## Evaluation set\n")
    runs = {RUN: {"fd_vq": {"fd_vq": 1.0, "num_images": 2}}}
    md = write_full_report(tmp_path / "b", _results(runs=runs))["report.md"].read_text()
    assert "No metric was measured" not in md
    md = write_full_report(tmp_path / "c", _results())["report.md"].read_text()
    assert md.startswith("# Evaluation report\n\nNo metric was measured.\n\n## Evaluation set\n")
