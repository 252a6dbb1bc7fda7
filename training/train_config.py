"""The ``train`` section: optimisation, progressive tuples, DeepSpeed engine, checkpoints, logs."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional


@dataclass
class TrainConfig:
    steps: int = field(default=1000, metadata={"min": 1})
    batch_size: int = field(default=32, metadata={"min": 1, "help": "global batch (all ranks, after accumulation)"})
    grad_accum: int = field(default=1, metadata={"min": 1})
    lr: float = field(default=1e-4, metadata={"min": 0.0, "help": "peak learning rate (paper: 1e-4)"})
    min_lr_ratio: float = field(default=0.0, metadata={"min": 0.0, "max": 1.0})
    warmup_steps: int = field(default=0, metadata={"min": 0})
    schedule: Literal["cosine", "constant"] = "cosine"
    betas: list[float] = field(default_factory=lambda: [0.9, 0.96], metadata={"min": 0.0, "max": 1.0})
    weight_decay: float = field(default=0.01, metadata={"min": 0.0})
    grad_clip: float = field(default=1.0, metadata={"min": 0.0, "help": "0 disables clipping"})
    order: str = field(default="const_error", metadata={"help": "generation order used to build stage tuples"})
    stages: int = field(default=16, metadata={"min": 1, "help": "T, the number of progressive stages"})
    p_error: float = field(default=0.3, metadata={"min": 0.0, "max": 1.0, "help": "error-injection probability (section 3.3)"})
    state_loss_weight: float = field(default=1.0, metadata={"min": 0.0})
    mode: Literal["progressive", "emage", "autoregressive"] = "progressive"
    precision: Literal["fp32", "fp16", "bf16"] = "fp32"
    zero_stage: int = field(default=2, metadata={"min": 0, "max": 3})
    offload_optimizer: Literal["none", "cpu", "nvme"] = "none"
    offload_params: Literal["none", "cpu", "nvme"] = "none"
    nvme_path: Optional[str] = None
    activation_checkpointing: bool = False
    ema_decay: Optional[float] = field(default=None, metadata={"min": 0.0, "max": 1.0})
    checkpoint_every: int = field(default=500, metadata={"min": 1})
    keep_last: int = field(default=3, metadata={"min": 1})
    log_every: int = field(default=10, metadata={"min": 1})
    sample_every: int = field(default=0, metadata={"min": 0, "help": "0 disables the sample grid"})
    wandb_project: Optional[str] = None
    num_workers: int = field(default=1, metadata={"min": 0})
    seed: int = 0

    def __post_init__(self):
        if len(self.betas) != 2:
            raise ValueError(f"betas must have two values (beta1, beta2), got {self.betas}")
        if self.precision == "fp16" and self.ema_decay is not None and self.ema_decay < 0.5:
            raise ValueError("ema_decay below 0.5 is almost certainly a typo (e.g. 0.999)")
