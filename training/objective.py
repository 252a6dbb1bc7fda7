"""PDM training tuples, error injection and loss (sections 3.1-3.3).

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
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from .states import GENERATE, KEEP, NUM_STATES, REVISE

FracSpec = Union[float, tuple[float, float]]


@dataclass
class Batch:
    inputs: Tensor           # Long[B, L]  model input Y^t (+ injected errors)
    token_targets: Tensor    # Long[B, L]  the true tokens Y (targets wherever token_loss_mask)
    token_loss_mask: Tensor  # Bool[B, L]  stage-t positions and injected errors
    state_targets: Tensor    # Long[B, L]  KEEP / GENERATE / REVISE (training.states), every position
    stage: Tensor            # Long[B]     the stage t of each sample
    visible: Tensor          # Bool[B, L]  stage_of < t (real tokens in the input, before injection)
    generate: Tensor         # Bool[B, L]  stage_of == t
    injected: Tensor         # Bool[B, L]  visible positions replaced by a wrong code


def _rand(shape, generator, device) -> Tensor:
    gdev = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, device=gdev).to(device)


def _randint(high: int, shape, generator, device, low: int = 0) -> Tensor:
    gdev = generator.device if generator is not None else device
    return torch.randint(low, high, shape, generator=generator, device=gdev).to(device)


def random_subset(candidates: Tensor, k: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
    """Bool[B, L]: ``k[b]`` positions drawn uniformly among ``candidates[b]`` (all of them if fewer)."""
    scores = _rand(candidates.shape, generator, candidates.device).masked_fill(~candidates, 2.0)
    rank = scores.argsort(dim=1).argsort(dim=1)  # rank of each position, candidates first
    return (rank < k[:, None]) & candidates


def _frac_range(error_frac: FracSpec) -> tuple[float, float]:
    lo, hi = (error_frac, error_frac) if isinstance(error_frac, (int, float)) else error_frac
    if not 0.0 <= lo <= hi <= 1.0:
        raise ValueError(f"error_frac must be a fraction or a (lo, hi) range within [0, 1], got {error_frac}")
    return float(lo), float(hi)


def inject_errors(inputs: Tensor, candidates: Tensor, codebook_size: int, p_error: float = 0.3,
                  error_frac: FracSpec = (0.0, 0.2), max_errors: Optional[Tensor] = None,
                  generator: Optional[torch.Generator] = None) -> tuple[Tensor, Tensor]:
    """Section 3.3 pseudo errors. Each instance is chosen with probability ``p_error`` (Bernoulli);
    in a chosen instance ceil(f * n) of its n candidate (visible) positions, f ~ U[lo, hi] and at least
    one, at most ``max_errors[b]``, get a different code (never [mask], never the same code).
    Returns (new inputs, injected Bool[B, L]). Instances without candidates are left unchanged."""
    if not 0.0 <= p_error <= 1.0:
        raise ValueError(f"p_error must be in [0, 1], got {p_error}")
    lo, hi = _frac_range(error_frac)
    B, L = inputs.shape
    dev = inputs.device
    chosen = _rand((B,), generator, dev) < p_error                 # ~ Bernoulli(p_error)
    n = candidates.sum(dim=1)
    frac = lo + (hi - lo) * _rand((B,), generator, dev)
    k = torch.ceil(frac * n).long().clamp(min=1)
    k = torch.minimum(k, n)
    if max_errors is not None:
        k = torch.minimum(k, max_errors.to(dev).long())
    k = torch.where(chosen, k, torch.zeros_like(k))
    injected = random_subset(candidates, k, generator)
    offset = _randint(codebook_size, (B, L), generator, dev, low=1)  # 1..K-1: never the same code
    wrong = (inputs.clamp(max=codebook_size - 1) + offset) % codebook_size
    return torch.where(injected, wrong, inputs), injected


def make_tuples(tokens: Tensor, stage_of: Tensor, T: int, mask_id: int, codebook_size: int,
                p_error: float = 0.3, error_frac: FracSpec = (0.0, 0.2), cap_revise: bool = True,
                generator: Optional[torch.Generator] = None, stage: Optional[Tensor] = None) -> Batch:
    """Cut each sample at a stage t (random, or ``stage`` Long[B]) and inject errors (section 3.3).

    ``cap_revise`` keeps the paper's constraint (section 3.1) sum_i I[z_i^t = -1] <= sum_i I[z_i^{t-1} = 1]:
    at most as many revisions as positions written at the previous stage."""
    B, L = tokens.shape
    dev = tokens.device
    if stage_of.shape != tokens.shape:
        raise ValueError(f"stage_of {tuple(stage_of.shape)} must match tokens {tuple(tokens.shape)}")
    if stage is None:
        stage = _randint(T, (B,), generator, dev)
    stage = stage.to(dev).long()
    t = stage[:, None]
    visible = stage_of < t
    generate = stage_of == t
    inputs = torch.where(visible, tokens, torch.full_like(tokens, mask_id))
    max_errors = (stage_of == t - 1).sum(dim=1) if cap_revise else None
    inputs, injected = inject_errors(inputs, visible, codebook_size, p_error, error_frac, max_errors, generator)
    state = torch.full_like(tokens, KEEP)
    state = state.masked_fill(generate, GENERATE).masked_fill(injected, REVISE)
    return Batch(inputs=inputs, token_targets=tokens, token_loss_mask=generate | injected,
                 state_targets=state, stage=stage, visible=visible, generate=generate, injected=injected)


def pdm_loss(output, batch: Batch, state_weight: float = 1.0,
             label_smoothing: float = 0.0) -> tuple[Tensor, dict[str, Tensor]]:
    """Eq. 4 as two cross-entropies: token CE over the scored positions (stage t + injected errors),
    mean per scored position; plus ``state_weight`` x state CE over every position.

    Metrics (detached 0-d tensors): loss, token_loss, state_loss, token_acc (on the stage-t [mask]
    positions), revise_acc (token accuracy on injected positions), state_acc, revise_precision /
    revise_recall of the state head's argmax (0 when undefined) and the counts behind them
    (revise_tp, revise_pred, revise_true) for exact aggregation."""
    logits, state_logits = output.token_logits, output.state_logits
    m = batch.token_loss_mask
    if m.any():
        token_loss = F.cross_entropy(logits[m].float(), batch.token_targets[m], label_smoothing=label_smoothing)
    else:
        token_loss = logits.sum() * 0.0
    state_loss = F.cross_entropy(state_logits.reshape(-1, NUM_STATES).float(), batch.state_targets.reshape(-1))
    loss = token_loss + state_weight * state_loss
    with torch.no_grad():
        pred = logits.argmax(-1)
        correct = pred == batch.token_targets
        gen = batch.generate
        inj = batch.injected
        spred = state_logits.argmax(-1)
        p_rev, t_rev = spred == REVISE, batch.state_targets == REVISE
        tp, npred, ntrue = (p_rev & t_rev).sum(), p_rev.sum(), t_rev.sum()
        metrics = {
            "loss": loss.detach(), "token_loss": token_loss.detach(), "state_loss": state_loss.detach(),
            "token_acc": correct[gen].float().mean() if gen.any() else correct.new_zeros((), dtype=torch.float),
            "revise_acc": correct[inj].float().mean() if inj.any() else correct.new_zeros((), dtype=torch.float),
            "state_acc": (spred == batch.state_targets).float().mean(),
            "revise_precision": tp.float() / npred.clamp(min=1).float(),
            "revise_recall": tp.float() / ntrue.clamp(min=1).float(),
            "revise_tp": tp, "revise_pred": npred, "revise_true": ntrue,
        }
    return loss, metrics
