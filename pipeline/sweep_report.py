"""The sweep's comparison table: ``RUN_DIR/report.md``, ``report.json`` and ``plot.png``.

One row per variant, one column per ``columns`` entry: the mean over the seeds +- their standard deviation
(n seeds; the per-seed values are in report.json), read from each run's manifests (``evaluate`` metrics,
``sample`` timings, the config for the number of sequential passes); then the paper's figures for the row.
A one-seed sweep quotes the seed spread of ``noise_from`` (another sweep's report) as its noise level.
Timing: this invocation's wall time and the stage seconds of its runs' manifests (shared stages once).
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Optional

from core.files import read_json, write_json_atomic, write_text_atomic
from core.stage import read_manifest
from pipeline.sweep_config import COLUMNS, SweepConfig, VariantRun, all_variants, resolve_path


def run_values(run: VariantRun) -> dict[str, Optional[float]]:
    """Every known column for one run (None where it is not measured or not finished)."""
    ev, sa, tr = (read_manifest(run.run_dir / s) for s in ("evaluate", "sample", "train"))
    cfg = run.config
    metrics = ev.get("metrics", {})
    out = {c: metrics.get(c) for c, (_, where, _, _) in COLUMNS.items() if where == "evaluate"}
    out["passes"] = float(cfg.model.seq_len if cfg.sample.sampler == "autoregressive" else cfg.sample.steps)
    out["seconds_per_image"] = (sa.get("metrics") or {}).get("seconds_per_image")
    out["train_seconds"] = tr.get("seconds")
    return out


def summarize(values: list[float]) -> dict:
    """Mean, sd (n - 1) and n over the seeds that have a value; ``of``: the seeds asked for."""
    vals = [v for v in values if v is not None and math.isfinite(v)]
    if not vals:
        return {"mean": None, "sd": None, "n": 0, "of": len(values)}
    sd = statistics.stdev(vals) if len(vals) > 1 else None
    return {"mean": statistics.fmean(vals), "sd": sd, "n": len(vals), "of": len(values)}


def _fmt(s: dict, digits: int = 3) -> str:
    if s["mean"] is None:
        return "-"
    sd = f" ± {s['sd']:.{digits}f}" if s["sd"] is not None else ""
    of = s.get("of", s["n"])
    count = f" ({s['n']} of {of} seeds)" if s["n"] < of else f" ({s['n']})" if s["n"] > 1 else ""
    return f"{s['mean']:.{digits}f}{sd}{count}"


def _spread(col: str, sd: float) -> str:
    return f"{COLUMNS[col][0]} ± {sd:.{max(COLUMNS[col][3], 3)}f}"


def _label(cfg_any, col: str) -> str:
    label, _, better, _ = COLUMNS[col]
    if col in ("fid", "clean_fid") and getattr(cfg_any.eval, "inception_weights", None) is None:
        label += " (stand-in extractor)"
    return f"{label} {'↑' if better == 'higher' else '↓'}"


def noise_level(sweep_file: Optional[str], anchor: Path) -> Optional[dict]:
    """The mean seed standard deviation per column of another sweep's report (None when not yet run)."""
    if not sweep_file:
        return None
    from core.config import read_yaml

    path = resolve_path(sweep_file, anchor)
    other = read_yaml(path).get("run_dir")
    report = read_json(resolve_path(str(other), Path.cwd()) / "report.json", None) if other else None
    return {"from": str(path), "sd": report.get("noise", {}) if report else None}


def _stage_seconds(plan) -> tuple[float, float]:
    """(seconds of every stored folder the runs use, counted once; of those several runs share)."""
    total = shared = 0.0
    for name, _, users in plan.entries():
        sec = read_manifest(plan.runs[users[0]].run_dir / name).get("seconds") or 0.0
        total += sec
        shared += sec if len(users) > 1 else 0.0
    return total, shared


def save_plot(rows: list[dict], col: str, label: str, title: str, path: Path) -> Path:
    from evaluation.figures import default_style_pyplot

    with default_style_pyplot() as plt:
        return _draw_plot(plt, rows, col, label, title, path)


def _draw_plot(plt, rows: list[dict], col: str, label: str, title: str, path: Path) -> Path:
    from evaluation.figures import save_pyplot_figure

    fig, ax = plt.subplots(figsize=(max(4.0, 1.1 * len(rows) + 1.5), 3.6), dpi=120)
    xs = range(len(rows))
    means = [m if (m := r["values"][col]["mean"]) is not None else float("nan") for r in rows]  # no bar, not 0
    sds = [r["values"][col]["sd"] or 0.0 for r in rows]
    ax.bar(xs, means, yerr=sds, capsize=4, color="#4372c4", alpha=0.8, label="ours (mean ± sd over seeds)")
    for x, r in zip(xs, rows):
        seeds = [v for v in r["values"][col]["seeds"].values() if v is not None]
        ax.scatter([x] * len(seeds), seeds, color="black", s=12, zorder=3)
    ax.set_xticks(list(xs), [r["variant"] for r in rows], rotation=20, ha="right")
    ax.set_ylabel(label)
    ax.set_title(title)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    return save_pyplot_figure(fig, path)


def write_sweep_report(cfg: SweepConfig, plan, wall_seconds: float, failed: Optional[dict] = None) -> dict:
    """Write report.md, report.json and plot.png into the sweep's run_dir; returns the report."""
    out = Path(cfg.run_dir)
    out.mkdir(parents=True, exist_ok=True)
    per_run = [(r, run_values(r)) for r in plan.runs]
    first = plan.runs[0].config
    plot_col = cfg.plot or cfg.columns[0]
    rows = []
    for v in all_variants(cfg):
        mine = [(r, vals) for r, vals in per_run if r.variant.name == v.name]
        values = {}
        for col in dict.fromkeys(cfg.columns + [plot_col]):
            s = summarize([vals[col] for _, vals in mine])
            s["seeds"] = {str(r.seed): vals[col] for r, vals in mine}
            values[col] = s
        rows.append({"variant": v.name, "set": v.set, "paper": v.paper, "values": values})
    noise = {
        c: statistics.fmean(sds)
        for c in cfg.columns
        if (sds := [r["values"][c]["sd"] for r in rows if r["values"][c]["sd"] is not None])
    }
    total, shared = _stage_seconds(plan)
    report = {
        "name": cfg.name,
        "sweep": cfg.source,
        "base": cfg.base,
        "seeds": cfg.seeds,
        "columns": cfg.columns,
        "rows": rows,
        "noise": noise,
        "noise_from": noise_level(cfg.noise_from, Path(cfg.source).parent) if len(cfg.seeds) == 1 else None,
        "failed": failed or {},
        "timing": {
            "wall_seconds": round(wall_seconds, 1),
            "stage_seconds": round(total, 1),
            "shared_seconds": round(shared, 1),
        },
        "runs": [{"run_dir": str(r.run_dir), "variant": r.variant.name, "seed": r.seed} for r in plan.runs],
    }
    paper_keys = list(dict.fromkeys(k for r in rows for k in r["paper"]))
    header = ["variant"] + [_label(first, c) for c in cfg.columns] + [f"paper {k}" for k in paper_keys]
    lines = [
        f"# Sweep: {cfg.name}",
        "",
        f"`pt2i sweep {cfg.source}`: base experiment `{cfg.base}`, seeds {cfg.seeds} "
        f"(mean ± sd over seeds (n); one value where one seed ran).",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for r in rows:
        cells = [r["variant"]] + [_fmt(r["values"][c], COLUMNS[c][3]) for c in cfg.columns]
        cells += [str(r["paper"].get(k, "-")) for k in paper_keys]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    nf = report["noise_from"]
    if nf is not None:
        sd = nf["sd"]
        quoted = ", ".join(_spread(c, v) for c, v in (sd or {}).items() if c in cfg.columns)
        lines += [
            f"Noise level (the seed spread of {nf['from']}, mean sd over its variants): {quoted or 'not yet run'}.",
            "",
        ]
    elif noise:
        lines += [
            "Seed spread (mean sd over the variants): " + ", ".join(_spread(c, v) for c, v in noise.items()) + ".",
            "",
        ]
    if failed:
        lines += [
            "Failed runs (rerun the sweep to resume them): " + "; ".join(f"{k}: {v}" for k, v in failed.items()),
            "",
        ]
    lines += [f"- {n}" for n in cfg.notes] + ([""] if cfg.notes else [])
    t = report["timing"]
    lines += [
        f"Time: this invocation {t['wall_seconds'] / 60:.1f} min wall; the runs' stages "
        f"{t['stage_seconds'] / 60:.1f} min (sum of their manifests, each shared stage once: "
        f"{t['shared_seconds'] / 60:.1f} min shared).",
        "",
    ]
    paths = {"report.md": out / "report.md", "report.json": out / "report.json"}
    if any(r["values"][plot_col]["mean"] is not None for r in rows):
        paths["plot.png"] = save_plot(rows, plot_col, _label(first, plot_col), cfg.name, out / "plot.png")
        lines += ["![plot](plot.png)", ""]
    lines += ["Runs (each a run directory: `pt2i status DIR`):", ""] + [f"- `{r['run_dir']}`" for r in report["runs"]]
    write_text_atomic(paths["report.md"], "\n".join(lines) + "\n")
    write_json_atomic(paths["report.json"], report)
    report["paths"] = {k: str(v) for k, v in paths.items()}
    return report
