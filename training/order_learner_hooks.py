"""Trainer wiring of the learned order (PDM 3.2, Eq. 6-7): ``learned_order_hooks(cfg, model) -> TrainHooks``.

``training.trainer`` calls it when ``train.order == "learned"`` (and no ``TrainJob.hooks`` is named).

The ``OrderLearner`` (policy + baseline buffers + a ``train_step`` buffer) lives OUTSIDE the PDM's engine,
replicated on every rank: its own AdamW (lr / weight_decay of ``train.order_learner``), its own grad clip
(``train.order_learner.grad_clip``; the PDM's ``train.grad_clip`` never sees the policy's gradients),
gradients averaged over ranks by an all-reduce, so the copies stay identical under any ZeRO stage.

  * ``order``: ``LearnedTupleOrder`` (``needs_text``, ``needs_batch``): the PDM's stage maps come from
    ``generator_stage_of`` (random order during ``warmup_steps``, then policy rollouts on the batch for
    a ``learned_fraction`` share of the samples). In ``mode: joint`` that rollout is the REINFORCE
    rollout itself (sampled, with the policy's graph): its loss waits for the update below, so a step
    costs one rollout (two with the self-critical baseline, whose greedy one cuts the tuples when
    ``tuple_order: greedy``), not two or three.
  * ``policy_update``: after the PDM's optimizer step, ``phase(step)`` policy updates: joint, one on the
    step's pending rollouts; alternate, ``policy_steps`` on fresh rollouts after every ``generator_steps``
    steps, their rollouts drawn from a generator seeded by the batch's sample seeds, the step and the
    update (not the global RNG). Metrics are logged as ``policy/*``.
  * ``state``: the learner's weights and buffers and its optimizer, in every rank's checkpoint extras.
  * ``exports``: the policy's weights (not the baselines) beside the PDM as ``policy.safetensors``
    (metadata ``kind: position_policy``, ``policy_config``, ``order_learner``, ``stages``, ``schedule``,
    ``step``) for ``sample.order: learned`` (``training.export_loader.load_exported_policy``);
    ``model.safetensors`` stays the PDM only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn as nn
from torch import Tensor

from training.model.order_learner import build_order_learner
from training.model.order_learner.reinforce import (
    OrderLearner,
    apply_policy_loss,
    generator_stage_of,
    make_optimizer,
    phase,
)
from training.model.order_learner.rewards import L2Reward, make_reward
from training.model.order_learner.rollout import PolicyBatch
from training.model.orders import Order
from training.model.seeded_random import batch_seed, generator_for, mix64

_POLICY_STREAM = 0x2545F4914F6CDD1D  # the alternate mode's rollouts: their own stream of the batch's seeds


class LearnerRuntime:
    """The learner, its optimizer and the joint mode's pending REINFORCE losses, shared by the hooks."""

    def __init__(self, learner: OrderLearner):
        self.learner = learner
        self.optimizer = make_optimizer(learner, learner.cfg)
        self.pending: list[tuple[Tensor, dict]] = []

    def follow(self, device: torch.device) -> None:
        """Move the learner (and its optimizer state) to the device the PDM's batches are on."""
        if self.learner.baseline.device == device:
            return
        self.learner.to(device)
        for state in self.optimizer.state.values():
            for k, v in state.items():
                if torch.is_tensor(v) and k != "step":
                    state[k] = v.to(device)

    # TrainHooks.state: in every rank's checkpoint extras
    def state_dict(self) -> dict:
        return {"learner": self.learner.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.learner.load_state_dict(state["learner"])
        self.optimizer.load_state_dict(state["optimizer"])


class LearnedTupleOrder(Order):
    """The PDM's training order: ``generator_stage_of`` at the learner's current step (``train_step``)."""

    needs_text = True
    needs_batch = True

    def __init__(self, runtime: LearnerRuntime, model: nn.Module):
        self.runtime = runtime
        self.__dict__["model"] = model

    @property
    def learner(self) -> OrderLearner:
        return self.runtime.learner

    def __call__(
        self,
        batch_size: int,
        seq_len: int,
        T: int,
        *,
        text: Optional[Tensor] = None,
        text_mask: Optional[Tensor] = None,
        batch: Optional[dict] = None,
        generator: Optional[torch.Generator] = None,
        **_: Any,
    ) -> Tensor:
        if text is None or text_mask is None:
            raise ValueError("the learned order needs text= and text_mask=")
        learner = self.learner
        if T != learner.stages:
            raise ValueError(f"learned order: {T} stages requested, the policy rolls out {learner.stages}")
        self.runtime.follow(text.device)
        batch = batch or {}
        tokens = batch.get("tokens")
        if tokens is None:
            tokens = torch.zeros(batch_size, seq_len, dtype=torch.long, device=text.device)
        b = PolicyBatch(tokens, text, text_mask, None, batch.get("captions"))
        step = int(learner.train_step)
        ro = None
        if learner.cfg.mode == "joint" and step >= learner.cfg.warmup_steps and torch.is_grad_enabled():
            loss, metrics, ro = learner(self.model, b, generator)  # the policy update's rollout
            self.runtime.pending.append((loss, metrics))
        with torch.no_grad():
            return generator_stage_of(learner, self.model, b, step, rollout_result=ro, generator=generator)


class _PolicyUpdate:
    """``policy_update`` hook: advances ``train_step``; runs the policy updates ``phase`` asks for."""

    def __init__(self, runtime: LearnerRuntime):
        self.runtime = runtime

    def __call__(self, step: int, model: nn.Module, batch: dict) -> dict:
        rt = self.runtime
        learner = rt.learner
        rt.follow(batch["tokens"].device)
        learner.train_step.fill_(step)  # trainer steps done = the 0-based index of the next one
        updates, _ = phase(step, learner.cfg)
        pending, rt.pending = rt.pending, []
        out: dict = {}
        if learner.cfg.mode == "joint":
            if updates and pending:  # one update on this step's rollouts (one per micro-batch)
                loss = sum(p[0] for p in pending) / len(pending)
                metrics = {k: torch.stack([p[1][k] for p in pending]).mean(0) for k in pending[0][1]}
                out = self._apply(loss, metrics)
            return out
        base = mix64(batch_seed(batch["seeds"]) ^ _POLICY_STREAM) + step * learner.cfg.policy_steps
        for i in range(updates):  # rollouts seeded by (batch, step, update): not the global RNG
            loss, metrics, _ = learner(model, batch, generator_for(base + i))
            out = self._apply(loss, metrics)
        return out

    def _apply(self, loss: Tensor, metrics: dict) -> dict:
        norm = apply_policy_loss(self.runtime.learner, loss, self.runtime.optimizer, _all_reduce_grads)
        out = {f"policy/{k}": v for k, v in metrics.items() if v.numel() == 1}
        out["policy/grad_norm"] = norm
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
    return PartExport(POLICY_WEIGHTS, metadata=meta, state=learner.policy.state_dict)


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
    runtime = LearnerRuntime(learner)
    return TrainHooks(
        order=LearnedTupleOrder(runtime, model),
        policy_update=_PolicyUpdate(runtime),
        state=runtime,
        exports=(policy_export(learner, cfg),),
    )


__all__ = ["learned_order_hooks", "policy_export", "LearnedTupleOrder", "LearnerRuntime"]
