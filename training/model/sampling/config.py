"""`SampleConfig`: every knob of the progressive, autoregressive and VQ-Diffusion samplers (YAML section `sample`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

ORDERS = ("state", "confidence", "raster", "random", "halton", "learned")


def top_p_field(what: str = "tokens"):
    """Nucleus sampling's ``top_p`` (1 = off, the neutral default: left out of every hash while it holds it)."""
    return field(
        default=1.0,
        metadata={
            "min": 0.0,
            "max": 1.0,
            "neutral_default": True,
            "help": f"nucleus sampling: keep the fewest most probable {what} whose probability reaches p, after "
            "temperature and top-k; 1 = off",
        },
    )


def check_top_p(top_p: float) -> None:
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1] (1 = off), got {top_p}")


@dataclass
class SampleConfig:
    """Sampling options. Paper references: PDM Eq. 4 (progressive decoding), Improved VQ-Diffusion
    3.1/3.2 (guidance, purity prior), CogView2 4.1/4.3 (cluster sampling, text-attention upweighting),
    Emage 3.2/4 (schedules, Gumbel position noise, candidate reranking)."""

    sampler: Literal["progressive", "autoregressive", "vq_diffusion"] = field(
        default="progressive",
        metadata={
            "help": "the sampler of the trained model's kind: train.mode progressive/emage, autoregressive, "
            "vq_diffusion"
        },
    )
    diffusion_strategy: Literal["reverse", "fewer_tokens", "purity"] = field(
        default="purity",
        metadata={
            "help": "vq_diffusion sampler: the reverse chain over `steps` evenly spaced timesteps (Eq. 5), or "
            "Improved VQ-Diffusion's high-quality strategy, `steps` steps of L/steps tokens at random "
            "(Algorithm 1) or purity-sampled (Algorithm 2) positions"
        },
    )
    steps: int = field(default=16, metadata={"min": 1, "help": "T: progressive stages (PDM 3.1)"})
    schedule: Literal["uniform", "linear", "cosine"] = field(
        default="uniform", metadata={"help": "tokens per stage: uniform = L/T each (T must divide L)"}
    )
    order: Literal["state", "confidence", "raster", "random", "halton", "learned"] = field(
        default="state",
        metadata={
            "help": "who picks the positions to generate: the state head (Eq. 4), "
            "MaskGIT confidence, a fixed order of training.model.orders, or the "
            "position policy of a train.order=learned run (PDM 3.2, greedy "
            "top-k; gumbel_scale > 0 samples it)"
        },
    )
    temperature: float = field(default=1.0, metadata={"min": 0.0, "help": "token temperature; 0 = argmax"})
    top_k: int = field(default=0, metadata={"min": 0, "help": "keep the k best tokens (clusters); 0 = off"})
    top_p: float = top_p_field("tokens (clusters)")
    gumbel_scale: float = field(
        default=0.0,
        metadata={"min": 0.0, "help": "Gumbel noise added to position-selection scores (Emage 4); 0 = deterministic"},
    )
    guidance_scale: float = field(
        default=1.0,
        metadata={"min": 0.0, "help": "CFG s: logits = uncond + s*(cond-uncond); 1 = off, 0 = unconditional"},
    )
    revise: bool = field(default=True, metadata={"help": "let the state head revise written tokens (PDM 3.3)"})
    revise_threshold: float = field(
        default=0.5, metadata={"min": 0.0, "max": 1.0, "help": "revise a written position when p(revise) > this"}
    )
    repredict: bool = field(
        default=False,
        metadata={
            "help": "Emage Algorithm 3: at every step every written token takes the model's new prediction "
            "(the state head's revision is then not used)"
        },
    )
    max_revise: Optional[int] = field(
        default=None,
        metadata={"min": 0, "help": "cap on revisions per step (always <= tokens written the step before)"},
    )
    purity_prior: float = field(
        default=0.0, metadata={"min": 0.0, "help": "r of Improved VQ-Diffusion 3.2 / Eq. 11; 0 = off"}
    )
    cluster_sampling: bool = field(default=False, metadata={"help": "CogView2 4.1 cluster sampling"})
    n_clusters: int = field(default=500, metadata={"min": 1, "help": "k-means clusters of codebook vectors"})
    attn_bias_text: float = field(
        default=0.0,
        metadata={
            "allow_inf": True,  # -inf hides the text keys (only the null key is left: unconditional samples)
            "help": "c of CogView2 Eq. 7, added to attention scores towards text tokens (-inf: no text)",
        },
    )
    n_candidates: int = field(default=1, metadata={"min": 1, "help": "samples per prompt, best kept by a scorer"})
    seed: int = field(default=0, metadata={"min": 0, "help": "seed of the sampling generator"})
    rng: Literal["per_chunk", "per_prompt"] = field(
        default="per_chunk",
        metadata={
            "neutral_default": True,
            "help": "per_chunk: one generator per batch of batch_size prompts, seeded from (seed, batch); "
            "per_prompt: one per prompt, seeded from (seed, its place in the prompt list), so its image does "
            "not depend on batch_size either (draws one row at a time: B small draws per step)",
        },
    )
    batch_size: int = field(default=16, metadata={"min": 1, "help": "prompts per batch (generate())"})
    record_steps: bool = field(default=True, metadata={"help": "keep the token map after every step"})

    def __post_init__(self) -> None:
        if self.attn_bias_text == float("inf"):  # inf - inf in the softmax: NaN attention
            raise ValueError("attn_bias_text: +inf makes the attention NaN; a large finite c, or -inf to hide the text")
        if self.order not in ORDERS:
            raise ValueError(f"order must be one of {ORDERS}, got {self.order!r}")
        if self.order == "learned" and self.sampler != "progressive":
            raise ValueError(
                "order=learned picks the positions of the progressive sampler: set "
                "sampler: progressive (the autoregressive sampler writes in raster order)"
            )
        if self.repredict and self.sampler != "progressive":
            raise ValueError(
                "repredict re-predicts written tokens in the progressive sampler: set sampler: progressive"
            )
        check_top_p(self.top_p)
        if self.temperature < 0:
            raise ValueError("temperature must be >= 0 (0 = argmax)")
        if self.cluster_sampling and self.sampler == "vq_diffusion" and self.diffusion_strategy == "reverse":
            raise ValueError(  # the reverse chain samples every position from its posterior, not from clusters
                "cluster_sampling needs a token-writing strategy: set diffusion_strategy fewer_tokens or purity, "
                "or cluster_sampling: false (the reverse chain does not write tokens)"
            )
        if self.cluster_sampling and self.top_k > self.n_clusters:
            raise ValueError(
                f"with cluster_sampling, top_k ({self.top_k}) counts clusters and must be "
                f"<= n_clusters ({self.n_clusters})"
            )
        for name in ("steps", "n_candidates", "batch_size", "n_clusters"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
