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

The evaluators are built once (``evaluation.scorers``) and applied to every image set; a result of an earlier run
of this stage is reused where nothing that decides it changed (``evaluation.metric_cache``: adding a metric to
``eval.metrics`` computes only that one).

Every input is checked before any heavy work (``evaluation.evaluate_inputs``: missing weights files, mixed
image sizes, empty prompt set, missing COCO images, missing retrieval shards). The metrics that load the
trained export (speed, token NLL) are in ``evaluation.model_metrics``. Writes ``report.json`` + ``report.md``
(``evaluation.report.write_report``, plus the sections that module does not render, ``evaluation.evaluate_report``:
evaluation set, attribute match, notes, figures), ``samples_grid.png`` (each sample under its prompt),
``progression.png`` and ``progression.gif`` (``evaluation.progression``: the per-step token maps of the first
prompts decoded, positions not written yet black) and ``loss_curve.png`` (the train stage's ``metrics.jsonl``).
The manifest carries the headline numbers.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Optional

import numpy as np

from core.config import identity_dict
from core.environment import environment
from core.environment import summary as env_summary
from core.stage import StageContext, stage
from evaluation.evaluate_inputs import Plan, preflight
from evaluation.evaluate_report import GT, RECON, RETRIEVAL, RUN, headline_metrics, write_full_report
from evaluation.metric_cache import MetricCache
from evaluation.model_metrics import VQ_DIFFUSION_NLL, run_speed, run_token_nll
from evaluation.progression import make_figures
from evaluation.sample_worker import job_for
from training.rank_environments import ranks_text


def device_name() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def make_fid_extractor(ev, device: str):
    """The FID feature extractor (tests replace this with a cheap fake)."""
    from evaluation.inception import InceptionFeatures

    return InceptionFeatures(ev.inception_weights, device=device, sha256=ev.inception_sha256)


def run_metrics(
    ctx: StageContext, plan: Plan, runs: dict, scorers, vq, device: str, cache: MetricCache
) -> Optional[dict]:
    """Fill ``runs[name][metric]`` (samples, retrieval baseline, real images), each from ``cache`` when it holds
    it; returns the FID protocol when FID ran."""
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
    # image set -> (count, the images when a metric of it is computed): the VQ-GAN round trip of the real images
    # (minutes at COCO's size) is made only when a result of it is not reused
    images = {name: (len(imgs), lambda i=imgs: i) for name, imgs in sets.items()}
    real = {GT: (len(plan.gt_images), lambda: ground_truth(plan))} if plan.gt_images else {}
    if "attributes" in plan.metrics:
        real[RECON] = (len(plan.gt_images), functools.cache(lambda: _reconstruct(vq, plan.gt_images, device)))
    for metric in scorers.available():
        # FID's reference is the real set; the attribute reader and the captioner have real upper bounds
        extra = {} if metric == "fid" else {k: v for k, v in real.items() if metric == "attributes" or k == GT}
        for name, (n, get) in {**images, **extra}.items():
            runs.setdefault(name, {})[metric] = cache(metric, name, n, lambda m=metric, g=get: scorers(m, g()))
    if "attributes" in runs[RUN]:
        ctx.log(f"[evaluate] attribute match {runs[RUN]['attributes']['match']:.3f}")
    if "fid" in runs[RUN]:
        ctx.log(f"[evaluate] FID {runs[RUN]['fid'].get('fid', float('nan')):.3f}")
        return runs[RUN]["fid"]["protocol"]
    return None


# Inputs that only some metrics read: in those metrics' own keys (``extra``), not in every metric's, so that adding
# token_nll to eval.metrics (which adds the tokenize stage to the inputs) reuses the other results.
ONE_METRIC_INPUTS = ("tokenize",)


def metric_cache(ctx: StageContext) -> MetricCache:
    """The results of earlier runs of this stage, reused where the metric, the image set, the ``eval`` section
    (but its metric list) and the fingerprints of the inputs every metric reads are the same
    (``evaluation.metric_cache``)."""
    names = [n for n in ctx.stage.inputs_for(ctx.config) if n not in ONE_METRIC_INPUTS]
    inputs = {name: ctx.input_manifest(name).get("fingerprint") for name in names}
    return MetricCache(ctx.out_dir / "metric_cache", identity_dict(ctx.config.eval), inputs, ctx.log)


def timing_machine(device: str) -> dict:
    """What a timing depends on besides the model and the settings: the chip, its thread count, torch."""
    import platform

    import torch

    if device.startswith("cuda"):
        chip = torch.cuda.get_device_name()
    else:
        cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
        names = [line for line in cpuinfo.splitlines() if line.startswith("model name")]
        chip = names[0].split(":", 1)[1].strip() if names else platform.processor() or platform.machine()
    return {"device": device, "chip": chip, "threads": torch.get_num_threads(), "torch": torch.__version__}


def ground_truth(plan: Plan) -> list:
    """The prompts' real images as the metrics score them: MS COCO's files differ in size, so they are read
    center-cropped and resized to the generated images' side (as FID reads them); the held-out and synthetic
    ones already have the generated images' size."""
    from evaluation.images import CenterCropped

    if plan.synthetic or plan.heldout:
        return list(plan.gt_images)
    return [CenterCropped(Path(p), plan.image_size[0]) for p in plan.gt_images]


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
            f"{s.temperature}, top-k {s.top_k}, top-p {s.top_p}, guidance {s.guidance_scale}, revise {s.revise}, "
            f"seed {s.seed} "
            + (
                "(prompt i seeded from (seed, i): any batch size)"
                if s.rng == "per_prompt"
                else "(chunk c seeded from (seed, c))"
            )
            + f", batch {s.batch_size}",
            "model": f"{ctx.input_dir('train') / 'export'} (train.mode {cfg.train.mode}"
            + (f"; CogView2 super-resolution {ctx.run_dir / 'superres' / 'export'})" if cfg.sr.enabled else ")"),
            "environment": env_summary(environment()),
            "trained_with": env_summary(trained) + ranks_text(ctx.input_manifest("train").get("trainer_ranks", []))
            if (trained := ctx.input_manifest("train").get("trainer_environment"))
            else None,
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
    cache = metric_cache(ctx)
    with scorers:
        fid_protocol = run_metrics(ctx, plan, runs, scorers, vq, device, cache)
        if "token_nll" in plan.metrics and cfg.train.mode == "vq_diffusion":
            results["notes"].append(VQ_DIFFUSION_NLL)
            ctx.log(f"[evaluate] {VQ_DIFFUSION_NLL}")
        elif "token_nll" in plan.metrics:
            runs[RUN]["token_nll"] = cache(
                "token_nll",
                "held-out tokens",
                None,
                lambda: run_token_nll(ctx, vq, device),
                extra={"tokenize": ctx.input_manifest("tokenize").get("fingerprint")},
            )
        if "speed" in plan.metrics:

            def speed() -> dict:
                text = load_text_encoder(cfg.text_encoder, ctx.input_dir("text"))
                return {"rows": run_speed(ctx, plan, scorers, vq, text, device)}

            results["speed"] = cache("speed", RUN, None, speed, extra={"machine": timing_machine(device)})["rows"]
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
        "metrics": headline_metrics(runs),
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
