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
    captioner_path: Optional[str] = None
    clip_model: str = "ViT-B-32"
    clip_checkpoint: Optional[str] = None
    metrics: list[Literal["fid", "captioning", "clip_score", "attributes", "speed"]] = field(
        default_factory=lambda: ["fid", "captioning", "clip_score"])
