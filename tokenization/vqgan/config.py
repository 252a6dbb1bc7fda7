"""``TokenizerConfig``: the ``tokenizer:`` section of an experiment config.

Architecture fields mirror taming-transformers' ``ddconfig`` (plus ``embed_dim`` / ``n_embed``). The
defaults are the *tiny* tokenizer for 32x32 RGB toy images: f4 (``ch_mult`` of length 3), an 8x8 token
grid, 256 codes. ``taming_preset`` returns the layouts of the published checkpoints; the PDM paper uses
``taming_preset("imagenet_f16_16384", image_size=512)`` (512 px images -> 32x32 tokens).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal, Optional

from tokenization.vqgan.modules import GROUPS

RGB = 3  # channels of every image the tokenizer reads or decodes


@dataclass
class TokenizerConfig:
    """VQ-GAN tokenizer: where its weights come from, its architecture, and how to train a toy one."""

    kind: Literal["vq", "gumbel"] = field(
        default="vq",
        metadata={"help": "vq: nearest-neighbour codebook (taming VQModel); gumbel: taming GumbelVQ (inference only)"},
    )
    ckpt_path: Optional[str] = field(
        default=None,
        metadata={
            "path": True,
            "help": "pretrained weights (.ckpt Lightning file or .safetensors); None: train a toy tokenizer",
        },
    )
    yaml_path: Optional[str] = field(
        default=None,
        metadata={"path": True, "help": "taming model yaml; when given, the architecture fields are read from it"},
    )
    trust_checkpoint: bool = field(
        default=False,
        metadata={"help": "allow full (pickle) loading of .ckpt files; only for files from a trusted source"},
    )

    # --- architecture (taming ddconfig) ---
    resolution: int = field(
        default=32,
        metadata={
            "min": 8,
            "help": "ddconfig resolution: the training image size, which also places the attention blocks",
        },
    )
    image_size: Optional[int] = field(
        default=None,
        metadata={
            "min": 8,
            "help": "side of the square images to tokenize; None: resolution (the PDM paper feeds "
            "512 px images to the 256-px-trained f16 model: 32x32 tokens)",
        },
    )
    in_channels: int = field(default=3, metadata={"min": 1})
    out_ch: int = field(default=3, metadata={"min": 1})
    ch: int = field(default=32, metadata={"min": GROUPS, "help": "base width (multiple of 32)"})
    ch_mult: list[int] = field(
        default_factory=lambda: [1, 2, 2],
        metadata={"help": "width multipliers per level; downsampling factor f = 2**(len-1)"},
    )
    num_res_blocks: int = field(default=1, metadata={"min": 1, "max": 8})
    attn_resolutions: list[int] = field(
        default_factory=list, metadata={"help": "feature resolutions with self-attention blocks"}
    )
    z_channels: int = field(default=64, metadata={"min": 1})
    embed_dim: int = field(default=32, metadata={"min": 1, "help": "codebook vector size"})
    n_embed: int = field(default=256, metadata={"min": 2, "max": 65536, "help": "codebook size"})
    dropout: float = field(default=0.0, metadata={"min": 0.0, "max": 1.0})

    # --- training a toy tokenizer (kind: vq only; no GAN / LPIPS) ---
    steps: int = field(default=400, metadata={"min": 0, "help": "optimizer steps (400: ~2.5 CPU-min)"})
    batch_size: int = field(default=32, metadata={"min": 1})
    lr: float = field(default=2e-3, metadata={"min": 0.0, "max": 1.0, "help": "Adam peak learning rate"})
    warmup_steps: int = field(default=50, metadata={"min": 0})
    beta: float = field(default=0.25, metadata={"min": 0.0, "max": 10.0, "help": "commitment weight"})
    ema_codebook: bool = field(
        default=True, metadata={"help": "update codes by exponential moving averages instead of the codebook loss"}
    )
    ema_decay: float = field(default=0.95, metadata={"min": 0.0, "max": 1.0})
    restart_dead_codes: bool = field(
        default=True, metadata={"help": "move codes unused for restart_every steps onto random encoder features"}
    )
    restart_every: int = field(default=50, metadata={"min": 1})
    l1_weight: float = field(default=1.0, metadata={"min": 0.0, "help": "L1 reconstruction weight"})
    l2_weight: float = field(default=1.0, metadata={"min": 0.0, "help": "L2 reconstruction weight"})
    holdout_fraction: float = field(
        default=0.1, metadata={"min": 0.0, "max": 0.9, "help": "images kept out for the metrics"}
    )
    time_limit_s: Optional[float] = field(
        default=None, metadata={"min": 0.0, "help": "stop training early after this many seconds"}
    )
    seed: int = field(default=0, metadata={"min": 0})
    # --- training on image shards (the tokenizer stage) ---
    holdout_max: int = field(
        default=1000, metadata={"min": 1, "help": "held-out images kept for the metrics (holdout_fraction of all)"}
    )
    shuffle_buffer: int = field(default=1000, metadata={"min": 1, "help": "images in the shuffle buffer"})
    checkpoint_every: int = field(
        default=100, metadata={"min": 1, "help": "steps between resumable training states (train_state.pt)"}
    )
    # --- the adversarial term of a VQ-GAN (taming's hinge PatchGAN; no LPIPS: it needs downloaded weights) ---
    disc_weight: float = field(
        default=0.0, metadata={"min": 0.0, "help": "weight of the patch discriminator's loss (taming: 0.8); 0: off"}
    )
    disc_start: int = field(default=0, metadata={"min": 0, "help": "the step the discriminator starts at"})
    disc_layers: int = field(default=2, metadata={"min": 1, "max": 6, "help": "stride-2 layers of the PatchGAN"})
    disc_channels: int = field(default=32, metadata={"min": 1, "help": "width of its first layer"})

    def __post_init__(self) -> None:
        if not self.ch_mult:
            raise ValueError("ch_mult must not be empty")
        bad = [m for m in self.ch_mult if m < 1 or (self.ch * m) % GROUPS]
        if bad:
            raise ValueError(
                f"ch * ch_mult must be positive multiples of {GROUPS} (GroupNorm), "
                f"got ch={self.ch}, ch_mult={self.ch_mult}"
            )
        for name in ("resolution", "image_size"):
            value = getattr(self, name)
            if value is not None and value % self.factor:
                raise ValueError(
                    f"{name} {value} is not divisible by the downsampling factor {self.factor} (= 2**(len(ch_mult)-1))"
                )
        if self.l1_weight <= 0 and self.l2_weight <= 0:
            raise ValueError("at least one of l1_weight, l2_weight must be > 0")
        for name in ("in_channels", "out_ch"):  # images are read, compared and written as RGB everywhere
            if getattr(self, name) != RGB:
                raise ValueError(f"{name} must be {RGB} (the images are RGB), got {getattr(self, name)}")
        if self.ema_codebook and self.ema_decay >= 1:
            raise ValueError(  # 1 - decay of each batch's statistics moves the codes: none at decay 1
                f"ema_decay must be < 1 with ema_codebook (at {self.ema_decay} the codes never move), or set "
                "ema_codebook: false"
            )

    @property
    def factor(self) -> int:
        """Spatial downsampling factor f."""
        return 2 ** (len(self.ch_mult) - 1)

    @property
    def pixels(self) -> int:
        """Side of the images that are tokenized: ``image_size``, or ``resolution`` if unset."""
        return self.image_size or self.resolution

    @property
    def grid_size(self) -> tuple[int, int]:
        """Token grid (h, w) for images of ``pixels`` x ``pixels``."""
        n = self.pixels // self.factor
        return (n, n)

    def ddconfig(self) -> dict:
        """The taming-style ``ddconfig`` dict for Encoder/Decoder."""
        return dict(
            ch=self.ch,
            ch_mult=list(self.ch_mult),
            num_res_blocks=self.num_res_blocks,
            attn_resolutions=list(self.attn_resolutions),
            resolution=self.resolution,
            z_channels=self.z_channels,
            dropout=self.dropout,
        )


_PRESETS = {
    # https://heibox.uni-heidelberg.de/d/a7530b09fed84f80a887/  (the one the PDM paper uses)
    "imagenet_f16_16384": dict(kind="vq", n_embed=16384, ch_mult=[1, 1, 2, 2, 4], attn_resolutions=[16]),
    # https://heibox.uni-heidelberg.de/d/8088892a516d4e3baf92/
    "imagenet_f16_1024": dict(kind="vq", n_embed=1024, ch_mult=[1, 1, 2, 2, 4], attn_resolutions=[16]),
    # https://heibox.uni-heidelberg.de/d/2e5662443a6b4307b470/  (its configs/model.yaml: ch_mult [1,1,2,4])
    "gumbel_f8_8192": dict(kind="gumbel", n_embed=8192, ch_mult=[1, 1, 2, 4], attn_resolutions=[32]),
}


def taming_preset(name: str, **overrides) -> TokenizerConfig:
    """Architecture of a published taming-transformers VQ-GAN (``imagenet_f16_16384``,
    ``imagenet_f16_1024``, ``gumbel_f8_8192``); pass ``ckpt_path=...`` etc. as overrides."""
    if name not in _PRESETS:
        raise KeyError(f"unknown preset {name!r}; choose one of {sorted(_PRESETS)}")
    base = TokenizerConfig(resolution=256, ch=128, num_res_blocks=2, z_channels=256, embed_dim=256)
    return replace(base, **{**_PRESETS[name], **overrides})
