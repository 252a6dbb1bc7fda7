"""The ``eval`` section: the evaluation protocol (pinned and printed in every report)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional


@dataclass
class EvalConfig:
    coco_captions: Optional[str] = field(default=None, metadata={"help": "captions_val2014.json (local path)"})
    coco_images: Optional[str] = field(default=None, metadata={"help": "folder of the COCO val2014 images"})
    num_prompts: int = field(default=30000, metadata={"min": 1})
    prompt_seed: int = 0
    inception_weights: Optional[str] = field(default=None, metadata={
        "help": "pt_inception-2015-12-05-6726825d.pth; without it FID uses a labelled stand-in extractor"})
    fid_resize: int = field(default=256, metadata={"min": 32})
    fid_modes: list[Literal["fid", "clean_fid"]] = field(default_factory=lambda: ["fid", "clean_fid"], metadata={
        "help": "fid: the extractor's TF1-bilinear resize to 299; clean_fid: PIL bicubic to 299 first"})
    fid_batch_size: int = field(default=32, metadata={"min": 1})
    fid_stats_cache: Optional[str] = field(default=None, metadata={
        "help": "folder for cached reference statistics (.npz + .json); default: the eval stage folder"})
    captioner_path: Optional[str] = None
    captioner_class: Literal["VisionEncoderDecoderModel", "BlipForConditionalGeneration",
                             "AutoModelForImageTextToText", "AutoModelForVision2Seq"] = "VisionEncoderDecoderModel"
    caption_max_new_tokens: int = field(default=20, metadata={"min": 1})
    caption_num_beams: int = field(default=3, metadata={"min": 1})
    caption_batch_size: int = field(default=16, metadata={"min": 1})
    caption_metrics: list[Literal["BLEU", "METEOR", "ROUGE_L", "CIDEr", "SPICE"]] = field(
        default_factory=lambda: ["BLEU", "METEOR", "ROUGE_L", "CIDEr", "SPICE"])
    clip_model: str = "ViT-B-32"
    clip_checkpoint: Optional[str] = None
    clip_score_weight: float = field(default=2.5, metadata={"min": 0.0, "help": "w in w * max(cos, 0)"})
    clip_batch_size: int = field(default=64, metadata={"min": 1})
    retrieval_index: str = field(default="auto", metadata={
        "help": "'auto', 'Flat' or a FAISS index-factory string such as 'IVF4096,PQ32'"})
    retrieval_flat_max: int = field(default=200000, metadata={
        "min": 1, "help": "auto: exact flat inner-product index up to this many training images, IVF-PQ above"})
    retrieval_nprobe: int = field(default=32, metadata={"min": 1})
    metrics: list[Literal["fid", "captioning", "clip_score", "attributes", "speed"]] = field(
        default_factory=lambda: ["fid", "captioning", "clip_score"])
