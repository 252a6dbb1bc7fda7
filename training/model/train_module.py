"""The per-micro-batch loss shared by every engine (plain PyTorch, DeepSpeed, Ray workers).

    text  = encode_text(text_encoder, batch)                  # frozen, no grad, outside the engine
    loss, metrics = TrainModule(model, StepSettings.from_config(cfg.train))({**batch, "text": text})

``TrainModule.forward`` does tokens -> order -> tuples (``make_tuples``, error injection) -> model ->
``pdm_loss`` (mode ``progressive``), Emage's two-pass loss (``emage``), teacher forcing (``autoregressive``) or
tokens x_0 -> x_t ~ q(x_t | x_0) at a uniform timestep t -> p(x_0 | x_t) -> the VQ-Diffusion bound (``vq_diffusion``).

Randomness. A sample's stage t and condition-dropout draw are hashed from its ``seeds`` entry (the
loader derives it from (train.seed, epoch, key)), so they never depend on the batch split, the world
size or a resume. Order noise and injected errors: ``rng=per_sample`` draws them from a generator per
sample (a loop over the batch, skipped when p_error = 0 and the order is deterministic), ``per_batch``
from one generator seeded with the batch's seeds (Emage always: its passes are batched). Either way a
resumed run repeats the uninterrupted one. nn.Dropout uses torch's global RNG (checkpointed).

Hooks for the order learner (PDM 3.2, Eq. 6-7; ``training.model.order_learner``):
  * ``order=``: an ``training.model.orders.Order`` object used instead of ``get_order(settings.order)``
    (e.g. ``get_order("learned", policy=..., model=pdm)``); orders with ``needs_text`` get
    ``text=``/``text_mask=`` (with ``needs_batch`` also ``batch=``, the micro-batch) and are drawn once
    per batch.
  * ``extra_losses=``: callables ``f(ctx: StepContext) -> (loss_term, metrics)`` whose terms are added
    to the loss inside the engine's forward (their parameters must live in ``aux`` to be optimised);
    metrics are logged as ``extra{i}/name`` (or ``{fn.metric_prefix}name``).
  * ``aux=``: extra trainable modules (a policy net) registered under ``TrainModule.aux``: they join
    the optimizer and the DeepSpeed checkpoint, and are left out of the PDM export (an aux module with
    an ``optim_group`` dict, e.g. {"lr": ..., "weight_decay": ...}, gets its own optimizer param group).
  * ``PolicyUpdate``: a separate update with its own optimizer, called by the trainer after each
    optimizer step (``TrainHooks(policy_update=...)``; see ``training.trainer``).
All of them travel in ``TrainHooks`` (below); a DeepSpeed/Ray job names a factory building them
in every rank (``TrainJob.hooks = "module:factory"``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional, Protocol

import torch
import torch.nn as nn
from torch import Tensor

from training.model.orders import Order, get_order
from training.model.pdm_loss import pdm_loss
from training.model.seeded_random import batch_seed, generator_for, unit_uniform
from training.model.tuples import Batch, make_tuples


@dataclass
class StepSettings:
    """What one micro-batch computes (a view of ``TrainConfig``)."""

    mode: str = "progressive"
    order: str = "const_error"
    order_kwargs: dict = field(default_factory=dict)
    stages: int = 16
    stage_schedule: str = "uniform"
    p_error: float = 0.3
    error_frac: tuple = (0.0, 0.2)
    cap_revise: bool = True
    state_weight: float = 1.0
    label_smoothing: float = 0.0
    rng: str = "per_sample"
    emage_remask: str = "random"
    emage_first_pass_weight: float = 0.0
    emage_state_weight: float = 1.0
    diffusion_aux_weight: float = 5e-4
    diffusion_adaptive_aux: bool = True

    @classmethod
    def from_config(cls, t: Any) -> StepSettings:
        kw: dict = {}
        if t.order in ("const_error", "anti_progressive"):
            kw = {"mode": t.order_mode, "tau": t.order_tau}
        elif t.order == "halton":
            kw = {"randomize": t.order_randomize}
        return cls(
            mode=t.mode,
            order=t.order,
            order_kwargs=kw,
            stages=t.stages,
            stage_schedule=t.stage_schedule,
            p_error=t.p_error,
            error_frac=tuple(t.error_frac),
            cap_revise=t.cap_revise,
            state_weight=t.state_loss_weight,
            label_smoothing=t.label_smoothing,
            rng=t.rng,
            emage_remask=t.emage_remask,
            emage_first_pass_weight=t.emage_first_pass_weight,
            emage_state_weight=t.emage_state_weight,
            diffusion_aux_weight=t.diffusion_aux_weight,
            diffusion_adaptive_aux=t.diffusion_adaptive_aux,
        )


@dataclass
class StepContext:
    """What an extra loss sees: the wrapped model, the batch (with ``text``), the tuples and outputs."""

    model: nn.Module
    batch: dict
    tuples: Optional[Batch]
    output: Any
    aux: nn.ModuleDict
    generator: Optional[torch.Generator] = None


ExtraLoss = Callable[[StepContext], "tuple[Tensor, dict[str, Tensor]]"]


class PolicyUpdate(Protocol):
    """Order-learner hook run by the trainer after every optimizer step (its own optimizer).

    ``model`` is the unwrapped PDM (under ZeRO-3 every rank must call it: its forward gathers the
    partitioned weights), ``batch`` the last micro-batch with ``text``; returns metrics to log."""

    def __call__(self, step: int, model: nn.Module, batch: dict) -> dict[str, float]: ...


@dataclass
class TrainHooks:
    """The plug-ins a trainer passes to ``TrainModule`` and calls around the step (the order learner's
    ``training.order_learner_hooks.learned_order_hooks`` builds them)."""

    order: Any = None  # an Order used instead of get_order(settings.order)
    extra_losses: Sequence[ExtraLoss] = ()
    aux: dict = field(default_factory=dict)
    policy_update: Optional[PolicyUpdate] = None
    state: Any = None  # state_dict()/load_state_dict(): saved in every rank's checkpoint extras
    exports: Sequence[Any] = ()  # aux parts written beside the model export (e.g. the learned order's policy)


_STAGE, _DROP, _NOISE = 0x9E3779B97F4A7C15, 0xD1B54A32D192ED03, 0x5851F42D4C957F2D


def order_is_deterministic(order: Order) -> bool:
    """True for orders whose stage map ignores the generator (raster, top-k error orders, plain Halton)."""
    from training.model.orders import ConstError, Halton, Raster

    if isinstance(order, ConstError):
        return order.mode == "topk"
    if isinstance(order, Halton):
        return not order.randomize
    return isinstance(order, Raster)


def codebook_usage(pred: Tensor, where: Tensor, codebook_size: int) -> Tensor:
    """Fraction of the K codes that the model predicts (argmax) at least once among ``where`` (0 where nothing
    is). Computed on the device without reading anything back (no ``unique``, no boolean indexing)."""
    hit = torch.zeros(codebook_size + 1, dtype=torch.bool, device=pred.device)  # the last one: outside ``where``
    hit[torch.where(where, pred, codebook_size).reshape(-1)] = True
    return hit[:codebook_size].sum().float() / codebook_size


class TrainModule(nn.Module):
    """The trainable part handed to the engine: the model (+ ``aux`` modules); forward = one micro-batch."""

    def __init__(
        self,
        model: nn.Module,
        settings: StepSettings,
        order: Optional[Order] = None,
        extra_losses: Sequence[ExtraLoss] = (),
        aux: Optional[dict[str, nn.Module]] = None,
    ):
        super().__init__()
        self.model = model
        self.settings = settings
        self.aux = nn.ModuleDict(aux or {})
        self.extra_losses = list(extra_losses)
        self._order = order
        if settings.mode not in ("progressive", "emage", "autoregressive", "vq_diffusion"):
            raise ValueError(f"unknown training mode {settings.mode!r}")
        if settings.rng not in ("per_sample", "per_batch"):
            raise ValueError(f"rng must be per_sample or per_batch, got {settings.rng!r}")

    @property
    def order(self) -> Order:
        if self._order is None:
            self._order = get_order(self.settings.order, **self.settings.order_kwargs)
        return self._order

    def forward(self, batch: dict) -> tuple[Tensor, dict[str, Tensor]]:
        mode = self.settings.mode
        if mode == "progressive":
            loss, metrics, tuples, out, g = self._progressive(batch)
        elif mode == "emage":
            loss, metrics, tuples, out, g = self._emage(batch)
        elif mode == "vq_diffusion":
            loss, metrics, tuples, out, g = self._vq_diffusion(batch)
        else:
            loss, metrics, tuples, out, g = self._autoregressive(batch)
        for i, fn in enumerate(self.extra_losses):
            term, extra = fn(StepContext(self.model, batch, tuples, out, self.aux, g))
            loss = loss + term
            prefix = getattr(fn, "metric_prefix", f"extra{i}/")
            metrics.update({f"{prefix}{k}": v for k, v in extra.items()})
        metrics["loss"] = loss.detach()
        return loss, metrics

    # ---- randomness shared by the modes ----
    def _drop_text(self, seeds: Tensor) -> Optional[Tensor]:
        p = getattr(self.model.cfg, "cond_dropout", 0.0)
        if not self.training or p <= 0:
            return None
        return unit_uniform(seeds, _DROP) < p

    def _gens(self, seeds: Tensor):
        if self.settings.rng == "per_sample":
            return [generator_for(s ^ _NOISE) for s in seeds.tolist()], None
        return None, generator_for(batch_seed(seeds))

    # ---- modes ----
    def _progressive(self, batch: dict):
        s, m = self.settings, self.model
        tokens, qerr, seeds = batch["tokens"], batch["qerr"], batch["seeds"]
        B, L = tokens.shape
        order = self.order
        stage = (unit_uniform(seeds, _STAGE) * s.stages).long().clamp(max=s.stages - 1)
        common = dict(grid=m.grid, schedule=s.stage_schedule)
        tuple_kw = dict(
            T=s.stages,
            mask_id=m.mask_id,
            codebook_size=m.codebook_size,
            p_error=s.p_error,
            error_frac=tuple(s.error_frac),
            cap_revise=s.cap_revise,
        )
        needs_text = getattr(order, "needs_text", False)
        loop = s.rng == "per_sample" and not needs_text and (s.p_error > 0 or not order_is_deterministic(order))
        if loop:  # per-sample generators: order noise and injected errors
            parts = []
            for i, gi in enumerate(self._gens(seeds)[0]):
                so = order(1, L, s.stages, quant_error=qerr[i : i + 1], generator=gi, **common)
                parts.append(make_tuples(tokens[i : i + 1], so, generator=gi, stage=stage[i : i + 1], **tuple_kw))
            tuples = Batch(*(torch.cat([getattr(p, f) for p in parts]) for f in Batch.__dataclass_fields__))
            g = None
        else:
            g = generator_for(batch_seed(seeds))
            if needs_text:  # a learned order reads the batch's text (and, with needs_batch, the batch)
                extra = {"batch": batch} if getattr(order, "needs_batch", False) else {}
                stage_of = order(
                    B,
                    L,
                    s.stages,
                    quant_error=qerr,
                    text=batch["text"],
                    text_mask=batch["text_mask"],
                    generator=g,
                    **common,
                    **extra,
                )
            else:
                stage_of = order(B, L, s.stages, quant_error=qerr, generator=g, **common)
            tuples = make_tuples(tokens, stage_of, generator=g, stage=stage, **tuple_kw)
        out = m(tuples.inputs, batch["text"], batch["text_mask"], drop_text=self._drop_text(seeds))
        loss, metrics = pdm_loss(out, tuples, state_weight=s.state_weight, label_smoothing=s.label_smoothing)
        with torch.no_grad():
            metrics["codebook_usage"] = codebook_usage(out.token_logits.argmax(-1), tuples.generate, m.codebook_size)
        return loss, metrics, tuples, out, g

    def _emage(self, batch: dict):
        from training.model.two_pass_loss import emage_loss

        s = self.settings
        seeds = batch["seeds"]
        drop = self._drop_text(seeds)
        gb = generator_for(batch_seed(seeds))
        loss, metrics = emage_loss(
            self.model,
            batch["tokens"],
            batch["text"],
            batch["text_mask"],
            remask=s.emage_remask,
            first_pass_weight=s.emage_first_pass_weight,
            state_weight=s.emage_state_weight,
            drop_text=drop,
            generator=gb,
        )
        return loss, metrics, None, None, gb

    def _autoregressive(self, batch: dict):
        from training.model.ar_model import ar_loss

        seeds, tokens = batch["seeds"], batch["tokens"]
        drop = self._drop_text(seeds)
        logits = self.model(tokens, batch["text"], batch["text_mask"], drop_text=drop)
        loss, metrics = ar_loss(logits, tokens)
        with torch.no_grad():
            everywhere = torch.ones_like(tokens, dtype=torch.bool)
            metrics["codebook_usage"] = codebook_usage(logits.argmax(-1), everywhere, self.model.codebook_size)
        return loss, metrics, None, logits, None

    def _vq_diffusion(self, batch: dict):
        from training.model.vq_diffusion.loss import vq_diffusion_loss

        s, m = self.settings, self.model
        tokens, seeds = batch["tokens"], batch["seeds"]
        schedule = m.schedule
        t = 1 + (unit_uniform(seeds, _STAGE) * schedule.T).long().clamp(max=schedule.T - 1)
        gens, g = self._gens(seeds)
        if gens is not None:  # per-sample corruption, independent of the batch split
            x_t = torch.cat([schedule.q_sample(tokens[i : i + 1], t[i : i + 1], gi) for i, gi in enumerate(gens)])
        else:
            x_t = schedule.q_sample(tokens, t, g)
        out = m(x_t, batch["text"], batch["text_mask"], drop_text=self._drop_text(seeds), t=t)
        loss, metrics = vq_diffusion_loss(
            out.token_logits, tokens, x_t, t, schedule, s.diffusion_aux_weight, s.diffusion_adaptive_aux
        )
        return loss, metrics, None, out, g
