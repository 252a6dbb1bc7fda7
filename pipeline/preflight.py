"""The local files a run needs, checked before its first stage: a mistyped checkpoint path fails at once, not
after hours of download or weeks of training (the stage that reads it would fail only when it starts).

Each entry names the stage that reads a path setting and when that stage reads it. Only stages that will run
are checked (their folder is not current, or a stage they read will run before them), and only local paths:
URLs (and the keywords of eval.retrieval_images) are left to the stage. On a cluster the check runs where
``pt2i run`` runs (the submitted job).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, Optional

from pipeline.experiment import PATH_KEYWORDS


def _coco(cfg: Any) -> bool:
    """MS COCO is the evaluation set: a url-list source with ``eval.coco_captions`` (``evaluation.heldout``)."""
    return cfg.data.download.source != "synthetic"


SHARDS = "eval.retrieval_images"  # a keyword (PATH_KEYWORDS), or webdataset shards: a folder or a brace pattern

# (stage, dotted setting, whether this run reads it); a list setting (data.download.sources) is read per item
NEEDED: list[tuple[str, str, Callable[[Any], bool]]] = [
    ("download", "data.download.url_list", lambda c: c.data.download.source not in ("synthetic", "sources")),
    ("download", "data.download.eval_url_list", lambda c: c.data.download.source not in ("synthetic", "sources")),
    ("download", "data.download.sources[].url_list", lambda c: c.data.download.source == "sources"),
    ("download", "data.download.sources[].eval_url_list", lambda c: c.data.download.source == "sources"),
    ("text", "text_encoder.path", lambda c: True),
    ("text", "text_encoder.clip_model_config", lambda c: c.text_encoder.kind == "clip"),
    ("tokenizer", "tokenizer.ckpt_path", lambda c: True),
    ("tokenizer", "tokenizer.yaml_path", lambda c: True),
    ("superres", "sr.tokenizer.ckpt_path", lambda c: True),
    ("superres", "sr.tokenizer.yaml_path", lambda c: True),
    ("train", "cluster.hostfile", lambda c: c.cluster.launcher == "deepspeed"),
    (
        "train",
        "train.order_learner.clip_pretrained",  # a file, or an open_clip tag (not checked)
        lambda c: c.train.order == "learned" and c.train.order_learner.reward == "clip",
    ),
    ("sample", "eval.coco_captions", _coco),
    ("evaluate", "eval.coco_images", _coco),
    ("evaluate", "eval.inception_weights", lambda c: "fid" in c.eval.metrics),
    ("evaluate", "eval.captioner_path", lambda c: "captioning" in c.eval.metrics),
    ("evaluate", "eval.clip_checkpoint", lambda c: bool({"clip_score", "retrieval"} & set(c.eval.metrics))),
    ("evaluate", "eval.ar_export", lambda c: "speed" in c.eval.metrics),
    ("evaluate", SHARDS, lambda c: "retrieval" in c.eval.metrics and bool(c.eval.clip_checkpoint)),
]


def _values(cfg: Any, dotted: str) -> Iterator[tuple[str, Any]]:
    """``(key path, value)`` of a dotted setting; ``a[].b`` yields ``a[i].b`` for each item of the list ``a``."""
    head, _, rest = dotted.partition("[].")
    node = cfg
    for part in head.split("."):
        node = getattr(node, part, None)
        if node is None:
            return
    if not rest:
        yield dotted, node
        return
    for i, item in enumerate(node):
        yield from ((f"{head}[{i}].{key}", v) for key, v in _values(item, rest))


def _local(value: Any, key: str) -> bool:
    if not isinstance(value, str) or not value or "://" in value:
        return False
    if key == SHARDS:
        return value not in PATH_KEYWORDS  # the run's own image sets
    return not key.endswith("clip_pretrained") or "/" in value  # an open_clip tag names no file


def _missing(value: str, key: str) -> Optional[str]:
    """What a local path setting names that does not exist, or None: the path itself, or for ``SHARDS`` what
    the evaluate stage's reader (``list_shards``: a folder's ``.tar`` files, a brace pattern's) says is missing."""
    if key != SHARDS:
        return None if Path(value).expanduser().exists() else value
    from evaluation.retrieval_shards import list_shards

    try:
        list_shards(value)
    except FileNotFoundError as exc:
        return str(exc)
    return None


def _hint(value: str, key: str) -> str:
    """``; did you mean 'download'?`` for a near-miss keyword of ``SHARDS``."""
    close = difflib.get_close_matches(value, sorted(PATH_KEYWORDS), n=1) if key == SHARDS else []
    return f"; did you mean {close[0]!r}?" if close else ""


def _reads(reads: Callable[[Any], bool], cfg: Any) -> bool:
    try:
        return reads(cfg)
    except AttributeError:  # a config without that section (a stand-in of the tests) reads none of its files
        return False


def missing_files(cfg: Any, stages: Iterable[str]) -> list[str]:
    """``key: path (read by STAGE)`` for each local path setting that the named stages read and that does not
    exist."""
    stages = set(stages)
    out = []
    for stage, dotted, reads in NEEDED:
        if stage not in stages or not _reads(reads, cfg):
            continue
        for key, value in _values(cfg, dotted):
            gone = _missing(value, key) if _local(value, key) else None
            if gone is not None:
                out.append(f"{key}: {gone} (read by the {stage} stage{_hint(value, key)})")
    return out


def missing_programs(cfg: Any, stages: Iterable[str]) -> list[str]:
    """The programs outside this Python that the named stages start and that are not on PATH: the train stage's
    ``srun`` under ``cluster.launcher: slurm``."""
    import shutil

    cluster = getattr(cfg, "cluster", None)
    if "train" in set(stages) and getattr(cluster, "launcher", None) == "slurm" and shutil.which("srun") is None:
        return [
            "cluster.launcher: slurm starts the train stage's ranks with srun, which is not on PATH here (run pt2i "
            "in a Slurm allocation: sbatch or salloc, on a node with Slurm's commands)"
        ]
    return []
