"""The PDM loss (Eq. 4 as two cross-entropies) and the metrics logged with it."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from training.model.states import NUM_STATES, REVISE
from training.model.tuples import Batch


def pdm_loss(
    output, batch: Batch, state_weight: float = 1.0, label_smoothing: float = 0.0
) -> tuple[Tensor, dict[str, Tensor]]:
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
            "loss": loss.detach(),
            "token_loss": token_loss.detach(),
            "state_loss": state_loss.detach(),
            # counts, not boolean indexing: no host read per metric (0 where nothing is generated / injected)
            "token_acc": (correct & gen).sum() / gen.sum().clamp(min=1),
            "revise_acc": (correct & inj).sum() / inj.sum().clamp(min=1),
            "state_acc": (spred == batch.state_targets).float().mean(),
            "revise_precision": tp.float() / npred.clamp(min=1).float(),
            "revise_recall": tp.float() / ntrue.clamp(min=1).float(),
            "revise_tp": tp,
            "revise_pred": npred,
            "revise_true": ntrue,
            "revise_correct": (correct & inj).sum(),
            "revise_injected": inj.sum(),
        }
    return loss, metrics
