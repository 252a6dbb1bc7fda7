"""The ``learned`` generation order: a trained ``PositionPolicy`` + the PDM it reads.

Training (``make_tuples``): ``Learned.__call__`` returns stage_of [B, L] from a policy rollout on the
batch. Unlike the fixed orders it needs the batch's text (``needs_text = True``)::

    order = get_order("learned", policy=policy, model=pdm)
    stage_of = order(B, L, T, text=text, text_mask=text_mask, schedule="uniform", generator=g)

Inference: the progressive sampler takes a fixed stage map or priorities once, before the first step;
a policy needs the state at every step. ``Learned.sample`` (``learned_sample``) is the adapter: the
sampler's own per-step update (``progressive_step``: token sampling, temperature, revision) with the
policy's scores as that step's priority tensor; ``Learned.priority`` is the per-step hook a sampler can
call instead (see the report to the lead).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from training.orders import Order, register_order
from training.sampling.config import SampleConfig
from training.sampling.logits import cfg_mix, gumbel_like
from training.sampling.progressive import SampleResult, plan_steps, progressive_step, rerank

from .rollout import eval_mode, rollout


@register_order("learned")
class Learned(Order):
    """Dynamic importance scoring (PDM 3.2, Eq. 6-7): positions chosen by a trained policy.

    greedy: top-k sets (default; evaluation), else Gumbel-top-k samples of the policy.
    token_mode / temperature: how the PDM fills positions while rolling out to build stage_of."""

    needs_text = True

    def __init__(self, policy=None, model=None, greedy: bool = True, token_mode: str = "argmax",
                 temperature: float = 1.0):
        self.policy, self.model = policy, model
        self.greedy, self.token_mode, self.temperature = greedy, token_mode, temperature

    def bind(self, policy, model) -> "Learned":
        self.policy, self.model = policy, model
        return self

    def _check(self) -> None:
        if self.policy is None or self.model is None:
            raise ValueError("the 'learned' order needs a trained policy and its PDM: "
                             "get_order('learned', policy=..., model=...) or order.bind(policy, model)")

    @torch.no_grad()
    def __call__(self, batch_size: int, seq_len: int, T: int, *, text: Optional[Tensor] = None,
                 text_mask: Optional[Tensor] = None, quant_error=None, grid=None, schedule: str = "uniform",
                 generator: Optional[torch.Generator] = None, device=None) -> Tensor:
        self._check()
        if text is None or text_mask is None:
            raise ValueError("the 'learned' order rolls the policy out on the batch: pass text= and text_mask= "
                             "(for sampling use Learned.sample)")
        if text.shape[0] != batch_size or seq_len != self.model.seq_len:
            raise ValueError(f"text batch {text.shape[0]} / L={seq_len} do not match ({batch_size}, "
                             f"{self.model.seq_len})")
        ro = rollout(self.policy, self.model, text, text_mask, T, schedule=schedule, greedy=self.greedy,
                     token_mode=self.token_mode, temperature=self.temperature, generator=generator)
        return ro.stage_of.to(device or text.device)

    def priority(self, tokens: Tensor, hidden: Tensor, token_logits: Tensor, state_logits: Tensor, t: int, T: int,
                 gumbel_scale: float = 0.0, generator: Optional[torch.Generator] = None) -> Tensor:
        """Per-step hook: Float[B, L] priorities (higher first) for ``progressive_step``; gumbel_scale > 0
        samples the set from the policy (Gumbel-top-k) instead of taking its top-k."""
        self._check()
        score = self.policy(hidden, tokens == self.model.mask_id, t, T, token_logits, state_logits)
        return score + gumbel_scale * gumbel_like(score, generator) if gumbel_scale > 0 else score

    @torch.no_grad()
    def sample(self, text: Tensor, text_mask: Tensor, cfg: SampleConfig, generator: torch.Generator,
               scorer=None, captions=None) -> SampleResult:
        return learned_sample(self, text, text_mask, cfg, generator, scorer=scorer, captions=captions)


@torch.no_grad()
def learned_sample(order: Learned, text: Tensor, text_mask: Tensor, cfg: SampleConfig, generator: torch.Generator,
                   scorer=None, captions=None) -> SampleResult:
    """Progressive sampling (PDM Eq. 4) with the positions to generate picked by the policy at each step.
    Guidance, temperature, top-k and revision behave as in ``progressive_sample``; cfg.order is ignored,
    cfg.gumbel_scale samples position sets from the policy. The policy reads the conditional branch."""
    order._check()
    model = order.model
    if cfg.cluster_sampling:
        raise NotImplementedError("cluster sampling with the learned order: use progressive_sample's hook")
    n = cfg.n_candidates
    if n > 1:
        if scorer is None:
            raise ValueError("n_candidates > 1 needs a scorer(tokens, captions) -> scores")
        text, text_mask = text.repeat_interleave(n, 0), text_mask.repeat_interleave(n, 0)
    B, L, mask_id = text.shape[0], model.seq_len, model.mask_id
    sizes = plan_steps(L, cfg.steps, cfg.schedule)
    guided = cfg.guidance_scale != 1.0
    txt, tmask = (torch.cat([text, text]), torch.cat([text_mask, text_mask])) if guided else (text, text_mask)
    drop = torch.arange(txt.shape[0], device=text.device) >= B
    tokens = torch.full((B, L), mask_id, dtype=torch.long, device=text.device)
    steps, states, prev = [], [], 0
    with eval_mode(model), eval_mode(order.policy):
        for t, n_t in enumerate(sizes):
            out = model(torch.cat([tokens, tokens]) if guided else tokens, txt, tmask, drop_text=drop,
                        attn_bias_text=cfg.attn_bias_text)
            tl, sl, h = out.token_logits[:B], out.state_logits[:B], out.hidden[:B]
            if guided:
                tl = cfg_mix(tl, out.token_logits[B:], cfg.guidance_scale)
            prio = order.priority(tokens, h, tl, sl, t, cfg.steps, cfg.gumbel_scale, generator)
            n_rev = min(prev, cfg.max_revise if cfg.max_revise is not None else prev) if cfg.revise else 0
            tokens, state = progressive_step(tokens, tl, sl, n_t, n_rev, cfg, generator, mask_id, prio)
            if cfg.record_steps:
                steps.append(tokens)
                states.append(state)
            prev = n_t
    res = SampleResult(tokens, steps, states)
    return res if n == 1 else rerank(res, n, scorer, captions)
