"""Trainer wiring of the learned order (PDM 3.2, Eq. 6-7): ``learned_order_hooks(cfg, model) -> TrainHooks``.

``training.trainer`` calls it when ``train.order == "learned"`` (and no ``TrainJob.hooks`` is named).

  * ``aux["order_learner"]``: the ``OrderLearner`` (policy + baseline buffers + a ``train_step`` buffer)
    lives in the engine's module, so it is checkpointed (and sharded under ZeRO) with the PDM. The
    ``model.safetensors`` export stays the PDM only; the policy's weights (not the baselines) are exported
    beside it as ``policy.safetensors`` (``exports``: gathered like the PDM, metadata ``kind:
    position_policy``, ``policy_config``, ``order_learner``, ``stages``, ``schedule``, ``step``) for
    ``sample.order: learned`` (``training.export_loader.load_exported_policy``).
  * ``order``: ``LearnedTupleOrder`` (``needs_text``): the PDM's stage maps come from
    ``generator_stage_of`` (random order during ``warmup_steps``, then policy rollouts on the batch's
    text for a ``learned_fraction`` share of the samples).
  * ``mode: joint``: the REINFORCE loss is an ``extra_losses`` term inside the engine's forward (the
    rollout runs the PDM without gradients, so it sends none into the PDM); the policy is a separate
    AdamW param group (lr / weight_decay of ``train.order_learner``; the LR schedule and grad clip are
    the engine's). Metrics are logged as ``policy/*``.
  * ``mode: alternate``: the policy is frozen for the engine (not in its optimizer) and updated by the
    ``policy_update`` hook with its own AdamW (its state travels in the rank checkpoint extras through
    ``TrainHooks.state``): after ``warmup_steps`` PDM steps, ``policy_steps`` policy updates follow every
    ``generator_steps`` PDM steps (the PDM is trained by the trainer at every step). Its rollouts draw
    from a generator seeded by the batch's sample seeds, the step and the update. Gradients are
    all-reduced over ranks so the replicated policy stays identical. Not available under ZeRO-3 (the
    policy's parameters are partitioned): use ``mode: joint`` there.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn as nn
from torch import Tensor

from training.model.order_learner import build_order_learner
from training.model.order_learner.reinforce import OrderLearner, generator_stage_of, make_optimizer
from training.model.order_learner.rewards import L2Reward, make_reward
from training.model.order_learner.rollout import PolicyBatch
from training.model.orders import Order
from training.model.seeded_random import batch_seed, generator_for, mix64

AUX_NAME = "order_learner"
_POLICY_STREAM = 0x2545F4914F6CDD1D  # the alternate mode's rollouts: their own stream of the batch's seeds


class LearnedTupleOrder(Order):
    """The PDM's training order: ``generator_stage_of`` at the learner's current step (``train_step``)."""

    needs_text = True

    def __init__(self, learner: OrderLearner, model: nn.Module):
        self.learner = learner
        self.__dict__["model"] = model

    @torch.no_grad()
    def __call__(
        self,
        batch_size: int,
        seq_len: int,
        T: int,
        *,
        text: Optional[Tensor] = None,
        text_mask: Optional[Tensor] = None,
        generator: Optional[torch.Generator] = None,
        **_: Any,
    ) -> Tensor:
        if text is None or text_mask is None:
            raise ValueError("the learned order needs text= and text_mask=")
        if T != self.learner.stages:
            raise ValueError(f"learned order: {T} stages requested, the policy rolls out {self.learner.stages}")
        dummy = torch.zeros(batch_size, seq_len, dtype=torch.long, device=text.device)
        b = PolicyBatch(dummy, text, text_mask)
        return generator_stage_of(self.learner, self.model, b, int(self.learner.train_step), generator=generator)


class _PolicyLoss:
    """``extra_losses`` term of joint mode: the REINFORCE loss of the policy on this micro-batch."""

    metric_prefix = "policy/"

    def __init__(self, learner: OrderLearner):
        self.learner = learner

    def __call__(self, ctx) -> tuple[Tensor, dict]:
        learner = ctx.aux[AUX_NAME]
        if int(learner.train_step) < learner.cfg.warmup_steps:
            # zero grads keep every parameter in use. Through the policy's forward on one sample of this
            # step's PDM output: ZeRO-3 gathers partitioned parameters only inside a module's forward (a
            # bare p.sum() sees an empty partition and DeepSpeed then rejects its empty gradient)
            out = ctx.output
            masked = torch.ones(1, out.hidden.shape[1], dtype=torch.bool, device=out.hidden.device)
            score = learner.policy(
                out.hidden[:1], masked, 0, learner.stages, out.token_logits[:1], out.state_logits[:1]
            )
            return score.sum() * 0.0, {}
        loss, metrics, _ = learner(ctx.model, ctx.batch, ctx.generator)
        return loss, {k: v for k, v in metrics.items() if v.numel() == 1}


class _PolicyUpdate:
    """``policy_update`` hook: advances ``train_step``; in alternate mode runs the policy's own updates."""

    def __init__(self, learner: OrderLearner, alternate: bool):
        self.learner, self.alternate = learner, alternate
        self.optimizer = make_optimizer(learner, learner.cfg) if alternate else None

    # TrainHooks.state: the own optimizer's state in the rank checkpoint
    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict() if self.optimizer is not None else None}

    def load_state_dict(self, state: dict) -> None:
        if self.optimizer is not None and state.get("optimizer") is not None:
            self.optimizer.load_state_dict(state["optimizer"])

    def __call__(self, step: int, model: nn.Module, batch: dict) -> dict:
        learner, c = self.learner, self.learner.cfg
        learner.train_step.fill_(step)  # 0-based index of the next step
        if not self.alternate:
            return {}
        if any(hasattr(p, "ds_id") for p in learner.parameters()):  # at the first step, not after the warm-up
            raise ValueError(
                "order_learner.mode=alternate cannot update a ZeRO-3 partitioned policy (its own "
                "optimizer would step parameters DeepSpeed keeps partitioned): use mode: joint, or "
                "train.zero_stage <= 2"
            )
        k = step - c.warmup_steps
        if k < 0 or k % c.generator_steps:
            return {}
        out: dict = {}
        base = mix64(batch_seed(batch["seeds"]) ^ _POLICY_STREAM) + step * c.policy_steps
        for i in range(c.policy_steps):  # rollouts seeded by (batch, step, update): not the global RNG
            out = self._update(model, batch, generator_for(base + i))
        return out

    def _update(self, model: nn.Module, batch: dict, generator: torch.Generator) -> dict:
        learner, c = self.learner, self.learner.cfg
        params = list(learner.parameters())
        learner.requires_grad_(True)
        try:
            learner.train()
            loss, metrics, _ = learner(model, batch, generator)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            _all_reduce_grads(params)
            norm = torch.nn.utils.clip_grad_norm_(
                [p for p in params if p.grad is not None], c.grad_clip if c.grad_clip > 0 else float("inf")
            )
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        finally:
            learner.requires_grad_(False)
        out = {f"policy/{k}": v for k, v in metrics.items() if v.numel() == 1}
        out["policy/grad_norm"] = norm.detach()
        return out


def _all_reduce_grads(params: list) -> None:
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    w = dist.get_world_size()
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        dist.all_reduce(p.grad)
        p.grad.div_(w)


def _reward(cfg: Any, tokenizer_dir: Optional[str]):
    """token_acc needs nothing; l2 / clip need the run's VQ tokenizer (its decoder) and, for clip, open_clip."""
    oc = cfg.train.order_learner
    if oc.reward == "token_acc":
        return make_reward("token_acc")
    folder = Path(tokenizer_dir) if tokenizer_dir else None
    if folder is None or not folder.is_dir():
        raise ValueError(
            f"train.order_learner.reward={oc.reward} decodes tokens with the VQ tokenizer, but the "
            f"job's tokenizer folder {folder} does not exist (run the tokenizer stage, or use "
            f"reward: token_acc)"
        )
    from tokenization.vqgan import load_tokenizer_dir

    vq = load_tokenizer_dir(folder).eval().requires_grad_(False)

    @torch.no_grad()
    def decode(tokens: Tensor) -> Tensor:
        vq.to(tokens.device)
        return vq.decode(tokens).float()

    if oc.reward == "l2":
        l2 = L2Reward(decode)

        def reward(tokens: Tensor, batch: PolicyBatch) -> Tensor:  # token shards carry no pixels:
            if batch.images is None:  # the reference is the true tokens' decode
                batch = PolicyBatch(batch.tokens, batch.text, batch.text_mask, decode(batch.tokens), batch.captions)
            return l2(tokens, batch)

        return reward
    try:
        import open_clip

        clip, _, _ = open_clip.create_model_and_transforms(oc.clip_model, pretrained=oc.clip_pretrained)
        tok = open_clip.get_tokenizer(oc.clip_model)
    except Exception as e:  # noqa: BLE001 - say what is missing
        raise ValueError(
            f"train.order_learner.reward=clip needs open_clip model {oc.clip_model!r} "
            f"(pretrained={oc.clip_pretrained!r}): {e}"
        ) from e
    clip.eval().requires_grad_(False)
    return make_reward("clip", decode, clip, tok)


def policy_export(learner: OrderLearner, cfg: Any):
    """The ``PartExport`` writing the learner's policy to ``policy.safetensors`` (``training.export_loader``)."""
    import json

    from core.config import to_dict
    from training.checkpoint import PartExport
    from training.export_loader import POLICY_KIND, POLICY_WEIGHTS

    t = cfg.train
    meta = {
        "kind": POLICY_KIND,
        "policy_config": json.dumps(learner.policy.spec()),
        "order_learner": json.dumps(to_dict(t.order_learner)),
        "stages": str(learner.stages),
        "schedule": t.stage_schedule,
        "train_order": "learned",
    }
    return PartExport(POLICY_WEIGHTS, f"aux.{AUX_NAME}.policy.", meta)


def learned_order_hooks(cfg: Any, model: nn.Module, tokenizer_dir: Optional[str] = None):
    """``TrainHooks`` training the learned order with the PDM (see the module docstring)."""
    from training.model.train_module import TrainHooks

    t, oc = cfg.train, cfg.train.order_learner
    if t.mode != "progressive":
        raise ValueError(f"train.order=learned needs train.mode=progressive, got {t.mode!r}")
    if oc.stages not in (None, t.stages):
        raise ValueError(
            f"train.order_learner.stages ({oc.stages}) must equal train.stages ({t.stages}): the "
            f"policy's stage maps become the PDM's tuples"
        )
    if oc.schedule != t.stage_schedule:
        raise ValueError(
            f"train.order_learner.schedule ({oc.schedule}) must equal train.stage_schedule ({t.stage_schedule})"
        )
    learner = build_order_learner(cfg.model, oc, stages=t.stages, reward_fn=_reward(cfg, tokenizer_dir))
    learner.register_buffer("train_step", torch.zeros((), dtype=torch.long))
    alternate = oc.mode == "alternate"
    if alternate:
        learner.requires_grad_(False)  # not in the engine's optimizer: its own AdamW
    else:
        learner.optim_group = {"lr": oc.lr, "weight_decay": oc.weight_decay}  # engine.param_groups
    update = _PolicyUpdate(learner, alternate)
    return TrainHooks(
        order=LearnedTupleOrder(learner, model),
        extra_losses=() if alternate else (_PolicyLoss(learner),),
        aux={AUX_NAME: learner},
        policy_update=update,
        state=update,
        exports=(policy_export(learner, cfg),),
    )


__all__ = ["learned_order_hooks", "policy_export", "LearnedTupleOrder", "AUX_NAME"]
