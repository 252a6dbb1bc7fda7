"""The ``train`` section: optimisation, progressive tuples, DeepSpeed engine, checkpoints, logs, data loader."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal, Optional

from training.model.order_learner.config import OrderLearnerConfig


@dataclass
class TrainConfig:
    REMOVED_KEYS: ClassVar[dict] = {  # core.config: (the value it had, what to set instead)
        "max_text_len": (
            None,
            "set text_encoder.max_length, which cuts captions keeping their end token, for the token shards and "
            "the prompts alike (train.max_text_len cut only the training text, without its end token)",
        )
    }
    # ---- optimisation (PDM appendix A: AdamW b1 0.9 b2 0.96, cosine from 1e-4) ----
    steps: int = field(default=1000, metadata={"min": 1})
    batch_size: int = field(default=32, metadata={"min": 1, "help": "global batch (all ranks, after accumulation)"})
    grad_accum: int = field(default=1, metadata={"min": 1})
    lr: float = field(default=1e-4, metadata={"min": 0.0, "help": "peak learning rate (paper: 1e-4)"})
    min_lr_ratio: float = field(default=0.0, metadata={"min": 0.0, "max": 1.0})
    warmup_steps: int = field(default=0, metadata={"min": 0})
    schedule: Literal["cosine", "constant"] = "cosine"
    betas: list[float] = field(default_factory=lambda: [0.9, 0.96], metadata={"min": 0.0, "below": 1.0})
    eps: float = field(default=1e-8, metadata={"min": 0.0, "help": "AdamW epsilon"})
    weight_decay: float = field(
        default=0.01,
        metadata={"min": 0.0, "help": "applied to matrices only (biases, norms, [mask]/BOS rows are not decayed)"},
    )
    grad_clip: float = field(default=1.0, metadata={"min": 0.0, "help": "0 disables clipping"})
    # ---- what is trained ----
    order: str = field(default="const_error", metadata={"help": "generation order used to build stage tuples"})
    order_mode: Literal["topk", "softmax"] = field(
        default="topk", metadata={"help": "const_error / anti_progressive: deterministic ranking or Eq. 5 sampling"}
    )
    order_tau: float = field(default=1.0, metadata={"min": 1e-6, "help": "Eq. 5 temperature (order_mode=softmax)"})
    order_randomize: bool = field(default=False, metadata={"help": "halton: random roll per sample"})
    order_learner: OrderLearnerConfig = field(
        default_factory=OrderLearnerConfig,
        metadata={"help": "the position policy trained with order: learned (PDM 3.2, Eq. 6-7)"},
    )
    stages: int = field(default=16, metadata={"min": 1, "help": "T, the number of progressive stages"})
    stage_schedule: Literal["uniform", "linear", "cosine"] = field(
        default="uniform", metadata={"help": "positions per stage (training.model.orders.stage_sizes)"}
    )
    p_error: float = field(
        default=0.3, metadata={"min": 0.0, "max": 1.0, "help": "error-injection probability (section 3.3)"}
    )
    error_frac: list[float] = field(
        default_factory=lambda: [0.0, 0.2],
        metadata={
            "min": 0.0,
            "max": 1.0,
            "help": "[lo, hi]: fraction of visible tokens corrupted in a chosen instance",
        },
    )
    cap_revise: bool = field(default=True, metadata={"help": "at most as many revisions as writes of stage t-1"})
    state_loss_weight: float = field(default=1.0, metadata={"min": 0.0})
    label_smoothing: float = field(default=0.0, metadata={"min": 0.0, "max": 1.0})
    mode: Literal["progressive", "emage", "autoregressive", "vq_diffusion"] = field(
        default="progressive",
        metadata={
            "help": "what is trained: PDM (progressive), Emage's two-pass objective (emage), the autoregressive "
            "baseline, or the VQ-Diffusion baseline (vq_diffusion: model.diffusion's schedule, the bound + "
            "diffusion_aux_weight x the x_0 loss); sample.sampler must match"
        },
    )
    emage_remask: Literal["random", "low_confidence"] = "random"
    emage_first_pass_weight: float = field(default=0.0, metadata={"min": 0.0})
    emage_state_weight: float = field(
        default=1.0,
        metadata={
            "min": 0.0,
            "help": "mode emage: weight of the state head's loss on the second pass (masked -> generate, the "
            "model's wrong tokens -> revise), so the PDM sampler's state order and revision work; 0 leaves the "
            "head untrained (then sample with order: confidence and repredict: true or revise: false)",
        },
    )
    diffusion_aux_weight: float = field(
        default=5e-4,
        metadata={"min": 0.0, "help": "vq_diffusion: weight of the auxiliary x_0 loss (VQ-Diffusion's 5e-4)"},
    )
    diffusion_adaptive_aux: bool = field(
        default=True, metadata={"help": "vq_diffusion: scale that weight by 2 - (t - 1) / T (VQ-Diffusion's adaptive)"}
    )
    rng: Literal["per_sample", "per_batch"] = field(
        default="per_sample",
        metadata={
            "help": "per_sample: stage, order noise, errors and condition dropout of a sample come from a seed of "
            "(train.seed, epoch, sample key): the same whatever the world size, batch split or resume; "
            "per_batch: one generator per micro-batch (faster for big batches on GPUs)"
        },
    )
    # ---- engine ----
    precision: Literal["fp32", "fp16", "bf16"] = "fp32"
    zero_stage: int = field(default=2, metadata={"min": 0, "max": 3})
    offload_optimizer: Literal["none", "cpu", "nvme"] = "none"
    offload_params: Literal["none", "cpu", "nvme"] = "none"
    nvme_path: Optional[str] = field(default=None, metadata={"path": "output"})
    activation_checkpointing: bool = False
    ema_decay: Optional[float] = field(default=None, metadata={"min": 0.0, "below": 1.0})
    dist_timeout_minutes: int = field(default=30, metadata={"min": 1, "help": "collective timeout"})
    deterministic: bool = field(
        default=True,
        metadata={
            "help": "same config, seed and machine -> bitwise-identical weights: torch's deterministic "
            "algorithms and a fixed thread count; on GPU also deterministic cuDNN/cuBLAS (slower there)"
        },
    )
    threads: int = field(
        default=0,
        metadata={
            "min": 0,
            "help": "intra-op threads per rank (results depend on it); 0: the process's cores / ranks on "
            "the node when deterministic, else as the process starts",
        },
    )
    # ---- checkpoints and logs ----
    checkpoint_every: int = field(default=500, metadata={"min": 1})
    keep_last: int = field(default=3, metadata={"min": 1})
    resume: Literal["auto", "never", "force"] = field(
        default="auto",
        metadata={
            "help": "auto: continue from the latest complete checkpoint when it was made from the same token "
            "shards, text encoder, model and every train key that can change the weights, and refuse one made "
            "otherwise (naming the difference); never: move old checkpoints aside and train from scratch; force: "
            "continue from it whatever changed (the learning-rate schedule follows the config)"
        },
    )
    trust_checkpoint: bool = field(
        default=False,
        metadata={
            "help": "unpickle checkpoint files fully when resuming; only for files from a trusted source (the "
            "pipeline's own files load with torch.load(weights_only=True), DeepSpeed's are checked first)"
        },
    )
    log_every: int = field(default=10, metadata={"min": 1})
    sample_every: int = field(default=0, metadata={"min": 0, "help": "0 disables the sample grid"})
    eval_every: int = field(
        default=0,
        metadata={
            "min": 0,
            "neutral_default": True,
            "help": "steps between held-out losses (val/loss, val/token_acc, ...: the training objective on the "
            "tokenize stage's eval split, eval mode, each sample's draws fixed; training.heldout); 0 = off",
        },
    )
    eval_samples: int = field(
        default=256,
        metadata={
            "min": 1,
            "neutral_default": True,
            "help": "held-out samples each evaluation scores: the first ones of the eval split, split over the ranks",
        },
    )
    tensorboard: bool = True
    wandb_project: Optional[str] = None
    wandb_mode: Literal["online", "offline"] = field(
        default="offline",
        metadata={"help": "offline writes under the run folder (wandb sync later); online needs network access"},
    )
    # ---- data loader (token shards) ----
    train_split: Optional[str] = field(
        default="train",
        metadata={
            "help": "the tokenize stage's split to train on (its folder tokenize/<split>); None or a missing "
            "split: every split"
        },
    )
    num_workers: int = field(default=1, metadata={"min": 0})
    shuffle_buffer: int = field(default=1000, metadata={"min": 1, "help": "samples in the shuffle buffer"})
    data_split: Literal["auto", "shard", "sample"] = field(
        default="auto",
        metadata={
            "help": "shard: each rank/worker reads its own shards (scales); sample: all read every shard and "
            "keep their batches of one global stream (batches independent of world size); auto: shard "
            "when there are at least as many shards as rank x worker slots"
        },
    )
    on_bad_shard: Literal["skip", "fail"] = field(
        default="skip",
        metadata={"help": "a truncated/corrupt token shard or sample: count and skip it, or stop with an error"},
    )
    seed: int = field(default=0, metadata={"min": 0})

    def __post_init__(self):
        check_betas(self.betas)
        if len(self.error_frac) != 2 or self.error_frac[0] > self.error_frac[1]:
            raise ValueError(f"error_frac must be [lo, hi] with lo <= hi, got {self.error_frac}")
        if self.precision == "fp16" and self.ema_decay is not None and self.ema_decay < 0.5:
            raise ValueError("ema_decay below 0.5 is almost certainly a typo (e.g. 0.999)")
        if "nvme" in (self.offload_optimizer, self.offload_params) and not self.nvme_path:
            raise ValueError("offload to nvme needs train.nvme_path (a local directory on fast storage)")
        if self.offload_params != "none" and self.zero_stage != 3:
            raise ValueError("offload_params needs zero_stage 3 (parameters are partitioned only by ZeRO-3)")
        if self.ema_decay is not None and self.ema_decay >= 1:
            raise ValueError(  # the EMA moves 1 - decay of the way each step: at 1 it keeps the initial weights
                f"ema_decay must be < 1, got {self.ema_decay} (the sample stage would sample the untrained "
                "weights); leave it unset for no EMA"
            )
        if self.offload_params == "nvme" and self.ema_decay is not None:
            raise ValueError(
                "ema_decay with offload_params: nvme: the EMA reads each parameter partition every step, which "
                "then lives on disk; use offload_params: cpu or no EMA"
            )
        if self.offload_optimizer != "none" and self.zero_stage == 0:
            raise ValueError("offload_optimizer needs zero_stage >= 1")
        if self.batch_size % self.grad_accum:
            raise ValueError(f"batch_size ({self.batch_size}) must be divisible by grad_accum ({self.grad_accum})")


def check_betas(betas: list[float]) -> None:
    """AdamW's (beta1, beta2), as torch takes them: two values in [0, 1)."""
    if len(betas) != 2:
        raise ValueError(f"betas must have two values (beta1, beta2), got {betas}")
    if not all(0 <= b < 1 for b in betas):
        raise ValueError(f"betas must each be in [0, 1) (AdamW refuses 1), got {betas}")
