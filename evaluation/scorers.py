"""The evaluators of ``eval.metrics``, built once per evaluate run (on first use) and applied to any image
set scored against the evaluation prompts: the samples, the retrieval baseline's images, the real images,
and the speed table's samples at each T (:meth:`Scorers.quality`).

    with Scorers(ev, plan, synthetic_size, fid_extractor, cache_dir, device, log) as scorers:
        runs["PDM"]["fid"] = scorers("fid", images)
        row["quality"] = scorers.quality(images_of_the_first_n_prompts)

Measured are the metrics in ``plan.metrics`` that can run: ``captioning`` needs ``eval.captioner_path``,
``clip_score`` needs ``eval.clip_checkpoint`` (otherwise the evaluate stage notes why they are missing).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Optional

QUALITY_METRICS = ("fid", "fd_vq", "captioning", "attributes", "clip_score")


class Scorers:
    def __init__(
        self,
        ev,
        plan,
        synthetic_size: Optional[int],
        fid_extractor: Callable[[], object],
        cache_dir,
        device: str,
        log: Callable[[str], None] = print,
        vq=None,
    ):
        self.ev, self.plan, self.synthetic_size, self.vq = ev, plan, synthetic_size, vq
        self.fid_extractor, self.cache_dir, self.device, self.log = fid_extractor, cache_dir, device, log
        self._built: dict = {}

    def available(self) -> list[str]:
        """The quality metrics of ``eval.metrics`` that this run can measure, in ``QUALITY_METRICS`` order."""
        ok = {
            "captioning": bool(self.ev.captioner_path),
            "clip_score": bool(self.ev.clip_checkpoint),
            "fd_vq": self.vq is not None,
        }
        return [m for m in QUALITY_METRICS if m in self.plan.metrics and ok.get(m, True)]

    def evaluator(self, metric: str):
        if metric not in self._built:
            self._built[metric] = self._build(metric)
        return self._built[metric]

    def _build(self, metric: str):
        ev, plan = self.ev, self.plan
        if metric == "attributes":
            from evaluation.attributes import AttributeEvaluator

            return AttributeEvaluator(self.synthetic_size)
        if metric == "fid":
            from evaluation.fid import FIDEvaluator

            return FIDEvaluator.from_config(
                ev,
                plan.fid_reference,
                plan.fid_reference_name,
                len(plan.fid_reference),
                ev.fid_stats_cache or self.cache_dir,
                self.device,
                extractor=self.fid_extractor(),
            )
        if metric == "fd_vq":
            from evaluation.fd_vq import VQFrechetEvaluator

            return VQFrechetEvaluator(self.vq, plan.fid_reference, self.device)
        if metric == "captioning":
            from evaluation.captioning import CaptioningEvaluator

            return CaptioningEvaluator.from_config(ev, self.device, self.log)
        if metric == "clip_score":
            from evaluation.clip_score import ClipScoreEvaluator

            return ClipScoreEvaluator.from_config(ev, self.device)
        raise ValueError(f"unknown quality metric {metric!r}")

    def __call__(self, metric: str, images, n: Optional[int] = None) -> dict:
        """``metric`` of ``images``, the samples of the first ``n`` (default all) evaluation prompts."""
        n = len(self.plan.prompts) if n is None else n
        refs = self.plan.refs[:n] if self.plan.refs is not None else None
        return self.evaluator(metric)(images, self.plan.prompts[:n], refs)

    def quality(self, images, n: Optional[int] = None) -> dict:
        """The headline number of every available metric (Table 4's quality columns): ``fid`` /
        ``clean_fid``, ``fd_vq``, ``cider`` (caption vs prompt, as in the PDM paper), ``attribute_match``,
        ``clip_score``; plus ``num_images``."""
        n = len(images) if n is None else n
        out: dict = {"num_images": n}
        for metric in self.available():
            r = self(metric, images, n)
            if metric == "fid":
                out.update({k: r[k] for k in ("fid", "clean_fid") if k in r})
            elif metric == "fd_vq":
                out["fd_vq"] = r["fd_vq"]
            elif metric == "captioning":
                cider = r.get("vs_prompt", {}).get("CIDEr")
                if cider is not None:
                    out["cider"] = cider
            elif metric == "attributes":
                out["attribute_match"] = r["match"]
            elif metric == "clip_score":
                out["clip_score"] = r["clip_score"]
        return out

    def close(self) -> None:
        cap = self._built.pop("captioning", None)
        if cap is not None:
            cap.scorer.close()

    def __enter__(self) -> Scorers:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
