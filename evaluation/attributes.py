"""Attribute match on the synthetic shapes data: an exact, model-free text-image agreement score.

Each generated image is read back with ``tokenization.synthetic.read_attributes`` (nearest palette colour,
connected components per quadrant, kind x size templates) and compared with its caption:

  * ``match``: fraction of images whose shapes are exactly those of the caption (``attributes_match``);
  * ``per_attribute``: the mean over images of ``attribute_scores`` (position, color, kind, size, count, all).

Only meaningful for prompts written by the synthetic caption grammar; a caption it cannot parse is an
error before any image is read. Images are read at the synthetic ``image_size``: a set of another size
is resized (nearest) to it first.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from evaluation.images import Images, ImageSet, check_prompts

ATTRIBUTES = ("all", "position", "color", "kind", "size", "count")


class AttributeEvaluator:
    """``evaluator(images, prompts)`` -> ``{"match", "per_attribute", "num_images", "per_sample", "protocol"}``."""

    name = "attributes"

    def __init__(self, image_size: int | None = None, batch_size: int = 64):
        self.image_size, self.batch_size = image_size, batch_size

    def __call__(self, images: Images, prompts: Sequence[str] | None = None, refs=None) -> dict:
        from tokenization.synthetic import attribute_scores, parse_caption

        imgs = ImageSet(images)  # one size, readable: checked before any pixel is read
        prompts = check_prompts(prompts, imgs.n)
        for i, p in enumerate(prompts):
            try:
                parse_caption(p)
            except Exception as exc:  # noqa: BLE001  (the parser raises ValueError / KeyError)
                raise ValueError(
                    f"prompts[{i}] {p!r} is not a synthetic shapes caption ({exc}); the attribute "
                    f"metric only applies to the synthetic data"
                ) from None
        per_sample, k = [], 0
        for batch in imgs.batches(self.batch_size, "attributes"):
            for img in batch:
                if self.image_size and img.shape[:2] != (self.image_size, self.image_size):
                    img = _resize_nearest(img, self.image_size)
                per_sample.append(attribute_scores(img, prompts[k]))
                k += 1
        mean = {a: float(np.mean([s[a] for s in per_sample])) for a in ATTRIBUTES}
        return {
            "match": mean["all"],
            "per_attribute": mean,
            "num_images": imgs.n,
            "per_sample": [s["all"] for s in per_sample],
            "protocol": {
                "reader": "tokenization.synthetic.read_attributes",
                "image_size": imgs.height,
                "read_at": self.image_size or imgs.height,
                "match": "shapes read from the image == shapes of the caption (kind, color, size, "
                "position of every shape, and nothing else)",
            },
        }


def _resize_nearest(img: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(img).resize((size, size), Image.NEAREST))


def attributes_markdown(runs: dict) -> list[str]:
    """The report section: one row per run that has an ``attributes`` result."""
    rows = [(name, r["attributes"]) for name, r in runs.items() if "attributes" in r]
    if not rows:
        return []
    header = ["Images", "exact match (↑)"] + [a for a in ATTRIBUTES if a != "all"] + ["N"]
    lines = [
        "## Attribute match (synthetic shapes)",
        "",
        "Fraction of images whose shapes, read back from the pixels, are exactly the caption's; then the "
        "per-attribute agreement (tokenization.synthetic.attribute_scores).",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for name, a in rows:
        pa = a["per_attribute"]
        cells = (
            [name, f"{a['match']:.3f}"] + [f"{pa[k]:.3f}" for k in ATTRIBUTES if k != "all"] + [str(a["num_images"])]
        )
        lines.append("| " + " | ".join(cells) + " |")
    return lines + [""]
