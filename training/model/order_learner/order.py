"""The ``learned`` generation order: a trained ``PositionPolicy`` + the PDM it reads.

Training (``make_tuples``): ``Learned.__call__`` returns stage_of [B, L] from a policy rollout on the
batch. Unlike the fixed orders it needs the batch's text (``needs_text = True``)::

    order = get_order("learned", policy=policy, model=pdm)
    stage_of = order(B, L, T, text=text, text_mask=text_mask, schedule="uniform", generator=g)

Inference: a fixed order gives the progressive sampler a stage map once, before the first step; a
policy needs the state at every step. ``Learned`` is a per-step order (``per_step = True``):
``progressive_sample(model, ..., order=Learned(policy, model))`` calls ``Learned.priority`` at each step
(the current tokens, the conditional hidden states, the guided token logits) and writes that step's
top-k (greedy; Gumbel-top-k samples of the policy with ``gumbel_scale > 0``). ``Learned.sample`` /
``learned_sample`` is that call; ``sample.order: learned`` in the sample stage loads the exported policy
(``training.export_loader.load_exported_policy``) and does the same.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from training.model.order_learner.rollout import eval_mode, rollout
from training.model.orders import Order, register_order
from training.model.sampling.config import SampleConfig
from training.model.sampling.logits import gumbel_like
from training.model.sampling.progressive import SampleResult, progressive_sample


@register_order("learned")
class Learned(Order):
    """Dynamic importance scoring (PDM 3.2, Eq. 6-7): positions chosen by a trained policy.

    greedy: top-k sets (default; evaluation), else Gumbel-top-k samples of the policy.
    token_mode / temperature / guidance_scale / revise / revise_threshold: the sampler settings of the
    rollouts that build stage_of (``rollout.rollout_config``)."""

    needs_text = True
    per_step = True  # progressive_sample asks ``priority`` at every step

    def __init__(
        self,
        policy=None,
        model=None,
        greedy: bool = True,
        token_mode: str = "argmax",
        temperature: float = 1.0,
        guidance_scale: float = 1.0,
        revise: bool = True,
        revise_threshold: float = 0.5,
    ):
        self.policy, self.model = policy, model
        self.greedy = greedy
        self.rollout_kwargs = dict(
            token_mode=token_mode,
            temperature=temperature,
            guidance_scale=guidance_scale,
            revise=revise,
            revise_threshold=revise_threshold,
        )

    def bind(self, policy, model) -> Learned:
        self.policy, self.model = policy, model
        return self

    def _check(self) -> None:
        if self.policy is None or self.model is None:
            raise ValueError(
                "the 'learned' order needs a trained policy and its PDM: "
                "get_order('learned', policy=..., model=...) or order.bind(policy, model)"
            )

    @torch.no_grad()
    def __call__(
        self,
        batch_size: int,
        seq_len: int,
        T: int,
        *,
        text: Optional[Tensor] = None,
        text_mask: Optional[Tensor] = None,
        quant_error=None,
        grid=None,
        schedule: str = "uniform",
        generator: Optional[torch.Generator] = None,
        device=None,
    ) -> Tensor:
        self._check()
        if text is None or text_mask is None:
            raise ValueError(
                "the 'learned' order rolls the policy out on the batch: pass text= and text_mask= "
                "(for sampling use Learned.sample)"
            )
        if text.shape[0] != batch_size or seq_len != self.model.seq_len:
            raise ValueError(
                f"text batch {text.shape[0]} / L={seq_len} do not match ({batch_size}, {self.model.seq_len})"
            )
        ro = rollout(
            self.policy,
            self.model,
            text,
            text_mask,
            T,
            schedule=schedule,
            greedy=self.greedy,
            generator=generator,
            **self.rollout_kwargs,
        )
        return ro.stage_of.to(device or text.device)

    def priority(
        self,
        tokens: Tensor,
        hidden: Tensor,
        token_logits: Tensor,
        state_logits: Tensor,
        t: int,
        T: int,
        gumbel_scale: float = 0.0,
        generator: Optional[torch.Generator] = None,
    ) -> Tensor:
        """Per-step hook: Float[B, L] priorities (higher first) for ``progressive_step``; gumbel_scale > 0
        samples the set from the policy (Gumbel-top-k) instead of taking its top-k."""
        self._check()
        with eval_mode(self.policy):
            score = self.policy(hidden, tokens == self.model.mask_id, t, T, token_logits, state_logits)
        return score + gumbel_scale * gumbel_like(score, generator) if gumbel_scale > 0 else score

    @torch.no_grad()
    def sample(
        self,
        text: Tensor,
        text_mask: Tensor,
        cfg: SampleConfig,
        generator: torch.Generator,
        scorer=None,
        captions=None,
        clusters=None,
    ) -> SampleResult:
        return learned_sample(
            self, text, text_mask, cfg, generator, scorer=scorer, captions=captions, clusters=clusters
        )


@torch.no_grad()
def learned_sample(
    order: Learned,
    text: Tensor,
    text_mask: Tensor,
    cfg: SampleConfig,
    generator: torch.Generator,
    scorer=None,
    captions=None,
    clusters=None,
) -> SampleResult:
    """Progressive sampling (PDM Eq. 4) with the positions to generate picked by the policy at each step:
    ``progressive_sample`` with ``order`` as its per-step hook (``Learned.priority``). Guidance, temperature,
    top-k, cluster sampling, revision and candidates behave as there; cfg.order is ignored, cfg.gumbel_scale
    samples position sets from the policy. The policy reads the conditional branch."""
    order._check()
    return progressive_sample(
        order.model, text, text_mask, cfg, generator, order=order, scorer=scorer, captions=captions, clusters=clusters
    )
