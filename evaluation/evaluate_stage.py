"""The ``evaluate`` stage: the sample stage's images -> the metrics of ``eval.metrics`` -> a report.

Metrics (``eval.metrics``):
  fid          FID (and clean-FID) against the images of the download stage's eval split (the synthetic eval
               split as downloaded, or the held-out rows of the url lists: ``evaluation.heldout``), or the COCO
               images of the prompts (``eval.coco_images``; center crop, resize 256), ``evaluation.fid``. Without
               ``eval.inception_weights`` the labelled stand-in extractor is used and the report says so.
  attributes   synthetic attribute match (``evaluation.attributes``), also for the real eval images and
               their VQ-GAN reconstructions (upper bounds).
  captioning   ``evaluation.captioning`` when ``eval.captioner_path`` is set (else a note); also on the
               real images ("Ground Truth (upper bound)", as in Table 2).
  clip_score   ``evaluation.clip_score`` when ``eval.clip_checkpoint`` is set (else a note).
  speed        the Table 4 table (``evaluation.speed``) on the trained model and an AR baseline: per T the
               sequential passes, wall time per image (batch 1 and batched) and, for the first
               ``eval.speed_quality_images`` prompts sampled at that T, the measured quality metrics.
  retrieval    the CLIP retrieval baseline (``evaluation.retrieval_run``) over ``eval.retrieval_images``
               (the download stage's train shards, embedded by a Ray batch job, or the synthetic train
               split), scored like a model.
  fd_vq        Fréchet distance to the synthetic eval images in the features of the run's own VQ encoder
               (``evaluation.fd_vq``: a network trained on these images, which a random Inception is not).
  token_nll    held-out token NLL (``evaluation.token_nll``): the trained model's NLL of the tokenize stage's
               eval split under its own factorisation (nats per token; the tables of ``pt2i sweep``).

The evaluators are built once (``evaluation.scorers``) and applied to every image set.

Every input is checked before any heavy work (missing weights files, mixed image sizes, empty prompt set,
missing COCO images, missing retrieval shards). Writes ``report.json`` + ``report.md``
(``evaluation.report.write_report``, plus the sections that module does not render: evaluation set,
attribute match, notes, figures),
``samples_grid.png`` (each sample under its prompt), ``progression.png`` and ``progression.gif``
(``evaluation.progression``: the per-step token maps of the first prompts decoded, positions not written yet
black) and ``loss_curve.png`` (the train stage's ``metrics.jsonl``). The manifest carries the headline numbers.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from core.stage import StageContext, StageError, stage
from evaluation.heldout import heldout_images
from evaluation.progression import make_figures
from evaluation.sample_worker import job_for

RUN, GT, RECON, RETRIEVAL = (
    "PDM (this run)",
    "Ground Truth (upper bound)",
    "VQ-GAN reconstruction",
    "Retrieval Baseline",
)


def device_name() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def make_fid_extractor(ev, device: str):
    """The FID feature extractor (tests replace this with a cheap fake)."""
    from evaluation.inception import InceptionFeatures

    return InceptionFeatures(ev.inception_weights, device=device, sha256=ev.inception_sha256)


@dataclass
class Plan:
    """What the evaluation will read, checked by :func:`preflight`."""

    metrics: list[str]
    synthetic: bool
    prompts: list[str]
    refs: Optional[list[list[str]]]
    images: list[Path]
    gt_images: Optional[list[Path]]
    image_size: tuple[int, int] = (0, 0)
    fid_reference: Optional[list[Path]] = None
    fid_reference_name: str = ""
    retrieval_source: Optional[object] = None  # evaluation.retrieval_run.Source, when measured
    heldout: bool = False  # prompts and references from the downloaded eval split
    notes: list[str] = field(default_factory=list)


def _need_file(path: Optional[str], what: str, how: str) -> None:
    """Raise FileNotFoundError naming ``path`` and how to get it, when it is set but missing."""
    if path and not Path(path).expanduser().exists():
        raise FileNotFoundError(f"{what} not found: {path}. {how}")


def preflight(ctx: StageContext) -> Plan:
    """All cheap checks, before any model or image is loaded; returns the plan."""
    from evaluation.images import ImageSet, check_prompts
    from evaluation.inception import MissingWeightsError, missing_weights_message
    from evaluation.sample_files import image_path, read_prompts

    cfg, ev = ctx.config, ctx.config.eval
    sample_dir = ctx.input_dir("sample")
    recs = read_prompts(sample_dir)
    prompts = check_prompts([r.get("prompt") for r in recs], what=f"{sample_dir / 'prompts.jsonl'}")
    synthetic = cfg.data.download.source == "synthetic"
    images = [image_path(sample_dir, r["index"]) for r in recs]
    generated = ImageSet(images)  # every generated image exists and all have one size
    plan = Plan(
        metrics=list(dict.fromkeys(ev.metrics)),
        synthetic=synthetic,
        prompts=prompts,
        refs=[list(r["refs"]) for r in recs] if not synthetic else None,
        images=images,
        gt_images=None,
        image_size=(generated.height, generated.width),
    )
    if any("heldout" in r for r in recs):  # the prompts came from the download stage's eval split
        plan.heldout = True
        plan.fid_reference, plan.gt_images = _heldout_images(ctx, recs, generated.height)
        what = "synthetic eval split, as downloaded" if synthetic else "held-out eval split of the downloaded data"
        plan.fid_reference_name = f"the {what} ({len(plan.fid_reference)} images)"
    elif synthetic:
        plan.gt_images = [ctx.input_dir("synthetic") / r["image"] for r in recs]
    elif ev.coco_images:
        from evaluation.coco import image_paths

        plan.gt_images = [Path(p) for p in image_paths(_coco_prompts(recs), ev.coco_images)]
    m = plan.metrics
    if "attributes" in m and not synthetic:
        raise StageError(
            "eval.metrics: 'attributes' reads the synthetic shapes back and only applies to "
            "data.download.source: synthetic; remove it for COCO evaluations"
        )
    if "fd_vq" in m and not synthetic:
        raise StageError(
            "eval.metrics: 'fd_vq' compares with the synthetic eval images in the run's own tokenizer's features: "
            "only with data.download.source: synthetic"
        )
    if "fid" in m:
        if ev.inception_weights and not Path(ev.inception_weights).expanduser().is_file():
            raise MissingWeightsError(missing_weights_message(ev.inception_weights))
        if ev.inception_weights is None:
            plan.notes.append(
                "FID uses the stand-in Inception extractor (eval.inception_weights is not set): "
                "its numbers only compare runs measured the same way, never published FID."
            )
    if "fid" in m or "fd_vq" in m:
        if synthetic and not plan.heldout:
            plan.fid_reference = _synthetic_eval_images(ctx.input_dir("synthetic"))
            plan.fid_reference_name = f"synthetic eval split {ctx.input_dir('synthetic') / 'eval'}"
        elif not plan.heldout:
            if not ev.coco_images:
                raise StageError(
                    "FID on MS COCO needs the real images: set eval.coco_images to the val2014 "
                    "image folder (http://images.cocodataset.org/zips/val2014.zip)"
                )
            plan.fid_reference = plan.gt_images
            plan.fid_reference_name = f"MS COCO val2014 {ev.coco_images} (the {len(prompts)} prompt images)"
        if synthetic:  # COCO images differ in size (they are center-cropped); the synthetic ones must not
            ImageSet(plan.fid_reference)
    if "captioning" in m:
        if ev.captioner_path is None:
            plan.notes.append(
                "Captioning metrics not measured: eval.captioner_path is not set (a local "
                "transformers image-to-text model folder)."
            )
        _need_file(
            ev.captioner_path,
            "captioner folder (eval.captioner_path)",
            "Save a transformers image-to-text model with save_pretrained on a machine with internet.",
        )
    for metric in ("clip_score", "retrieval"):
        if metric in m and ev.clip_checkpoint is None:
            plan.notes.append(
                f"{'CLIP score' if metric == 'clip_score' else 'Retrieval baseline'} not measured: "
                f"eval.clip_checkpoint is not set (a local open_clip checkpoint)."
            )
    if "clip_score" in m or "retrieval" in m:
        _need_file(
            ev.clip_checkpoint,
            "CLIP checkpoint (eval.clip_checkpoint)",
            f"Download the open_clip weights of {ev.clip_model} on a machine with internet.",
        )
    if "retrieval" in m and ev.clip_checkpoint:
        from evaluation.retrieval_run import resolve_source

        plan.retrieval_source = resolve_source(ctx, synthetic)
    if "speed" in m:
        if "fid" in m and ev.speed_quality_images == 1:
            raise StageError(
                "eval.speed_quality_images: 1 image per T cannot give an FID (it needs >= 2); "
                "use 0 (timing only) or more images"
            )
        for name in ("model.safetensors", "config.yaml"):
            _need_file(
                str(ctx.input_dir("train") / "export" / name),
                "exported model file",
                "Rerun the train stage (`pt2i run CONFIG --stage train`).",
            )
            if ev.ar_export:
                _need_file(
                    str(Path(ev.ar_export) / name),
                    "eval.ar_export file",
                    "Train the baseline with "
                    "train.mode: autoregressive and set eval.ar_export to its train/export folder.",
                )
    return plan


def _coco_prompts(recs: list[dict]):
    from evaluation.coco import CocoPrompt

    try:
        return [CocoPrompt(r["image_id"], r["file_name"], r["prompt"], tuple(r["refs"])) for r in recs]
    except KeyError as exc:
        raise StageError(
            f"prompts.jsonl has no {exc} field: it was not written for COCO prompts; rerun the sample stage"
        ) from None


def _heldout_images(ctx: StageContext, recs: list[dict], side: int) -> tuple[list[Path], list[Path]]:
    """(FID reference, the prompts' ground truth): the downloaded held-out images (``evaluation.heldout``)."""
    images = heldout_images(ctx.input_manifest("download"), ctx.out_dir / "heldout", side, len(recs))
    missing = [r["index"] for r in recs if r.get("heldout") not in images]
    if missing:
        raise StageError(
            f"prompts {missing[:5]} of prompts.jsonl are not in the download stage's held-out split (the split or "
            "the prompt source changed): rerun the sample stage"
        )
    return list(images.values()), [images[r["heldout"]] for r in recs]


def _synthetic_eval_images(synthetic_dir: Path) -> list[Path]:
    import pandas as pd

    split = Path(synthetic_dir) / "eval"
    urls = pd.read_parquet(split / "urls.parquet", columns=["URL"])["URL"]
    return [split / "images" / str(u).rsplit("/", 1)[-1] for u in urls]


# ----------------------------------------------------------------------------- metrics


def run_metrics(ctx: StageContext, plan: Plan, runs: dict, scorers, vq, device: str) -> Optional[dict]:
    """Fill ``runs[name][metric]`` (samples, retrieval baseline, real images); returns the FID protocol when
    FID ran."""
    sets = {RUN: plan.images}
    if plan.retrieval_source is not None:
        from evaluation.retrieval_run import run_retrieval

        res = run_retrieval(
            ctx.config.eval,
            plan.retrieval_source,
            plan.prompts,
            ctx.out_dir / "retrieval",
            device,
            plan.image_size,
            getattr(ctx.config.cluster, "address", None),
            ctx.log,
            getattr(ctx.config.cluster, "actor_start_timeout_s", None),
        )
        sets[RETRIEVAL] = [Path(p) for p in res["items"]]
        runs[RETRIEVAL] = {"retrieval": {k: v for k, v in res.items() if k != "items"}, "paper_row": RETRIEVAL}
    real = {GT: plan.gt_images} if plan.gt_images else {}
    if "attributes" in plan.metrics:
        real[RECON] = _reconstruct(vq, plan.gt_images, device)
    for metric in scorers.available():
        # FID's reference is the real set; the attribute reader and the captioner have real upper bounds
        extra = {} if metric == "fid" else {k: v for k, v in real.items() if metric == "attributes" or k == GT}
        for name, imgs in {**sets, **extra}.items():
            runs.setdefault(name, {})[metric] = scorers(metric, imgs)
    if "attributes" in runs[RUN]:
        ctx.log(f"[evaluate] attribute match {runs[RUN]['attributes']['match']:.3f}")
    if "fid" in runs[RUN]:
        ctx.log(f"[evaluate] FID {runs[RUN]['fid'].get('fid', float('nan')):.3f}")
        return runs[RUN]["fid"]["protocol"]
    return None


def _reconstruct(vq, paths: list[Path], device: str, batch: int = 64) -> np.ndarray:
    """The VQ-GAN round trip (encode, decode) of the real images: the tokenizer's upper bound."""
    import torch

    from evaluation.images import load_rgb
    from evaluation.sample_files import to_uint8

    out = []
    with torch.no_grad():
        for i in range(0, len(paths), batch):
            x = np.stack([load_rgb(p) for p in paths[i : i + batch]])
            x = torch.from_numpy(x).to(device).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
            ids, _ = vq.encode(x)
            out.append(to_uint8(vq.decode(ids)))
    return np.concatenate(out)


def _encode(text_encoder, prompts: list[str], batch: int, device: str):
    """(text states, mask) per batch of ``prompts``."""
    import torch

    for i in range(0, len(prompts), batch):
        with torch.no_grad():
            ids, mask = text_encoder.tokenize(prompts[i : i + batch])
            yield text_encoder.encode(ids.to(device), mask.to(device)), mask.to(device)


def _save_pngs(images, folder: Path) -> list[Path]:
    """Write ``uint8 [H, W, 3]`` images (an iterable of batches) to ``folder/NNNNNNNN.png`` (emptied first)."""
    import shutil

    from PIL import Image

    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    paths = []
    for batch in images:
        for img in batch:
            path = folder / f"{len(paths):08d}.png"
            Image.fromarray(img).save(path.with_name(f".{path.name}.tmp"), format="PNG")
            os.replace(path.with_name(f".{path.name}.tmp"), path)
            paths.append(path)
    return paths


def speed_quality(ctx: StageContext, plan: Plan, scorers, vq, text_encoder, device: str, skip: set):
    """The ``quality`` callable of ``speed_table``: the first ``eval.speed_quality_images`` prompts sampled
    with the row's settings, saved to ``OUT/speed/<method>_T<T>/`` and scored by ``scorers.quality``;
    None (not scored) for the methods in ``skip`` (random weights) or when nothing is measured."""
    from evaluation.sample_files import to_uint8
    from evaluation.speed import sample_batches

    ev, s = ctx.config.eval, ctx.config.sample
    n = len(plan.prompts) if ev.speed_quality_images is None else min(ev.speed_quality_images, len(plan.prompts))

    def quality(method: str, model, cfg, generate_kwargs: dict) -> Optional[dict]:
        if not n or method in skip or not scorers.available():
            return None
        batches = _encode(text_encoder, plan.prompts[:n], cfg.batch_size, device)
        images = sample_batches(model, lambda ids: to_uint8(vq.decode(ids)), batches, cfg, s.seed, **generate_kwargs)
        paths = _save_pngs(images, ctx.out_dir / "speed" / f"{method}_T{cfg.steps:05d}")
        q = scorers.quality(paths)
        ctx.log(f"[evaluate] speed table: {method} T={cfg.steps}: {q}")
        return q

    return quality


def run_speed(ctx: StageContext, plan: Plan, scorers, vq, text_encoder, device: str) -> list[dict]:
    """The Table 4 rows on the trained model (plus the AR baseline), with the quality per T."""
    import torch

    from evaluation.speed import speed_table
    from training.export_loader import load_exported_model
    from training.model import build_model

    cfg, ev = ctx.config, ctx.config.eval
    model, model_cfg, meta = load_exported_model(
        ctx.input_dir("train") / "export", tokenizer=vq, text_dim=text_encoder.dim, device=device, prefer_ema=ev.use_ema
    )
    notes = {}
    torch.manual_seed(cfg.seed)
    if meta["kind"] == "ar":
        ar, pdm = model, build_model(model_cfg, "pdm").to(device).eval()
        notes["progressive"] = (
            "randomly initialised PDM of the same size (the trained model is autoregressive): timing only"
        )
    else:
        pdm = model
        if ev.ar_export:
            ar, _, ar_meta = load_exported_model(
                ev.ar_export, tokenizer=vq, text_dim=text_encoder.dim, device=device, prefer_ema=ev.use_ema
            )
            if ar_meta["kind"] != "ar":
                raise StageError(f"eval.ar_export {ev.ar_export} holds a progressive model, not an autoregressive one")
        else:
            ar = build_model(model_cfg, "ar").to(device).eval()
            notes["autoregressive"] = (
                "randomly initialised AR model of the same size (no eval.ar_export): "
                "timing only, its images are meaningless"
            )
    bs = ev.speed_batch_size or cfg.sample.batch_size
    n = min(len(plan.prompts), max(bs, ev.speed_images))
    text, mask = next(_encode(text_encoder, plan.prompts[:n], n, device))
    ctx.log(f"[evaluate] speed table: T in {ev.speed_steps} + L={model_cfg.seq_len}, batch 1 and {bs}")
    order = None
    if cfg.sample.order == "learned":  # the trained position policy, as the sample stage uses it
        from training.export_loader import load_exported_policy
        from training.model.order_learner import Learned

        policy, _ = load_exported_policy(
            ctx.input_dir("train") / "export", model_cfg=model_cfg, model_meta=meta, device=device
        )
        order = Learned(policy, pdm)
    quality = speed_quality(ctx, plan, scorers, vq, text_encoder, device, skip=set(notes))
    return speed_table(
        pdm, ar, text, mask, cfg.sample, ev.speed_steps, bs, ev.speed_images, ev.speed_warmup, notes, quality, order
    )


VQ_DIFFUSION_NLL = (
    "held-out token NLL: not computed for a VQ-Diffusion model (train.mode vq_diffusion): its likelihood is a "
    "variational bound over its timesteps, not a factorisation of p(Y | X) that evaluation.token_nll reads"
)


def run_token_nll(ctx: StageContext, vq, device: str) -> dict:
    """The held-out token NLL of the trained model on the tokenize stage's eval split."""
    from evaluation.token_nll import eval_token_nll, read_token_shards
    from tokenization.text import load_text_encoder
    from training.export_loader import load_exported_model, load_exported_policy

    cfg = ctx.config
    split = (ctx.input_manifest("tokenize").get("splits") or {}).get("eval")
    if not split:
        raise StageError(
            "eval.metrics: token_nll reads the tokenize stage's eval split, which it did not write (the download "
            "stage has no eval split); remove token_nll or add an eval split"
        )
    export = ctx.input_dir("train") / "export"
    text = load_text_encoder(cfg.text_encoder, ctx.input_dir("text"))
    model, model_cfg, meta = load_exported_model(
        export, tokenizer=vq, text_dim=text.dim, device=device, prefer_ema=cfg.eval.use_ema
    )
    policy = None
    if meta["kind"] == "pdm" and cfg.train.order == "learned" and cfg.train.mode == "progressive":
        policy, _ = load_exported_policy(export, model_cfg=model_cfg, model_meta=meta, device=device)
    samples = read_token_shards(Path(split), cfg.train.max_text_len)
    res = eval_token_nll(model, meta["kind"], cfg.train, samples, text, device, policy)
    ctx.log(f"[evaluate] held-out token NLL {res['token_nll']:.4f} nats/token over {res['samples']} eval samples")
    return res


# ----------------------------------------------------------------------------- report


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
    """``evaluation.report.write_report`` then the extra sections appended to ``report.md`` (tmp + rename)."""
    from evaluation.report import write_report

    paths = write_report(out, results)
    md = paths["report.md"].read_text()
    if any(results["runs"].get(RUN, {}).get(k) for k in ("attributes", "token_nll", "fd_vq")):
        md = md.replace("No metric was measured.\n", "")
    tmp = out / f".report.md.tmp{os.getpid()}"
    tmp.write_text(md.rstrip("\n") + "\n\n" + "\n".join(extra_markdown(results)))
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
    if "token_nll" in r:
        out["token_nll"] = r["token_nll"]["token_nll"]
    if "fd_vq" in r:
        out["fd_vq"] = r["fd_vq"]["fd_vq"]
    for k, v in r.get("captioning", {}).get("vs_prompt", {}).items():
        out[f"caption_{k}"] = v
    return out


def retrieval_on_ray(cfg) -> bool:
    """Whether the retrieval baseline may embed image shards on Ray with this config (``auto`` counts: the
    download stage's shards are only known when the stage runs)."""
    ev = cfg.eval
    return (
        "retrieval" in ev.metrics
        and bool(ev.clip_checkpoint)
        and ev.retrieval_workers != 0
        and ev.retrieval_images != "synthetic"
    )


@stage(
    "evaluate",
    inputs=("sample", "synthetic", "download", "tokenizer", "tokenize", "text", "train"),
    sections=("eval",),
    needs=lambda cfg: (
        ("sample", "download", "tokenizer", "text", "train")
        + (("synthetic",) if cfg.data.download.source == "synthetic" else ())
        + (("tokenize",) if "token_nll" in cfg.eval.metrics else ())
    ),
    uses_ray=retrieval_on_ray,
)
def evaluate_stage(ctx: StageContext) -> dict:
    """Score the samples (FID, attribute match, captioning, CLIP score, speed, retrieval) and write the report."""
    from evaluation.scorers import Scorers
    from tokenization.text import load_text_encoder
    from tokenization.vqgan import load_tokenizer_dir

    cfg, out = ctx.config, ctx.out_dir
    plan = preflight(ctx)
    device = device_name()
    vq = load_tokenizer_dir(ctx.input_dir("tokenizer")).to(device).eval()
    sample_m = ctx.input_manifest("sample")
    s = cfg.sample
    runs: dict = {RUN: {"paper_row": "PDM" if cfg.train.mode == "progressive" else None}}  # PDM's rows for PDM only
    results = {
        "title": f"Evaluation report: {cfg.name}",
        "runs": runs,
        "notes": list(plan.notes),
        "evaluation_set": {
            "prompts": len(plan.prompts),
            "prompt_source": sample_m.get("prompt_source", "?"),
            "sampler": f"{s.sampler}, T={s.steps}, schedule {s.schedule}, order {s.order}, temperature "
            f"{s.temperature}, top-k {s.top_k}, guidance {s.guidance_scale}, revise {s.revise}, "
            f"seed {s.seed} (chunk c seeded from (seed, c)), batch {s.batch_size}",
            "model": f"{ctx.input_dir('train') / 'export'} (train.mode {cfg.train.mode}"
            + (f"; CogView2 super-resolution {ctx.run_dir / 'superres' / 'export'})" if cfg.sr.enabled else ")"),
        },
        "fid_reference": plan.fid_reference_name or None,
    }
    scorers = Scorers(
        cfg.eval,
        plan,
        cfg.data.synthetic.image_size if plan.synthetic else None,
        lambda: make_fid_extractor(cfg.eval, device),
        out / "fid_cache",
        device,
        ctx.log,
        vq=vq,
    )
    with scorers:
        fid_protocol = run_metrics(ctx, plan, runs, scorers, vq, device)
        if "token_nll" in plan.metrics and cfg.train.mode == "vq_diffusion":
            results["notes"].append(VQ_DIFFUSION_NLL)
            ctx.log(f"[evaluate] {VQ_DIFFUSION_NLL}")
        elif "token_nll" in plan.metrics:
            runs[RUN]["token_nll"] = run_token_nll(ctx, vq, device)
        if "speed" in plan.metrics:
            text = load_text_encoder(cfg.text_encoder, ctx.input_dir("text"))
            results["speed"] = run_speed(ctx, plan, scorers, vq, text, device)
    if plan.synthetic or plan.heldout:  # the paper's COCO rows would be matched by name: not comparable
        for r in runs.values():
            r["paper_row"] = None
        results["notes"].append(
            f"{'Synthetic shapes data' if plan.synthetic else 'Held-out split of the downloaded data'}: the "
            "paper's MS COCO figures are not comparable and are left out of the quality tables (the speed table "
            "shows them for orientation)."
        )
    if fid_protocol:
        results["fid_protocol"] = fid_protocol
    job = job_for(cfg.sample, cfg.text_encoder, cfg.eval, ctx.input_dir("sample"), ctx.run_dir, len(plan.prompts))
    results["figures"] = make_figures(
        out, job, plan.images, plan.prompts, vq, device, cfg.eval.grid_images, ctx.input_dir("train") / "metrics.jsonl"
    )
    results["grid_count"] = min(cfg.eval.grid_images, len(plan.images))
    paths = write_full_report(out, results)
    ctx.log(f"[evaluate] report: {paths['report.md']}")
    return {
        "counts": {"images": len(plan.images), "runs": len(runs)},
        "metrics": _summary(runs),
        "notes": results["notes"],
        "outputs": {
            "report_md": str(paths["report.md"]),
            "report_json": str(paths["report.json"]),
            **{
                k: v
                for k, v in results["figures"].items()
                if k in ("grid", "progression_png", "progression_gif", "loss_curve")
            },
        },
    }
