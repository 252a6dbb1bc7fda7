"""``OrderLearnerConfig``: the ``train.order_learner`` section (dynamic importance scoring, PDM 3.2)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal, Optional


@dataclass
class OrderLearnerConfig:
    """Position policy pi_theta(a_t | s_t) trained by REINFORCE (Eq. 6-7) and its schedule with the PDM."""

    REMOVED_KEYS: ClassVar[dict] = {  # core.config: (the value it had, what to set instead)
        "enabled": (False, "train.order: learned trains the position policy (enabled did nothing)")
    }
    # policy network
    hidden: int = field(default=128, metadata={"min": 1, "help": "width of the policy MLP"})
    position_bias: bool = field(default=True, metadata={"help": "a learned score per position (L numbers)"})
    confidence_features: bool = field(
        default=True, metadata={"help": "feed the generator's token confidence/entropy and p(generate) to the policy"}
    )
    # rollouts
    stages: Optional[int] = field(default=None, metadata={"min": 1, "help": "T of the rollouts; None = train.stages"})
    schedule: Literal["uniform", "linear", "cosine"] = field(
        default="uniform", metadata={"help": "positions per stage (training.model.orders.stage_sizes)"}
    )
    token_mode: Literal["argmax", "sample"] = field(
        default="argmax", metadata={"help": "how the generator fills the picked positions during rollouts"}
    )
    temperature: float = field(default=1.0, metadata={"min": 0.0, "help": "token temperature when token_mode=sample"})
    rollout_batch: Optional[int] = field(
        default=None, metadata={"min": 1, "help": "use only the first N samples of a batch for rollouts (None = all)"}
    )
    # a rollout is the progressive sampler with the policy choosing the positions: these must be the
    # sample section's values when sample.order is learned (checked when the experiment loads)
    guidance_scale: float = field(
        default=1.0,
        metadata={"min": 0.0, "help": "classifier-free guidance of the rollouts' token logits (sample.guidance_scale)"},
    )
    revise: bool = field(default=True, metadata={"help": "the state head revises written tokens (sample.revise)"})
    revise_threshold: float = field(
        default=0.5,
        metadata={"min": 0.0, "max": 1.0, "help": "p(revise) above which it does (sample.revise_threshold)"},
    )
    # reward
    reward: Literal["l2", "clip", "token_acc"] = field(
        default="token_acc",
        metadata={
            "help": "l2: -MSE(VQ-decode(Y), image); clip: open_clip image-text cosine; token_acc: vs the true tokens"
        },
    )
    reward_mode: Literal["terminal", "per_step"] = field(
        default="terminal",
        metadata={
            "help": "terminal: r at the last step; per_step: r_t = R(Yhat^{t+1}) - R(Yhat^t) of the full predictions"
        },
    )
    discount: float = field(default=1.0, metadata={"min": 0.0, "max": 1.0, "help": "gamma of the returns"})
    clip_model: str = field(default="ViT-B-32", metadata={"help": "open_clip architecture (reward=clip)"})
    clip_pretrained: Optional[str] = field(
        default=None, metadata={"path": True, "help": "open_clip weights tag or file"}
    )
    # estimator (Eq. 6)
    baseline: Literal["moving_average", "self_critical", "none"] = "moving_average"
    baseline_momentum: float = field(default=0.9, metadata={"min": 0.0, "max": 1.0, "help": "EMA of the returns"})
    normalize_advantage: bool = field(default=False, metadata={"help": "divide advantages by their batch std"})
    entropy_coef: float = field(default=0.01, metadata={"min": 0.0, "help": "entropy bonus weight"})
    lr: float = field(default=1e-3, metadata={"min": 0.0, "help": "learning rate of the policy's own AdamW"})
    weight_decay: float = field(default=0.0, metadata={"min": 0.0})
    grad_clip: float = field(
        default=1.0,
        metadata={"min": 0.0, "help": "the policy's own grad-norm clip (never joint with the PDM's); 0 = off"},
    )
    # schedule with the generator (the PDM trains at every step in both modes)
    mode: Literal["alternate", "joint"] = field(
        default="alternate",
        metadata={
            "help": "joint: after every PDM step past the warm-up, one policy update on the rollout that cut that "
            "step's tuples (no extra rollout); alternate: after every generator_steps PDM steps (counted from "
            "the end of the warm-up), policy_steps policy updates, each on a fresh rollout of the step's last "
            "micro-batch"
        },
    )
    policy_steps: int = field(default=1, metadata={"min": 1, "help": "alternate: policy updates per turn"})
    generator_steps: int = field(default=1, metadata={"min": 1, "help": "alternate: PDM steps between turns"})
    warmup_steps: int = field(
        default=0, metadata={"min": 0, "help": "PDM-only steps on random-order tuples before the policy starts"}
    )
    tuple_order: Literal["sampled", "greedy"] = field(
        default="sampled", metadata={"help": "stage_of for the PDM's tuples: a sampled or the greedy policy rollout"}
    )
    learned_fraction: float = field(
        default=1.0,
        metadata={
            "min": 0.0,
            "max": 1.0,
            "help": "share of each batch's PDM samples cut with the learned order: the first ones, which the "
            "policy update's rollouts (the first rollout_batch) cut without another rollout; rest: random order",
        },
    )

    def __post_init__(self) -> None:
        if self.token_mode == "sample" and self.temperature <= 0:
            raise ValueError("token_mode=sample needs temperature > 0 (use token_mode=argmax for greedy tokens)")
        if self.reward == "clip" and not self.clip_model:
            raise ValueError("reward=clip needs clip_model")
