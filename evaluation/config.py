"""The ``eval`` section: the evaluation protocol (pinned and printed in every report)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal, Optional

PROBE_DIM = 64  # the vector width a retrieval_index string is parsed at (small: PQ codebooks are d x 2**nbits)


@dataclass
class EvalConfig:
    coco_captions: Optional[str] = field(
        default=None, metadata={"path": True, "help": "captions_val2014.json (local path)"}
    )
    coco_images: Optional[str] = field(
        default=None, metadata={"path": True, "help": "folder of the COCO val2014 images"}
    )
    num_prompts: int = field(default=30000, metadata={"min": 1})
    prompt_seed: int = field(default=0, metadata={"min": 0})
    inception_weights: Optional[str] = field(
        default=None,
        metadata={
            "path": True,
            "help": "pt_inception-2015-12-05-6726825d.pth; without it FID uses a labelled stand-in extractor",
        },
    )
    inception_sha256: Optional[str] = field(
        default=None,
        metadata={
            "help": "the sha256 (or its first hex digits) inception_weights must have, checked before loading; "
            "default: the hash in the file's name (torch.hub convention), else the standard file's 6726825d"
        },
    )
    fid_resize: int = field(default=256, metadata={"min": 32})
    fid_modes: list[Literal["fid", "clean_fid"]] = field(
        default_factory=lambda: ["fid", "clean_fid"],
        metadata={"help": "fid: the extractor's TF1-bilinear resize to 299; clean_fid: PIL bicubic to 299 first"},
    )
    fid_batch_size: int = field(default=32, metadata={"min": 1})
    fid_stats_cache: Optional[str] = field(
        default=None,
        metadata={
            "path": "output",
            "help": "folder for cached reference statistics (.npz + .json); default: the eval stage folder",
        },
    )
    captioner_path: Optional[str] = field(default=None, metadata={"path": True})
    captioner_class: Literal[
        "VisionEncoderDecoderModel",
        "BlipForConditionalGeneration",
        "AutoModelForImageTextToText",
        "AutoModelForVision2Seq",
    ] = "VisionEncoderDecoderModel"
    caption_max_new_tokens: int = field(default=20, metadata={"min": 1})
    caption_num_beams: int = field(default=3, metadata={"min": 1})
    caption_batch_size: int = field(default=16, metadata={"min": 1})
    caption_metrics: list[Literal["BLEU", "METEOR", "ROUGE_L", "CIDEr", "SPICE"]] = field(
        default_factory=lambda: ["BLEU", "METEOR", "ROUGE_L", "CIDEr", "SPICE"]
    )
    clip_model: str = "ViT-B-32"
    clip_checkpoint: Optional[str] = field(default=None, metadata={"path": True})
    clip_score_weight: float = field(default=2.5, metadata={"min": 0.0, "help": "w in w * max(cos, 0)"})
    clip_batch_size: int = field(default=64, metadata={"min": 1})
    retrieval_index: str = field(
        default="auto", metadata={"help": "'auto', 'Flat' or a FAISS index-factory string such as 'IVF4096,PQ32'"}
    )
    retrieval_flat_max: int = field(
        default=200000,
        metadata={
            "min": 1,
            "help": "auto: exact flat inner-product index up to this many training images, IVF-PQ above",
        },
    )
    retrieval_nprobe: int = field(default=32, metadata={"min": 1})
    retrieval_images: str = field(
        default="auto",
        metadata={
            "path": True,
            "help": "training images the retrieval baseline indexes: 'download' (the download stage's train "
            "shards), 'synthetic' (the synthetic train split), 'auto' (download shards when that stage "
            "wrote any, else the synthetic split), or webdataset shards: a folder of .tar files or a "
            "brace pattern such as /data/laion/{00000..01999}.tar (local or fsspec URL)",
        },
    )
    retrieval_workers: Optional[int] = field(
        default=None,
        metadata={
            "min": 0,
            "help": "Ray actors embedding the image shards (one shard per task, resumable); None: one "
            "per GPU of the Ray cluster, else 1; 0: in this process",
        },
    )
    retrieval_shard_timeout_s: float = field(
        default=1800.0,
        metadata={
            "min": 0.1,
            "help": "seconds one image shard may take on a retrieval actor (embedding or fetching); past it "
            "the actor is replaced and the shard redone",
        },
    )
    metrics: list[
        Literal["fid", "fd_vq", "captioning", "clip_score", "attributes", "speed", "retrieval", "token_nll"]
    ] = field(
        default_factory=lambda: ["fid", "captioning", "clip_score"],
        metadata={
            "help": "what the evaluate stage measures; attributes: synthetic shapes only; retrieval: the CLIP "
            "retrieval baseline over the training images (eval.retrieval_images; needs clip_checkpoint); "
            "token_nll: the model's NLL of the tokenize stage's eval split under its own factorisation; fd_vq: "
            "Fréchet distance to the synthetic eval images in the run's VQ encoder's features (synthetic only)"
        },
    )
    # ---- the sample stage (evaluation/sample_stage.py) ----
    save_step_maps: Literal["none", "first", "all"] = field(
        default="first",
        metadata={
            "help": "per-step token maps (steps/chunk_NNNNN.npz) of no chunk, the first chunk (enough for the "
            "figures) or all chunks (T x L int16 per image)"
        },
    )
    sample_workers: Optional[int] = field(
        default=None,
        metadata={
            "min": 0,
            "help": "Ray actors sampling chunks; None: one per GPU of the Ray cluster (cluster.address) or "
            "of this machine when it has several, else in this process; 0: in this process",
        },
    )
    sample_chunk_timeout_s: float = field(
        default=1800.0,
        metadata={
            "min": 0.1,
            "help": "seconds one chunk may take on a sampling actor (the first includes loading the models); "
            "past it the actor is replaced and the chunk redone",
        },
    )
    use_ema: bool = field(default=True, metadata={"help": "sample from model_ema.safetensors when the export has it"})
    grid_images: int = field(default=16, metadata={"min": 1, "help": "samples in the report's grid figure"})
    # ---- speed table (PDM Table 4) ----
    speed_steps: list[int] = field(
        default_factory=lambda: [8, 16, 64, 256],
        metadata={
            "min": 1,
            "help": "progressive T values timed; L (one token per step) is always added; values that "
            "do not divide L are dropped",
        },
    )
    speed_batch_size: Optional[int] = field(
        default=None, metadata={"min": 1, "help": "prompts per batch for the batched timing; None: sample.batch_size"}
    )
    speed_images: int = field(default=4, metadata={"min": 1, "help": "images timed one at a time (batch 1)"})
    speed_warmup: int = field(default=1, metadata={"min": 0, "help": "untimed warm-up runs per row"})
    speed_quality_images: Optional[int] = field(
        default=None,
        metadata={
            "min": 0,
            "help": "images sampled per speed-table row (the first eval prompts) and scored by the "
            "measured metrics (FID, CIDEr, attribute match, CLIP score), as in Table 4; None: "
            "every eval prompt; 0: timing only. Rows of randomly initialised models are not scored",
        },
    )
    ar_export: Optional[str] = field(
        default=None,
        metadata={
            "path": True,
            "help": "export folder of a trained autoregressive baseline (train.mode: autoregressive); None: a "
            "randomly initialised AR model of the same size is timed (noted in the report)",
        },
    )

    def __post_init__(self):
        if "speed" in self.metrics and "fid" in self.metrics and self.speed_quality_images == 1:
            raise ValueError(  # the evaluate stage's rule (evaluation.evaluate_inputs)
                "speed_quality_images: 1 image per T cannot give an FID (it needs >= 2); use 0 (timing only) or "
                "more images"
            )
        if self.inception_sha256 is not None and not re.fullmatch(r"[0-9a-fA-F]{8,64}", self.inception_sha256):
            raise ValueError(f"inception_sha256 must be 8 to 64 hex digits, got {self.inception_sha256!r}")
        for metric, key in (("fid", "fid_modes"), ("captioning", "caption_metrics")):
            if metric in self.metrics and not getattr(self, key):  # the evaluate stage refuses an empty list
                raise ValueError(f"{key} must not be empty with {metric} in metrics: list at least one")
        if "retrieval" in self.metrics and self.retrieval_index != "auto":
            _check_index_factory(self.retrieval_index)


def _check_index_factory(factory: str) -> None:
    """Refuse a FAISS index-factory string FAISS cannot parse, before the evaluate stage embeds every training
    image to build it. Only the syntax: whether it fits the CLIP width (PQ m dividing d) is known only then."""
    try:
        import faiss
    except ImportError:  # the evaluate stage says so when it needs it
        return
    try:
        faiss.index_factory(PROBE_DIM, factory, faiss.METRIC_INNER_PRODUCT)
    except Exception as exc:  # noqa: BLE001 - any other error depends on the width (PQ m must divide it)
        if "could not parse" in str(exc):
            raise ValueError(
                f"retrieval_index {factory!r} is not a FAISS index-factory string: use 'auto', 'Flat' or one "
                "such as 'IVF4096,PQ32' or 'HNSW32'"
            ) from None
