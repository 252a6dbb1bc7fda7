"""Held-out token NLL: -log p(Y | X) / L of the eval split's token shards, in nats per token, under the trained
model's own factorisation, at fixed stage maps and seeds, so runs with different orders compare.

  progressive (PDM Eq. 4)  with the run's training order (``train.order``; random orders drawn with a fixed
                           seed, const-error from the shards' quantization error, ``learned``: the exported
                           policy, teacher-forced: at each step it reads the state of the TRUE tokens written
                           so far and picks greedily):  -sum_t sum_{i written at t} log p(y_i | Y^{<t}, X) / L,
                           T forwards per batch. The order is given, so the state head's terms are not counted.
  emage                    the same chain with a random order (its masks are uniformly random)
  autoregressive (Eq. 3)   teacher forcing: -sum_i log p(y_i | y_{<i}, X) / L

Lower is better; the numbers compare models on the same shards and tokenizer only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

SEED = 0  # the random orders' generator


def read_token_shards(folder: Path) -> list[dict]:
    """The samples of every token shard under ``folder`` (``tokenization.shards.read_token_shard``), in file
    order, as the trainer's loader gives them to ``training.data.collate``."""
    import numpy as np

    from tokenization.shards import read_token_shard
    from training.data import list_shards

    out = [
        {
            "key": s["key"],
            "tokens": s["tokens"].astype(np.int64),
            "qerr": s["qerr"].astype(np.float32),
            "text_ids": s["text_ids"].astype(np.int64),
            "seed": 0,
        }
        for shard in list_shards(folder)
        for s in read_token_shard(shard)
    ]
    if not out:
        raise FileNotFoundError(f"no token samples under {folder} (the tokenize stage's eval split)")
    return out


def _chain_nll(model, tokens: Tensor, text: Tensor, mask: Tensor, stage_of_fn, T: int) -> Tensor:
    """Per-sample summed NLL of the progressive chain; ``stage_of_fn(t, out, written) -> Bool[B, L]`` says
    which positions are written at step t (given that step's model output)."""
    B, L = tokens.shape
    written = torch.zeros_like(tokens, dtype=torch.bool)
    nll = torch.zeros(B, device=tokens.device)
    for t in range(T):
        inputs = torch.where(written, tokens, torch.full_like(tokens, model.mask_id))
        out = model(inputs, text, mask, drop_text=torch.zeros(B, dtype=torch.bool, device=tokens.device))
        now = stage_of_fn(t, out, written)
        logp = F.log_softmax(out.token_logits.float(), -1).gather(-1, tokens[..., None])[..., 0]
        nll -= (logp * now).sum(1)
        written |= now
    return nll


@torch.no_grad()
def token_nll(
    model,
    kind: str,
    train_cfg: Any,
    tokens: Tensor,
    qerr: Tensor,
    text: Tensor,
    mask: Tensor,
    policy=None,
) -> Tensor:
    """Per-sample NLL in nats per token (module docstring). ``train_cfg``: the run's ``train`` section."""
    from training.model.orders import get_order, stage_sizes
    from training.model.train_module import StepSettings

    model.eval()
    B, L = tokens.shape
    if kind == "ar":
        logits = model(tokens, text, mask, drop_text=torch.zeros(B, dtype=torch.bool, device=tokens.device))
        return F.cross_entropy(logits.float().transpose(1, 2), tokens, reduction="none").mean(1)
    s = StepSettings.from_config(train_cfg)
    T = s.stages
    sizes = [int(n) for n in stage_sizes(L, T, s.stage_schedule)]
    if s.mode == "progressive" and s.order == "learned":
        from training.model.order_learner import greedy_topk

        def learned(t, out, written):
            pick = greedy_topk(
                policy(out.hidden, ~written, t, T, out.token_logits, out.state_logits), sizes[t], ~written
            )
            return torch.zeros_like(written).scatter(1, pick, True)

        return _chain_nll(model, tokens, text, mask, learned, T) / L
    name, kw = (s.order, s.order_kwargs) if s.mode == "progressive" else ("random", {})
    g = torch.Generator(device=tokens.device).manual_seed(SEED)
    stage_of = get_order(name, **kw)(
        B, L, T, quant_error=qerr, grid=model.grid, schedule=s.stage_schedule, generator=g, device=tokens.device
    )
    return _chain_nll(model, tokens, text, mask, lambda t, out, written: stage_of == t, T) / L


def eval_token_nll(
    model, kind: str, train_cfg: Any, samples: list[dict], text_encoder, device: str, policy=None, batch: int = 64
) -> dict:
    """{"token_nll": mean nats per token, "samples": n} over ``samples`` (``read_token_shards``)."""
    from training.data import collate

    per = []
    for i in range(0, len(samples), batch):
        b = collate(samples[i : i + batch])
        ids, m = b["text_ids"].to(device), b["text_mask"].to(device)
        text = text_encoder.encode(ids, m).to(device, torch.float32)  # on text_encoder.device until here
        per.append(token_nll(model, kind, train_cfg, b["tokens"].to(device), b["qerr"].to(device), text, m, policy))
    nll = torch.cat(per)
    return {
        "token_nll": float(nll.mean()),
        "token_nll_sd": float(nll.std()) if len(nll) > 1 else 0.0,
        "samples": len(nll),
    }
