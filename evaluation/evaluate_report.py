"""The ``evaluate`` stage's report: its row names, the sections ``evaluation.report`` does not render
(evaluation set, attribute match, FD in VQ features, held-out token NLL, notes, figures) and the headline
metrics its manifest carries."""

from __future__ import annotations

from pathlib import Path

from core.files import write_text_atomic

RUN, GT, RECON, RETRIEVAL = (
    "PDM (this run)",
    "Ground Truth (upper bound)",
    "VQ-GAN reconstruction",
    "Retrieval Baseline",
)


def extra_markdown(results: dict) -> list[str]:
    """Sections ``evaluation.report`` does not render: set, attributes, notes, figures."""
    from evaluation.attributes import attributes_markdown

    s = results["evaluation_set"]
    lines = [
        "## Evaluation set",
        "",
        f"- prompts: {s['prompts']} from {s['prompt_source']}",
        f"- sampler: {s['sampler']}",
        f"- model: {s['model']}",
        "",
    ]
    if s.get("environment"):  # core.environment: what the figures were made with
        lines[-1:-1] = [f"- evaluated with: {s['environment']}"]
    if s.get("trained_with"):
        lines[-1:-1] = [f"- trained with: {s['trained_with']}"]
    if results.get("fid_reference"):
        lines[-1:-1] = [f"- FID reference set: {results['fid_reference']}"]
    lines += attributes_markdown(results["runs"])
    fd = [(name, r["fd_vq"]) for name, r in results["runs"].items() if "fd_vq" in r]
    if fd:
        lines += [
            "## Fréchet distance in the tokenizer's features",
            "",
            "To the synthetic eval images, in the run's own VQ encoder's features (evaluation.fd_vq; lower is "
            "better; comparable between runs with the same tokenizer).",
            "",
            "| Images | FD (VQ features, ↓) | N |",
            "|---|---|---|",
        ]
        lines += [f"| {name} | {v['fd_vq']:.4f} | {v['num_images']} |" for name, v in fd] + [""]
    nll = results["runs"].get(RUN, {}).get("token_nll")
    if nll:
        lines += [
            "## Held-out token NLL",
            "",
            f"{nll['token_nll']:.4f} nats per token (sd over samples {nll['token_nll_sd']:.4f}) on the "
            f"{nll['samples']} samples of the tokenize stage's eval split, under the model's own factorisation "
            "(its training order; evaluation.token_nll).",
            "",
        ]
    if results.get("notes"):
        lines += ["## Notes", ""] + [f"- {n}" for n in results["notes"]] + [""]
    f = results.get("figures")
    if f:
        lines += [
            "## Figures",
            "",
            f"Samples (first {results['grid_count']}, each under its prompt):",
            "",
            "![samples](samples_grid.png)",
            "",
            f"Coarse-to-fine progression of the first {len(f['progression_prompts'])} prompts, one row each "
            f"({f['progression_steps']} steps; black = not written yet; from {f['progression_source']}):",
            "",
            "![progression](progression.png)",
            "",
            "![progression, animated](progression.gif)",
            "",
        ]
        if f.get("loss_curve"):
            lines += ["Training curves (train/metrics.jsonl):", "", "![loss curve](loss_curve.png)", ""]
    return lines


def write_full_report(out: Path, results: dict) -> dict:
    """``evaluation.report.write_report`` then the extra sections appended to ``report.md`` (atomically)."""
    from evaluation.report import write_report

    paths = write_report(out, results)
    md = paths["report.md"].read_text()
    if any(results["runs"].get(RUN, {}).get(k) for k in ("attributes", "token_nll", "fd_vq")):
        md = md.replace("No metric was measured.\n", "")
    write_text_atomic(paths["report.md"], md.rstrip("\n") + "\n\n" + "\n".join(extra_markdown(results)))
    return paths


def headline_metrics(runs: dict) -> dict:
    """The run's numbers for the manifest (and ``pt2i sweep``'s tables)."""
    r = runs.get(RUN, {})
    out = {}
    if "fid" in r:
        out.update({k: r["fid"][k] for k in ("fid", "clean_fid") if k in r["fid"]})
    if "attributes" in r:
        out["attribute_match"] = r["attributes"]["match"]
    if "clip_score" in r:
        out["clip_score"] = r["clip_score"]["clip_score"]
    if "token_nll" in r:
        out["token_nll"] = r["token_nll"]["token_nll"]
    if "fd_vq" in r:
        out["fd_vq"] = r["fd_vq"]["fd_vq"]
    for k, v in r.get("captioning", {}).get("vs_prompt", {}).items():
        out[f"caption_{k}"] = v
    return out
