"""The evaluate stage's per-metric results, kept across its reruns (``evaluate/metric_cache/``).

The stage reruns whenever the ``eval`` section changes; at COCO's 30k images each FID, captioning or CLIP
pass takes minutes to hours, and adding one metric to ``eval.metrics`` should not redo the others. A result
is reused when everything that decides it is unchanged: the metric, the image set (its name and size), the
whole ``eval`` section but its ``metrics`` list, and the fingerprints of every stage the evaluate stage reads
(samples, real images, tokenizer, text encoder, model) for every metric; a metric that reads more adds it to its
own key (``extra``: the held-out token NLL the tokenize stage's fingerprint, the speed table the machine it timed
on). Anything else changed computes it again. The log says which results were reused. ``VERSION`` is raised when
a metric's code changes what it returns.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

from core.files import read_json, write_json_atomic

VERSION = 1


def _plain(value: Any) -> Any:
    """numpy scalars and arrays as Python numbers and lists; anything else as its string."""
    return value.tolist() if hasattr(value, "tolist") else str(value)


class MetricCache:
    """``cache(metric, set_name, n_images, compute, extra=None)`` -> the result, from ``folder`` when its key
    matches (``n_images`` None: a metric of no image set; ``extra``: what else this metric's result depends on)."""

    def __init__(self, folder: Path, eval_section: dict, inputs: dict[str, Any], log: Callable[[str], None] = print):
        self.folder, self.log = Path(folder), log
        self.basis = {
            "version": VERSION,
            "eval": {k: v for k, v in eval_section.items() if k != "metrics"},
            "inputs": inputs,
        }

    def key(self, metric: str, set_name: str, n_images: Optional[int], extra: Optional[dict] = None) -> str:
        basis = {**self.basis, "metric": metric, "set": set_name, "images": n_images, "extra": extra or {}}
        return hashlib.sha256(json.dumps(basis, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def _path(self, metric: str, set_name: str, key: str) -> Path:
        slug = re.sub(r"[^A-Za-z0-9]+", "_", set_name).strip("_").lower()
        return self.folder / f"{metric}-{slug}-{key}.json"

    def __call__(
        self,
        metric: str,
        set_name: str,
        n_images: Optional[int],
        compute: Callable[[], dict],
        extra: Optional[dict] = None,
    ) -> dict:
        key = self.key(metric, set_name, n_images, extra)
        path = self._path(metric, set_name, key)
        kept = read_json(path)
        if isinstance(kept, dict) and kept.get("key") == key and isinstance(kept.get("result"), dict):
            self.log(f"[evaluate] {metric} of {set_name}: reused (same images, eval settings and inputs; {path.name})")
            return kept["result"]
        # minutes each at COCO's size
        self.log(f"[evaluate] {metric} of {set_name}" + (f" ({n_images} images)" if n_images is not None else ""))
        result = compute()
        self.folder.mkdir(parents=True, exist_ok=True)
        for old in self.folder.glob(f"{path.name.rsplit('-', 1)[0]}-*.json"):  # this metric's older results
            old.unlink(missing_ok=True)
        # through JSON and back: a reused result and a computed one are the same values of the same types
        result = json.loads(json.dumps(result, default=_plain))
        write_json_atomic(path, {"key": key, "metric": metric, "set": set_name, "result": result})
        return result
