"""The super-resolution model's config (``sr.model``) and its sampler's (``sr.sample``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from training.model.sampling.config import check_top_p, top_p_field


@dataclass
class SRModelConfig:
    """Defaults: the toy scale, 8x8 tokens (32 px, the tiny tokenizer) -> 16x16 tokens (64 px)."""

    lo_grid: int = field(default=8, metadata={"min": 1, "help": "side of the low-resolution token grid (PDM's)"})
    hi_grid: int = field(default=16, metadata={"min": 1, "help": "side of the high-resolution token grid"})
    lo_codebook_size: int = field(default=256, metadata={"min": 2, "help": "codes of the low-resolution tokenizer"})
    hi_codebook_size: int = field(default=256, metadata={"min": 2, "help": "codes of the high-resolution tokenizer"})
    text_dim: int = field(default=64, metadata={"min": 1, "help": "width of the frozen text encoder's states"})
    dim: int = field(default=64, metadata={"min": 8})
    layers: int = field(default=2, metadata={"min": 1})
    heads: int = field(default=4, metadata={"min": 1})
    ffn_dim: int = field(default=256, metadata={"min": 1})
    dropout: float = field(default=0.0, metadata={"min": 0.0, "max": 1.0})
    norm_eps: float = field(default=1e-5, metadata={"min": 0.0})
    init_std: float = field(default=0.02, metadata={"min": 0.0})
    window: int = field(
        default=9,
        metadata={
            "min": 1,
            "help": "receptive field (side, odd) of the high-res tokens' local attention (CogView2 4.2: 9)",
        },
    )
    cross_window: int = field(
        default=5,
        metadata={"min": 1, "help": "receptive field (side, odd) on the low-res grid around a high-res token's place"},
    )

    def __post_init__(self) -> None:
        if self.dim % self.heads:
            raise ValueError(f"dim ({self.dim}) must be divisible by heads ({self.heads})")
        if self.hi_grid < self.lo_grid:
            raise ValueError(f"hi_grid ({self.hi_grid}) must not be smaller than lo_grid ({self.lo_grid})")
        for name in ("window", "cross_window"):
            if getattr(self, name) % 2 == 0:
                raise ValueError(f"{name} must be odd (a window centred on the token), got {getattr(self, name)}")


@dataclass
class SRSampleConfig:
    """Direct super-resolution, then LoPAR: ``mask_ratio`` of the tokens re-masked and regenerated in
    2 * ``lopar_window`` - 1 iterations (Eq. 6)."""

    lopar_window: int = field(
        default=4, metadata={"min": 1, "help": "sigma of Eq. 4-6: side of the LoPAR blocks (CogView2: 6 on 60x60)"}
    )
    mask_ratio: float = field(
        default=0.75,
        metadata={"min": 0.0, "max": 1.0, "help": "share of the direct output regenerated (CogView2: 75%)"},
    )
    refine: bool = field(default=True, metadata={"help": "run the iterative (LoPAR) refinement after direct SR"})
    temperature: float = field(default=1.0, metadata={"min": 0.0, "help": "token temperature; 0 = argmax"})
    top_k: int = field(default=0, metadata={"min": 0, "help": "keep the k best tokens; 0 = off"})
    top_p: float = top_p_field()

    def __post_init__(self) -> None:
        check_top_p(self.top_p)
