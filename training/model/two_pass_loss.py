"""Emage iterative non-autoregressive model #3 training (Emage section 3.4, Algorithm 2) on the PDM.

Algorithm 2, per step:
  3-5  r ~ U(0, 1]; mask k = floor(r |Y|) random positions of Y            -> Y_mask
  6    first pass: predict tokens for ALL positions given X, Y_mask         -> Y_pred
  7    r' ~ U(0, 1]; randomly mask floor(r' |Y|) positions of Y_pred        -> Y_obs
       (Y_obs holds [mask]s, correct tokens and the model's own wrong tokens)
  8-9  second pass on (X, Y_obs); loss over all positions against Y.

Y_pred is discrete (argmax, or a sample), so no gradient flows through the first pass; Algorithm 2
computes the loss once, on the second pass. ``first_pass_weight`` > 0 adds the first pass's masked-
token CE as well (an option, off by default). Choices made here: k and k' are at least 1;
``remask="low_confidence"`` masks the k' positions the first pass was least sure of (MaskGIT-style,
matching Algorithm 3's inference) instead of random ones; the same condition-dropout draw is used
for both passes; ``state_weight`` > 0 also trains the PDM state head on Y_obs (masked -> GENERATE,
wrong -> REVISE, correct -> KEEP). Emage has no state head, so this function leaves it off; the trainer
turns it on (``train.emage_state_weight``, 1.0 by default) so that the PDM sampler's state order and
revision have a trained head. Emage's own inference (Algorithm 3, every written token re-predicted at
every step) is ``sample.repredict``.
"""

from __future__ import annotations

from typing import Literal, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from training.model.error_injection import random_subset
from training.model.seeded_random import uniform
from training.model.states import GENERATE, KEEP, NUM_STATES, REVISE


def _mask_count(B: int, L: int, generator, device) -> Tensor:
    r = 1.0 - uniform((B,), generator, device)  # U(0, 1]
    return torch.floor(r * L).long().clamp(1, L)


def emage_loss(
    model,
    tokens: Tensor,
    text: Tensor,
    text_mask: Tensor,
    *,
    remask: Literal["random", "low_confidence"] = "random",
    sample_first: bool = False,
    temperature: float = 1.0,
    first_pass_weight: float = 0.0,
    state_weight: float = 0.0,
    keep_visible_truth: bool = False,
    drop_text: Optional[Tensor] = None,
    generator: Optional[torch.Generator] = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Two forward passes of ``model`` (a ``PDM``); returns (loss, detached metrics).

    sample_first: Y_pred sampled from softmax(logits / temperature) instead of argmax.
    keep_visible_truth: Y_pred keeps the true tokens where the first pass saw them (Algorithm 2 uses
    the model's predictions at every position)."""
    B, L = tokens.shape
    dev = tokens.device
    mask_id = model.mask_id
    if drop_text is None:
        drop_text = model.sample_drop(B, dev)
    everywhere = torch.ones_like(tokens, dtype=torch.bool)

    mask1 = random_subset(everywhere, _mask_count(B, L, generator, dev), generator)
    y_mask = tokens.masked_fill(mask1, mask_id)
    with torch.set_grad_enabled(torch.is_grad_enabled() and first_pass_weight > 0):
        out1 = model(y_mask, text, text_mask, drop_text=drop_text)
    with torch.no_grad():
        logits1 = out1.token_logits.detach().float()
        if sample_first:
            probs = torch.softmax(logits1 / max(temperature, 1e-6), dim=-1)
            gdev = generator.device if generator is not None else dev
            y_pred = torch.multinomial(probs.view(B * L, -1).to(gdev), 1, generator=generator).view(B, L).to(dev)
        else:
            y_pred = logits1.argmax(-1)
        if keep_visible_truth:
            y_pred = torch.where(mask1, y_pred, tokens)
        k2 = _mask_count(B, L, generator, dev)
        if remask == "random":
            mask2 = random_subset(everywhere, k2, generator)
        elif remask == "low_confidence":
            conf = torch.log_softmax(logits1, -1).gather(-1, y_pred[..., None])[..., 0]
            rank = conf.argsort(dim=1).argsort(dim=1)  # 0 = least confident
            mask2 = rank < k2[:, None]
        else:
            raise ValueError(f"remask must be 'random' or 'low_confidence', got {remask!r}")
        y_obs = y_pred.masked_fill(mask2, mask_id)
        wrong = ~mask2 & (y_obs != tokens)

    out2 = model(y_obs, text, text_mask, drop_text=drop_text)
    K = out2.token_logits.shape[-1]
    loss2 = F.cross_entropy(out2.token_logits.reshape(-1, K).float(), tokens.reshape(-1))  # all positions
    loss = loss2
    metrics: dict[str, Tensor] = {"token_loss": loss2.detach()}
    if first_pass_weight > 0:
        loss1 = F.cross_entropy(out1.token_logits[mask1].float(), tokens[mask1])
        loss = loss + first_pass_weight * loss1
        metrics["first_pass_loss"] = loss1.detach()
    if state_weight > 0:
        state = torch.full_like(tokens, KEEP).masked_fill(mask2, GENERATE).masked_fill(wrong, REVISE)
        state_loss = F.cross_entropy(out2.state_logits.reshape(-1, NUM_STATES).float(), state.reshape(-1))
        loss = loss + state_weight * state_loss
        metrics["state_loss"] = state_loss.detach()
    with torch.no_grad():
        pred2 = out2.token_logits.argmax(-1) == tokens
        zero = torch.zeros((), device=dev)
        metrics.update(
            {
                "loss": loss.detach(),
                "token_acc": pred2[mask2].float().mean(),  # second pass, masked positions
                "revise_acc": pred2[wrong].float().mean() if wrong.any() else zero,  # fixes of wrong inputs
                "first_pass_acc": (y_pred == tokens)[mask1].float().mean(),
                "wrong_input_frac": wrong.float().mean(),
                "mask1_frac": mask1.float().mean(),
                "mask2_frac": mask2.float().mean(),
            }
        )
    return loss, metrics
