"""``DiffusionConfig`` (the ``model.diffusion`` section): the mask-and-replace schedule of a VQ-Diffusion model.

The model owns its schedule (the timestep embedding has one row per step), so the export's ``config.yaml``
carries it and the sampler reads it from the model. Defaults: VQ-Diffusion's linear cumulative schedule
(100 steps; the ``alpha1`` schedule of microsoft/VQ-Diffusion and the defaults of diffusers'
``VQDiffusionScheduler``).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class DiffusionConfig:
    timesteps: int = field(default=100, metadata={"min": 2, "help": "T: forward steps (one timestep embedding each)"})
    alpha_cum_start: float = field(
        default=0.99999, metadata={"min": 0.0, "max": 1.0, "help": "alpha-bar_1: P(a token is untouched) after step 1"}
    )
    alpha_cum_end: float = field(default=0.000009, metadata={"min": 0.0, "max": 1.0, "help": "alpha-bar_T"})
    gamma_cum_start: float = field(
        default=0.000009, metadata={"min": 0.0, "max": 1.0, "help": "gamma-bar_1: P(a token is [MASK]) after step 1"}
    )
    gamma_cum_end: float = field(default=0.99999, metadata={"min": 0.0, "max": 1.0, "help": "gamma-bar_T"})

    def __post_init__(self) -> None:
        if not self.alpha_cum_end < self.alpha_cum_start:
            raise ValueError(
                f"alpha_cum_end ({self.alpha_cum_end}) must be below alpha_cum_start ({self.alpha_cum_start})"
            )
        if not self.gamma_cum_start < self.gamma_cum_end < 1.0:
            raise ValueError(
                f"need gamma_cum_start < gamma_cum_end < 1, got {self.gamma_cum_start}, {self.gamma_cum_end}"
            )
        for end in ("start", "end"):
            a, g = getattr(self, f"alpha_cum_{end}"), getattr(self, f"gamma_cum_{end}")
            if a + g > 1.0:
                raise ValueError(f"alpha_cum_{end} + gamma_cum_{end} = {a + g} > 1 (their rest is the replace mass)")
