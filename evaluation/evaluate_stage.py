"""The ``evaluate`` stage: the sample stage's images -> the metrics of ``eval.metrics`` -> a report.

Metrics (``eval.metrics``):
  fid          FID (and clean-FID) against the synthetic eval images (synthetic source) or the COCO images of
               the prompts (``eval.coco_images``; center crop, resize 256), ``evaluation.fid``. Without
               ``eval.inception_weights`` the labelled stand-in extractor is used and the report says so.
  attributes   synthetic attribute match (``evaluation.attributes``), also for the real eval images and
               their VQ-GAN reconstructions (upper bounds).
  captioning   ``evaluation.captioning`` when ``eval.captioner_path`` is set (else a note); also on the
               real images ("Ground Truth (upper bound)", as in Table 2).
  clip_score   ``evaluation.clip_score`` when ``eval.clip_checkpoint`` is set (else a note).
  speed        the Table 4 speed table (``evaluation.speed``) on the trained model and an AR baseline.
  retrieval    the CLIP retrieval baseline (``evaluation.retrieval_stage``), scored like a model.

Every input is checked before any heavy work (missing weights files, mixed image sizes, empty prompt set,
missing COCO images). Writes ``report.json`` + ``report.md`` (``evaluation.report.write_report``, plus
the sections that module does not render: evaluation set, attribute match, speed, notes, figures),
``samples_grid.png``, ``progression.png`` and ``progression.gif`` (``evaluation.progression``: the per-step
token maps of sample 0 decoded, positions not written yet black). The manifest carries the headline numbers.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from evaluation.progression import make_figures
from pipeline.stages import StageContext, StageError, stage

RUN, GT, RECON, RETRIEVAL = "PDM (this run)", "Ground Truth (upper bound)", "VQ-GAN reconstruction", \
    "Retrieval Baseline"


def device_name() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def make_fid_extractor(ev, device: str):
    """The FID feature extractor (tests replace this with a cheap fake)."""
    from evaluation.inception import InceptionFeatures

    return InceptionFeatures(ev.inception_weights, device=device)


@dataclass
class Plan:
    """What the evaluation will read, checked by :func:`preflight`."""
    metrics: list[str]
    synthetic: bool
    prompts: list[str]
    refs: Optional[list[list[str]]]
    images: list[Path]
    gt_images: Optional[list[Path]]
    fid_reference: Optional[list[Path]] = None
    fid_reference_name: str = ""
    notes: list[str] = field(default_factory=list)


def _need_file(path: Optional[str], what: str, how: str) -> None:
    """Raise FileNotFoundError naming ``path`` and how to get it, when it is set but missing."""
    if path and not Path(path).expanduser().exists():
        raise FileNotFoundError(f"{what} not found: {path}. {how}")


def preflight(ctx: StageContext) -> Plan:
    """All cheap checks, before any model or image is loaded; returns the plan."""
    from evaluation.images import ImageSet, check_prompts
    from evaluation.inception import MissingWeightsError, missing_weights_message
    from training.sample_stage import image_path, read_prompts

    cfg, ev = ctx.config, ctx.config.eval
    sample_dir = ctx.input_dir("sample")
    recs = read_prompts(sample_dir)
    prompts = check_prompts([r.get("prompt") for r in recs], what=f"{sample_dir / 'prompts.jsonl'}")
    synthetic = cfg.data.download.source == "synthetic"
    images = [image_path(sample_dir, r["index"]) for r in recs]
    ImageSet(images)  # every generated image exists and all have one size
    plan = Plan(metrics=list(dict.fromkeys(ev.metrics)), synthetic=synthetic, prompts=prompts,
                refs=[list(r["refs"]) for r in recs] if not synthetic else None, images=images, gt_images=None)
    if synthetic:
        plan.gt_images = [ctx.input_dir("synthetic") / r["image"] for r in recs]
    elif ev.coco_images:
        from evaluation.coco import image_paths

        plan.gt_images = [Path(p) for p in image_paths(_coco_prompts(recs), ev.coco_images)]
    m = plan.metrics
    if "attributes" in m and not synthetic:
        raise StageError("eval.metrics: 'attributes' reads the synthetic shapes back and only applies to "
                         "data.download.source: synthetic; remove it for COCO evaluations")
    if "fid" in m:
        if ev.inception_weights and not Path(ev.inception_weights).expanduser().is_file():
            raise MissingWeightsError(missing_weights_message(ev.inception_weights))
        if ev.inception_weights is None:
            plan.notes.append("FID uses the stand-in Inception extractor (eval.inception_weights is not set): "
                              "its numbers only compare runs measured the same way, never published FID.")
        if synthetic:
            plan.fid_reference = _synthetic_eval_images(ctx.input_dir("synthetic"))
            plan.fid_reference_name = f"synthetic eval split {ctx.input_dir('synthetic') / 'eval'}"
        else:
            if not ev.coco_images:
                raise StageError("FID on MS COCO needs the real images: set eval.coco_images to the val2014 "
                                 "image folder (http://images.cocodataset.org/zips/val2014.zip)")
            plan.fid_reference = plan.gt_images
            plan.fid_reference_name = f"MS COCO val2014 {ev.coco_images} (the {len(prompts)} prompt images)"
        if synthetic:  # COCO images differ in size (they are center-cropped); the synthetic ones must not
            ImageSet(plan.fid_reference)
    if "captioning" in m:
        if ev.captioner_path is None:
            plan.notes.append("Captioning metrics not measured: eval.captioner_path is not set (a local "
                              "transformers image-to-text model folder).")
        _need_file(ev.captioner_path, "captioner folder (eval.captioner_path)",
                   "Save a transformers image-to-text model with save_pretrained on a machine with internet.")
    for metric in ("clip_score", "retrieval"):
        if metric in m and ev.clip_checkpoint is None:
            plan.notes.append(f"{'CLIP score' if metric == 'clip_score' else 'Retrieval baseline'} not measured: "
                              f"eval.clip_checkpoint is not set (a local open_clip checkpoint).")
    if ("clip_score" in m or "retrieval" in m):
        _need_file(ev.clip_checkpoint, "CLIP checkpoint (eval.clip_checkpoint)",
                   f"Download the open_clip weights of {ev.clip_model} on a machine with internet.")
    if "retrieval" in m and ev.clip_checkpoint and not synthetic:
        plan.notes.append("Retrieval baseline not measured: for url-list sources the training images live in "
                          "the download shards, which this stage does not index yet.")
    if "speed" in m:
        for name in ("model.safetensors", "config.yaml"):
            _need_file(str(ctx.input_dir("train") / "export" / name), "exported model file",
                       "Rerun the train stage (`pt2i run CONFIG --stage train`).")
            if ev.ar_export:
                _need_file(str(Path(ev.ar_export) / name), "eval.ar_export file", "Train the baseline with "
                           "train.mode: autoregressive and set eval.ar_export to its train/export folder.")
    return plan


def _coco_prompts(recs: list[dict]):
    from evaluation.coco import CocoPrompt

    try:
        return [CocoPrompt(r["image_id"], r["file_name"], r["prompt"], tuple(r["refs"])) for r in recs]
    except KeyError as exc:
        raise StageError(f"prompts.jsonl has no {exc} field: it was not written for COCO prompts; rerun the "
                         f"sample stage") from None


def _synthetic_eval_images(synthetic_dir: Path) -> list[Path]:
    import pandas as pd

    split = Path(synthetic_dir) / "eval"
    urls = pd.read_parquet(split / "urls.parquet", columns=["URL"])["URL"]
    return [split / "images" / str(u).rsplit("/", 1)[-1] for u in urls]


# ----------------------------------------------------------------------------- metrics

def _image_sets(plan: Plan, retrieved: Optional[list[Path]]) -> dict[str, list[Path]]:
    sets = {RUN: plan.images}
    if retrieved is not None:
        sets[RETRIEVAL] = retrieved
    return sets


def run_metrics(ctx: StageContext, plan: Plan, runs: dict, vq, device: str) -> Optional[dict]:
    """Fill ``runs[name][metric]``; returns the FID protocol when FID ran."""
    ev, log = ctx.config.eval, ctx.log
    retrieved = None
    if "retrieval" in plan.metrics and ev.clip_checkpoint and plan.synthetic:
        from evaluation.retrieval_stage import retrieve, synthetic_train_images

        res = retrieve(ev, synthetic_train_images(ctx.input_dir("synthetic")), plan.prompts,
                       ctx.out_dir / "retrieval", device, log)
        retrieved = [Path(p) for p in res["items"]]
        runs[RETRIEVAL] = {"retrieval": {k: v for k, v in res.items() if k != "items"}, "paper_row": RETRIEVAL}
    sets = _image_sets(plan, retrieved)
    protocol = None
    if "attributes" in plan.metrics:
        from evaluation.attributes import AttributeEvaluator

        attr = AttributeEvaluator(ctx.config.data.synthetic.image_size)
        for name, imgs in sets.items():
            runs[name]["attributes"] = attr(imgs, plan.prompts)
        runs.setdefault(GT, {})["attributes"] = attr(plan.gt_images, plan.prompts)
        runs.setdefault(RECON, {})["attributes"] = attr(_reconstruct(vq, plan.gt_images, device), plan.prompts)
        log(f"[evaluate] attribute match {runs[RUN]['attributes']['match']:.3f}")
    if "fid" in plan.metrics:
        from evaluation.fid import FIDEvaluator

        fid = FIDEvaluator.from_config(ev, plan.fid_reference, plan.fid_reference_name, len(plan.fid_reference),
                                       ev.fid_stats_cache or ctx.out_dir / "fid_cache", device,
                                       extractor=make_fid_extractor(ev, device))
        for name, imgs in sets.items():
            runs[name]["fid"] = fid(imgs)
        protocol = runs[RUN]["fid"]["protocol"]
        log(f"[evaluate] FID {runs[RUN]['fid'].get('fid', float('nan')):.3f}")
    if "captioning" in plan.metrics and ev.captioner_path:
        from evaluation.captioning import CaptioningEvaluator

        cap = CaptioningEvaluator.from_config(ev, device, log)
        try:
            for name, imgs in {**sets, **({GT: plan.gt_images} if plan.gt_images else {})}.items():
                runs.setdefault(name, {})["captioning"] = cap(imgs, plan.prompts, plan.refs)
        finally:
            cap.scorer.close()
    if "clip_score" in plan.metrics and ev.clip_checkpoint:
        from evaluation.clip_score import ClipScoreEvaluator

        clip = ClipScoreEvaluator.from_config(ev, device)
        for name, imgs in {**sets, **({GT: plan.gt_images} if plan.gt_images else {})}.items():
            runs.setdefault(name, {})["clip_score"] = clip(imgs, plan.prompts)
    return protocol


def _reconstruct(vq, paths: list[Path], device: str, batch: int = 64) -> np.ndarray:
    """The VQ-GAN round trip (encode, decode) of the real images: the tokenizer's upper bound."""
    import torch

    from evaluation.images import load_rgb
    from training.sample_stage import to_uint8

    out = []
    with torch.no_grad():
        for i in range(0, len(paths), batch):
            x = np.stack([load_rgb(p) for p in paths[i:i + batch]])
            x = torch.from_numpy(x).to(device).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
            ids, _ = vq.encode(x)
            out.append(to_uint8(vq.decode(ids)))
    return np.concatenate(out)


def run_speed(ctx: StageContext, plan: Plan, vq, text_encoder, device: str) -> list[dict]:
    """The Table 4 rows on the trained model (plus the AR baseline)."""
    import torch

    from evaluation.speed import speed_table
    from training.load import build, load_exported_model

    cfg, ev = ctx.config, ctx.config.eval
    model, model_cfg, meta = load_exported_model(ctx.input_dir("train") / "export", tokenizer=vq,
                                                 text_dim=text_encoder.dim, device=device, prefer_ema=ev.use_ema)
    notes = {}
    torch.manual_seed(cfg.seed)
    if meta["kind"] == "ar":
        ar, pdm = model, build(model_cfg, "pdm").to(device).eval()
        notes["progressive"] = ("randomly initialised PDM of the same size (the trained model is autoregressive): "
                                "timing only")
    else:
        pdm = model
        if ev.ar_export:
            ar, _, ar_meta = load_exported_model(ev.ar_export, tokenizer=vq, text_dim=text_encoder.dim,
                                                 device=device, prefer_ema=ev.use_ema)
            if ar_meta["kind"] != "ar":
                raise StageError(f"eval.ar_export {ev.ar_export} holds a progressive model, not an autoregressive one")
        else:
            ar = build(model_cfg, "ar").to(device).eval()
            notes["autoregressive"] = ("randomly initialised AR model of the same size (no eval.ar_export): "
                                       "timing only, its images are meaningless")
    bs = ev.speed_batch_size or cfg.sample.batch_size
    n = min(len(plan.prompts), max(bs, ev.speed_images))
    with torch.no_grad():
        ids, mask = text_encoder.tokenize(plan.prompts[:n])
        text = text_encoder.encode(ids.to(device), mask.to(device))
    ctx.log(f"[evaluate] speed table: T in {ev.speed_steps} + L={model_cfg.seq_len}, batch 1 and {bs}")
    return speed_table(pdm, ar, text, mask.to(device), cfg.sample, ev.speed_steps, bs, ev.speed_images,
                       ev.speed_warmup, notes)


# ----------------------------------------------------------------------------- report

def extra_markdown(results: dict, L: int) -> list[str]:
    """Sections ``evaluation.report`` does not render: set, attributes, speed, notes, figures."""
    from evaluation.attributes import attributes_markdown
    from evaluation.speed import speed_markdown

    s = results["evaluation_set"]
    lines = ["## Evaluation set", "", f"- prompts: {s['prompts']} from {s['prompt_source']}",
             f"- sampler: {s['sampler']}", f"- model: {s['model']}", ""]
    if results.get("fid_reference"):
        lines[-1:-1] = [f"- FID reference set: {results['fid_reference']}"]
    lines += attributes_markdown(results["runs"])
    lines += speed_markdown(results.get("speed_table", []), L)
    if results.get("notes"):
        lines += ["## Notes", ""] + [f"- {n}" for n in results["notes"]] + [""]
    f = results.get("figures")
    if f:
        lines += ["## Figures", "", f"Samples (first {results['grid_count']}):", "", "![samples](samples_grid.png)", "",
                  f"Coarse-to-fine progression of prompt 0, \"{f['progression_prompt']}\" ({f['progression_steps']} "
                  f"steps; black = not written yet; from {f['progression_source']}):", "",
                  "![progression](progression.png)", "", "![progression, animated](progression.gif)", ""]
    return lines


def write_full_report(out: Path, results: dict, L: int) -> dict:
    """``evaluation.report.write_report`` then the extra sections appended to ``report.md`` (tmp + rename)."""
    from evaluation.report import write_report

    paths = write_report(out, results)
    md = paths["report.md"].read_text()
    if results["runs"].get(RUN, {}).get("attributes") or results.get("speed_table"):
        md = md.replace("No metric was measured.\n", "")
    tmp = out / f".report.md.tmp{os.getpid()}"
    tmp.write_text(md.rstrip("\n") + "\n\n" + "\n".join(extra_markdown(results, L)))
    os.replace(tmp, paths["report.md"])
    return paths


def _summary(runs: dict) -> dict:
    r = runs.get(RUN, {})
    out = {}
    if "fid" in r:
        out.update({k: r["fid"][k] for k in ("fid", "clean_fid") if k in r["fid"]})
    if "attributes" in r:
        out["attribute_match"] = r["attributes"]["match"]
    if "clip_score" in r:
        out["clip_score"] = r["clip_score"]["clip_score"]
    for k, v in r.get("captioning", {}).get("vs_prompt", {}).items():
        out[f"caption_{k}"] = v
    return out


@stage("evaluate", inputs=("sample", "synthetic", "tokenizer", "text", "train"), sections=("eval",))
def evaluate_stage(ctx: StageContext) -> dict:
    """Score the samples (FID, attribute match, captioning, CLIP score, speed, retrieval) and write the report."""
    from tokenization.text import load_text_encoder
    from tokenization.vqgan import load_tokenizer_dir

    cfg, out = ctx.config, ctx.out_dir
    plan = preflight(ctx)
    device = device_name()
    vq = load_tokenizer_dir(ctx.input_dir("tokenizer")).to(device).eval()
    sample_m = ctx.input_manifest("sample")
    s = cfg.sample
    runs: dict = {RUN: {"paper_row": "PDM"}}
    results = {"title": f"Evaluation report: {cfg.name}", "runs": runs, "notes": list(plan.notes),
               "evaluation_set": {
                   "prompts": len(plan.prompts), "prompt_source": sample_m.get("prompt_source", "?"),
                   "sampler": f"{s.sampler}, T={s.steps}, schedule {s.schedule}, order {s.order}, temperature "
                              f"{s.temperature}, top-k {s.top_k}, guidance {s.guidance_scale}, revise {s.revise}, "
                              f"seed {s.seed} (chunk c seeded from (seed, c)), batch {s.batch_size}",
                   "model": str(ctx.input_dir("train") / "export")},
               "fid_reference": plan.fid_reference_name or None}
    fid_protocol = run_metrics(ctx, plan, runs, vq, device)
    if plan.synthetic:   # the paper's COCO rows would be matched by name: not comparable, so not printed
        for r in runs.values():
            r["paper_row"] = None
        results["notes"].append("Synthetic shapes data: the paper's MS COCO figures are not comparable and are "
                                "left out of the quality tables (the speed table shows them for orientation).")
    if fid_protocol:
        results["fid_protocol"] = fid_protocol
    if "speed" in plan.metrics:
        text = load_text_encoder(cfg.text_encoder, ctx.input_dir("text"))
        results["speed_table"] = run_speed(ctx, plan, vq, text, device)
    results["figures"] = make_figures(ctx, plan.images, plan.prompts, vq, device)
    results["grid_count"] = min(cfg.eval.grid_images, len(plan.images))
    paths = write_full_report(out, results, cfg.model.grid_h * cfg.model.grid_w)
    ctx.log(f"[evaluate] report: {paths['report.md']}")
    return {"counts": {"images": len(plan.images), "runs": len(runs)}, "metrics": _summary(runs),
            "notes": results["notes"],
            "outputs": {"report_md": str(paths["report.md"]), "report_json": str(paths["report.json"]),
                        **{k: v for k, v in results["figures"].items() if k in ("grid", "progression_png",
                                                                                "progression_gif")}}}
