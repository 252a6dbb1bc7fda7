"""Training tuples of PDM (sections 3.1-3.2, Eq. 4): one training instance cut at a stage.

A training instance (X, Y) with an order ``stage_of`` is cut at a random stage t (uniform in 0..T-1)
into the tuple (X, Y^t, Z^{t+1}, Y^{t+1}) of section 3.2 (stages are 0-based here):

  position with stage_of <  t : visible, input = true token,  state KEEP (0),     not scored
  position with stage_of == t : [mask],  input = mask_id,     state GENERATE (1), token scored
  position with stage_of >  t : [mask],  input = mask_id,     state KEEP (0),     not scored
  injected error (section 3.3): visible position whose input became another code,
                                         state REVISE (2),   token scored (target = true token)

Masked positions of later stages are labelled KEEP: z = 0 means "unchanged at this step"; they stay
[mask] now. This is what makes the state head choose *which* masked positions to write at a step
(p(z | Y^{<=t}, X) of Eq. 4), i.e. it learns the order; every position gets a state label.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from training.model.error_injection import FracSpec, inject_errors
from training.model.seeded_random import randint
from training.model.states import GENERATE, KEEP, REVISE


@dataclass
class Batch:
    inputs: Tensor  # Long[B, L]  model input Y^t (+ injected errors)
    token_targets: Tensor  # Long[B, L]  the true tokens Y (targets wherever token_loss_mask)
    token_loss_mask: Tensor  # Bool[B, L]  stage-t positions and injected errors
    state_targets: Tensor  # Long[B, L]  KEEP / GENERATE / REVISE (training.model.states), every position
    stage: Tensor  # Long[B]     the stage t of each sample
    visible: Tensor  # Bool[B, L]  stage_of < t (real tokens in the input, before injection)
    generate: Tensor  # Bool[B, L]  stage_of == t
    injected: Tensor  # Bool[B, L]  visible positions replaced by a wrong code


def make_tuples(
    tokens: Tensor,
    stage_of: Tensor,
    T: int,
    mask_id: int,
    codebook_size: int,
    p_error: float = 0.3,
    error_frac: FracSpec = (0.0, 0.2),
    cap_revise: bool = True,
    generator: Optional[torch.Generator] = None,
    stage: Optional[Tensor] = None,
) -> Batch:
    """Cut each sample at a stage t (random, or ``stage`` Long[B]) and inject errors (section 3.3).

    ``cap_revise`` keeps the paper's constraint (section 3.1) sum_i I[z_i^t = -1] <= sum_i I[z_i^{t-1} = 1]:
    at most as many revisions as positions written at the previous stage."""
    B, L = tokens.shape
    dev = tokens.device
    if stage_of.shape != tokens.shape:
        raise ValueError(f"stage_of {tuple(stage_of.shape)} must match tokens {tuple(tokens.shape)}")
    if stage is None:
        stage = randint(T, (B,), generator, dev)
    stage = stage.to(dev).long()
    t = stage[:, None]
    visible = stage_of < t
    generate = stage_of == t
    inputs = torch.where(visible, tokens, torch.full_like(tokens, mask_id))
    max_errors = (stage_of == t - 1).sum(dim=1) if cap_revise else None
    inputs, injected = inject_errors(inputs, visible, codebook_size, p_error, error_frac, max_errors, generator)
    state = torch.full_like(tokens, KEEP)
    state = state.masked_fill(generate, GENERATE).masked_fill(injected, REVISE)
    return Batch(
        inputs=inputs,
        token_targets=tokens,
        token_loss_mask=generate | injected,
        state_targets=state,
        stage=stage,
        visible=visible,
        generate=generate,
        injected=injected,
    )
