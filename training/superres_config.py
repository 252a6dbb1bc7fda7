"""The ``sr`` section: CogView2's hierarchical super-resolution stage (``training.superres_stage``).

``sr.enabled: true`` adds the ``superres`` stage (a high-resolution tokenizer, pairs of token grids of the
same images, the SR model) and makes the ``sample`` stage chain the trained model (low resolution) -> SR
(high resolution). Off by default.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

from tokenization.vqgan.config import TokenizerConfig
from training.model.super_resolution.config import SRModelConfig, SRSampleConfig
from training.train_config import check_betas


@dataclass
class SRTrainConfig:
    """Optimisation of the SR model (AdamW + warmup/cosine of ``training.engine``, one process)."""

    steps: int = field(default=600, metadata={"min": 1})
    batch_size: int = field(default=32, metadata={"min": 1})
    lr: float = field(default=5e-3, metadata={"min": 0.0})
    warmup_steps: int = field(default=20, metadata={"min": 0})
    min_lr_ratio: float = field(default=0.0, metadata={"min": 0.0, "max": 1.0})
    schedule: Literal["cosine", "constant"] = "cosine"
    betas: list[float] = field(default_factory=lambda: [0.9, 0.96], metadata={"min": 0.0, "below": 1.0})
    eps: float = field(default=1e-8, metadata={"min": 0.0})
    weight_decay: float = field(default=0.01, metadata={"min": 0.0})
    grad_clip: float = field(default=1.0, metadata={"min": 0.0, "help": "0 disables clipping"})
    precision: Literal["fp32", "bf16"] = "fp32"
    mask_ratios: list[float] = field(
        default_factory=lambda: [0.2, 0.4, 0.6, 0.8, 0.9],
        metadata={"min": 0.0, "max": 1.0, "help": "masked-prediction ratios of the iterative module (CogView2 3.3)"},
    )
    direct_fraction: float = field(
        default=0.5,
        metadata={"min": 0.0, "max": 1.0, "help": "share of samples with every high-res token masked (direct SR)"},
    )
    checkpoint_every: int = field(default=200, metadata={"min": 1})
    keep_last: int = field(default=2, metadata={"min": 1})
    log_every: int = field(default=50, metadata={"min": 1})
    seed: int = field(default=0, metadata={"min": 0})
    # fixed for this one-process loop (``training.engine.LocalEngine`` reads them)
    grad_accum = 1
    activation_checkpointing = False
    ema_decay = None

    def __post_init__(self) -> None:
        check_betas(self.betas)
        if not self.mask_ratios or min(self.mask_ratios) <= 0:
            raise ValueError(f"mask_ratios must be a non-empty list of ratios > 0, got {self.mask_ratios}")


@dataclass
class SRTokenizerConfig(TokenizerConfig):
    """The high-resolution tokenizer: the toy tokenizer's architecture (f4, 256 codes) at 64 px -> 16x16 tokens."""

    resolution: int = field(
        default=64, metadata={"min": 8, "help": "ddconfig resolution: the high-resolution training image size"}
    )


@dataclass
class SuperResConfig:
    enabled: bool = field(default=False, metadata={"help": "train the SR model and chain it after sampling"})
    image_size: int = field(default=64, metadata={"min": 8, "help": "side of the high-resolution images (pixels)"})
    n_images: Optional[int] = field(
        default=None,
        metadata={"min": 1, "help": "training images rendered at image_size; None: data.synthetic.n_train"},
    )
    tokenizer: SRTokenizerConfig = field(
        default_factory=SRTokenizerConfig,
        metadata={"help": "the high-resolution tokenizer: trained like the toy one, or loaded from ckpt_path"},
    )
    model: SRModelConfig = field(default_factory=SRModelConfig)
    train: SRTrainConfig = field(default_factory=SRTrainConfig)
    sample: SRSampleConfig = field(default_factory=SRSampleConfig)


def check_super_resolution(sr: SuperResConfig, model, tokenizer, source_kind: str) -> None:
    """Cross-section checks of an enabled ``sr`` section (raise ValueError): the SR model's grids, codebooks and
    text width against the generator (``model``), its tokenizer and the high-resolution tokenizer."""
    if not sr.enabled:
        return
    m, hi = sr.model, sr.tokenizer
    if source_kind != "synthetic":
        raise ValueError(
            "sr.enabled: the superres stage renders its training images at sr.image_size from the synthetic "
            "scenes; it needs data.download.source: synthetic"
        )
    if model.grid_h != model.grid_w:
        raise ValueError(f"sr.enabled: the SR model needs a square model grid, got {model.grid_h}x{model.grid_w}")
    if tokenizer.pixels >= sr.image_size:
        raise ValueError(
            f"sr.image_size ({sr.image_size}) must exceed the tokenizer's image side ({tokenizer.pixels}): "
            f"the SR model's low-resolution images are the high-resolution ones downsampled to that side"
        )
    checks = [
        ("sr.model.lo_grid", m.lo_grid, "model.grid_h", model.grid_h),
        ("sr.model.lo_codebook_size", m.lo_codebook_size, "model.codebook_size", model.codebook_size),
        ("sr.model.text_dim", m.text_dim, "model.text_dim", model.text_dim),
        ("sr.model.hi_grid", m.hi_grid, "the grid of sr.tokenizer (its image side / factor)", hi.grid_size[0]),
        ("sr.model.hi_codebook_size", m.hi_codebook_size, "sr.tokenizer.n_embed", hi.n_embed),
        ("sr.image_size", sr.image_size, "the image side of sr.tokenizer (image_size or resolution)", hi.pixels),
    ]
    for name, value, other, want in checks:
        if value != want:
            raise ValueError(f"{name} ({value}) != {other} ({want})")
