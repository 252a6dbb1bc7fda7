"""Image-text alignment by captioning: caption each generated image, score the caption two ways.

  * ``vs_prompt``: against the input prompt alone, as the PDM paper describes (section 4);
  * ``vs_coco_refs``: against all of the image's COCO reference captions (5 for most val2014 images),
    as DALL-Eval does; only when ``refs`` are given.

Both use the same captions and the same scorers (:class:`evaluation.caption_metrics.CaptionScorer`).
The paper's captioner (Cornia et al., M2 Transformer) is not a transformers model; any local
transformers image-to-text model can stand in (:class:`evaluation.captioner.Captioner`), and the report
names the one used: scores are comparable only between runs with the same captioner.

``python -m evaluation.captioning IMAGES_DIR PROMPTS.json --captioner DIR`` scores a folder alone.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from pathlib import Path

from evaluation.caption_metrics import CaptionScorer
from evaluation.images import Images, ImageSet, check_prompts, check_refs, image_files

REFERENCE_MODES = {
    "vs_prompt": "caption vs the input prompt (PDM paper)",
    "vs_coco_refs": "caption vs all COCO reference captions of the image (DALL-Eval)",
}


class CaptioningEvaluator:
    """``evaluator(images, prompts, refs=None)`` -> ``{"vs_prompt": {...}, "vs_coco_refs": {...}, ...}``."""

    name = "captioning"

    def __init__(self, captioner: Callable[[ImageSet], list[str]], scorer: CaptionScorer):
        self.captioner, self.scorer = captioner, scorer

    def __call__(
        self, images: Images, prompts: Sequence[str] | None = None, refs: Sequence[Sequence[str]] | None = None
    ) -> dict:
        imgs = ImageSet(images)  # all input checks happen before the captioner runs
        prompts = check_prompts(prompts, imgs.n)
        refs = check_refs(refs, imgs.n) if refs is not None else None
        captions = self.captioner(imgs)
        if len(captions) != imgs.n:
            raise RuntimeError(f"captioner returned {len(captions)} captions for {imgs.n} images")
        out = {"vs_prompt": self.scorer.score(captions, [[p] for p in prompts])}
        if refs is not None:
            out["vs_coco_refs"] = self.scorer.score(captions, refs)
        out["captions"] = captions
        out["protocol"] = {
            **getattr(self.captioner, "protocol", {}),
            "references": {k: v for k, v in REFERENCE_MODES.items() if k in out},
            "scorers": "pycocoevalcap PTBTokenizer + " + ", ".join(self.scorer.metrics),
            "spice": self.scorer.spice_message or ("SPICE" in self.scorer.metrics),
        }
        return out

    @classmethod
    def from_config(cls, cfg, device: str | None = None, log=print) -> CaptioningEvaluator:
        from evaluation.captioner import Captioner

        scorer = CaptionScorer(cfg.caption_metrics, log=log)  # java and SPICE checks first: cheap
        return cls(Captioner.from_config(cfg, device), scorer)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description="caption a folder of images and score the captions")
    p.add_argument("images", help="folder of images, sorted by name")
    p.add_argument("prompts", help='JSON list of {"prompt": str, "refs": [str, ...]} in the same order')
    (
        p.add_argument("--captioner", required=True),
        p.add_argument("--captioner-class", default="VisionEncoderDecoderModel"),
    )
    p.add_argument("--num-beams", type=int, default=3)
    a = p.parse_args(argv)
    from evaluation.captioner import Captioner

    items = json.loads(Path(a.prompts).read_text())
    files = image_files(a.images)
    prompts = [x["prompt"] for x in items]
    refs = [x["refs"] for x in items] if all("refs" in x for x in items) else None
    with CaptionScorer() as scorer:
        out = CaptioningEvaluator(Captioner(a.captioner, a.captioner_class, num_beams=a.num_beams), scorer)(
            files, prompts, refs
        )
    print(json.dumps({k: v for k, v in out.items() if k != "captions"}, indent=2))
    return out


if __name__ == "__main__":
    main()
