"""What the ``evaluate`` stage will read (:class:`Plan`), checked by :func:`preflight` before any model or
image is loaded: the sample stage's prompts and images, the reference images for FID and FD (the synthetic
eval split, the downloaded held-out split, or MS COCO), and the weights each metric needs."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from core.stage import StageContext, StageError
from evaluation.heldout import heldout_images


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
    if "speed" in m:  # speed_quality_images 1 with FID fails at load (EvalConfig)
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
