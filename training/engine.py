"""Engines: the DeepSpeed config builder and wrapper, the plain PyTorch engine, EMA of the weights.

Both engines take a ``training.model.train_module.TrainModule`` and expose the same small API, so the trainer, the
tests and the benchmarks share one loop::

    eng = make_engine(module, cfg.train, world_size, use_deepspeed=True)
    metrics = eng.forward_backward(batch)      # one micro-batch (batch already holds ``text``)
    info = eng.step()                          # at the accumulation boundary: clip, AdamW, LR schedule
    eng.save(ckpt_dir, tag, client_state) / eng.load(ckpt_dir, tag) / eng.full_state_dict()
    parts = eng.full_state_dicts(("model.", "aux.NAME."))   # exports, split by prefix

Optimiser: AdamW with the config's betas (PDM appendix A: 0.9, 0.96), weight decay on matrices only,
cosine schedule with linear warmup (``lr_lambda``; a ``LambdaLR`` handed to ``deepspeed.initialize``).
DeepSpeed: ZeRO 0-3, optimizer/parameter offload (cpu, nvme), fp32/fp16/bf16, gradient accumulation
and clipping from ``TrainConfig``; activation checkpointing is the model's own ``grad_checkpointing``.
Only ``TrainModule`` is handed to DeepSpeed: the frozen text encoder (and VQ-GAN) stay outside, so they
are neither optimised nor saved.

Precision (``resolve_precision``): bf16 only where the accelerator supports it; DeepSpeed 0.19's CPU
accelerator reports bf16 as supported and fp16 only when oneDNN has fp16 kernels, so fp16 on a CPU
without them (and bf16 on a GPU without it) falls back to fp32 with a logged warning. bf16 on a CPU whose
oneDNN has no bf16 kernels (x86 without AVX-512, such as AVX2-only EPYCs) is kept, as asked (the offload
configs count on its 2-byte parameters), with a logged warning: its matmuls are emulated there, ~100x slower
than fp32 (a 1152 x 256 x 4096 matmul: 4.6 s against 0.045 s on one AVX2 core).
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any, Optional

import torch
import torch.nn as nn

from core.files import atomic_path
from training.ds_offload import largest_param, offload_settings
from training.model.train_module import TrainModule
from training.safe_load import check_deepspeed_files, load_state

Log = Callable[[str], None]


# ---------------------------------------------------------------- schedule / parameter groups
HYPER = ("betas", "eps", "weight_decay")


def configured_groups(optimizer, scheduler) -> list[dict]:
    """Each param group's hyper-parameters as the config sets them (base lr, betas, eps, weight decay), taken
    right after the optimizer and scheduler are built."""
    return [
        {"lr": base, **{k: g[k] for k in HYPER if k in g}}
        for g, base in zip(optimizer.param_groups, scheduler.base_lrs)
    ]


def follow_config(optimizer, scheduler, groups: list[dict]) -> None:
    """After a checkpoint load: the config's base lrs, betas, eps and weight decay again (a resumed run follows
    the config, not the checkpoint's settings), at the checkpoint's position in the schedule."""
    scheduler.base_lrs = [g["lr"] for g in groups]
    step = scheduler.last_epoch
    for pg, g, fn in zip(optimizer.param_groups, groups, scheduler.lr_lambdas):
        pg.update({k: g[k] for k in HYPER if k in g})
        pg["initial_lr"] = g["lr"]
        pg["lr"] = g["lr"] * fn(step)


def lr_lambda(t: Any) -> Callable[[int], float]:
    """Multiplier of ``t.lr`` at optimizer step s (0-based): linear warmup, then cosine to min_lr_ratio."""
    warm, total, floor = t.warmup_steps, t.steps, t.min_lr_ratio

    def f(step: int) -> float:
        if warm and step < warm:
            return (step + 1) / warm
        if t.schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warm) / max(1, total - warm))
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return f


def param_groups(module: nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups: decayed matrices (Linear weights, code embeddings), undecayed rest (biases, norms,
    positional embeddings, single learned vectors such as the null text); plus one
    group per ``aux`` module that carries an ``optim_group`` dict (e.g. the order learner's lr)."""
    aux = getattr(module, "aux", None)
    special = (
        {f"aux.{k}.": dict(m.optim_group) for k, m in aux.items() if getattr(m, "optim_group", None)}
        if isinstance(aux, nn.ModuleDict)
        else {}
    )
    own: dict[str, list] = {k: [] for k in special}
    decay, no_decay, seen = [], [], set()
    for name, p in module.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        pre = next((k for k in special if name.startswith(k)), None)
        if pre is not None:
            own[pre].append(p)
            continue
        matrix = p.ndim >= 2 and p.numel() > p.shape[-1]  # not one vector, such as null_text [1, 1, dim]
        (decay if matrix and "pos_emb" not in name else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    groups += [{"params": own[k], **special[k]} for k in special]
    return [g for g in groups if g["params"]]


def resolve_precision(requested: str, device_type: str, log: Log = print) -> str:
    """The precision to use on this accelerator (see the module docstring); logs any fallback."""
    if requested == "fp32":
        return "fp32"
    if device_type == "cuda":
        ok = requested == "fp16" or torch.cuda.is_bf16_supported()
    else:
        try:
            from deepspeed.accelerator import get_accelerator

            acc = get_accelerator()
            ok = bool(acc.is_bf16_supported() if requested == "bf16" else acc.is_fp16_supported())
        except Exception:  # noqa: BLE001 - no deepspeed: torch's CPU autocast handles bf16 only
            ok = requested == "bf16"
    if not ok:
        log(
            f"[engine] WARNING: {requested} is not supported on this {device_type} accelerator "
            f"(DeepSpeed {'fp16: no oneDNN fp16 kernels' if requested == 'fp16' else 'bf16 unsupported'}); "
            f"training in fp32 instead"
        )
        return "fp32"
    if requested == "bf16" and device_type == "cpu" and not cpu_has_bf16_kernels():
        log(
            "[engine] WARNING: bf16 on this CPU has no oneDNN bf16 kernels (on x86: no AVX-512): its matmuls are "
            "emulated, ~100x slower than fp32; set train.precision: fp32 unless bf16's memory is needed"
        )
    return requested


def cpu_has_bf16_kernels() -> bool:
    """Whether oneDNN runs bf16 natively on this CPU (AVX-512 or newer on x86; its check, also torch's own)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except Exception:  # noqa: BLE001 - a torch without the check: assume the CPU has them
        return True


DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


# ---------------------------------------------------------------- distributed setup
def init_distributed(timeout_minutes: int = 30, log: Log = print) -> tuple[int, int, int]:
    """Initialise torch.distributed through DeepSpeed (the launcher's or Ray Train's env; an
    already-initialised group is reused). Single process without launcher env: a 1-rank group on
    127.0.0.1. With the master on loopback (every single-node job) the rendezvous store listens on
    127.0.0.1 only (``cluster.loopback_store``; torch's env:// store listens on every interface).
    Returns (rank, world_size, local_rank)."""
    import torch.distributed as dist

    from cluster.loopback_store import LOOPBACK_NAMES, LOOPBACK_SOCKETS, init_loopback_group

    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    os.environ.setdefault("LOCAL_RANK", "0")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    if "MASTER_PORT" not in os.environ:
        os.environ["MASTER_PORT"] = str(free_port())
    loopback = os.environ["MASTER_ADDR"] in LOOPBACK_NAMES
    if loopback:
        for k, v in LOOPBACK_SOCKETS.items():  # gloo and NCCL on loopback only
            os.environ.setdefault(k, v)
    import deepspeed
    from deepspeed.accelerator import get_accelerator

    if get_accelerator().device_name() == "cpu":
        # DeepSpeed JIT-builds a shared-memory all-reduce used only by inference kernels; training
        # never uses it and the first build takes minutes on a small CPU machine.
        import deepspeed.ops as ds_ops

        ds_ops.__compatible_ops__["deepspeed_shm_comm"] = False
    backend, timeout = get_accelerator().communication_backend_name(), timedelta(minutes=timeout_minutes)
    if loopback and not dist.is_initialized():
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        init_loopback_group(backend, rank, world, int(os.environ["MASTER_PORT"]), timeout)
    deepspeed.init_distributed(dist_backend=backend, timeout=timeout, verbose=False)  # reuses the group
    return dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0))


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------- DeepSpeed config
def build_ds_config(t: Any, world_size: int, precision: str, device_type: str = "cpu", biggest: int = 0) -> dict:
    """DeepSpeed JSON config from ``TrainConfig`` (global batch = micro x accumulation x world). ``biggest``:
    elements of the model's largest parameter (``training.ds_offload.largest_param``), which sizes the NVMe
    parameter buffers."""
    micro = micro_batch(t, world_size)
    zero: dict = {
        "stage": t.zero_stage,
        # a contiguous gradient buffer avoids GPU memory fragmentation; on a CPU rank it is only two more
        # copies of every gradient per step (benchmarks/bench_train.py counts them)
        "contiguous_gradients": device_type == "cuda",
        "overlap_comm": device_type == "cuda",
        "reduce_bucket_size": 5e7,
        "allgather_bucket_size": 5e7,
    }
    if t.zero_stage == 3:
        zero.update(
            {
                "stage3_gather_16bit_weights_on_model_save": True,
                "stage3_param_persistence_threshold": 1e4,
                "stage3_prefetch_bucket_size": 5e7,
            }
        )
    offload, top = offload_settings(t, world_size, device_type, biggest)
    zero.update(offload)
    states_on_gpu = device_type == "cuda" and t.offload_optimizer == "none"  # the optimizer's, in GPU memory
    cfg: dict = {
        "train_batch_size": t.batch_size,
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": t.grad_accum,
        "gradient_clipping": t.grad_clip,
        "optimizer": {
            "type": "AdamW",
            "params": {
                "lr": t.lr,
                "betas": list(t.betas),
                "eps": t.eps,
                "weight_decay": t.weight_decay,
                # torch's AdamW: fused on a GPU (its own CUDA kernel: no op to build with nvcc), plain on a CPU
                # machine (offloaded or not: the states are in host memory either way); DeepSpeedCPUAdam for an
                # optimizer offloaded from GPUs
                "torch_adam": device_type != "cuda" or states_on_gpu,
                **({"fused": True} if states_on_gpu else {}),
            },
        },
        "zero_optimization": zero,
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
    }
    if precision == "fp16":
        cfg["fp16"] = {"enabled": True, "initial_scale_power": 16, "loss_scale_window": 1000}
    elif precision == "bf16":
        # no per-gradient inf/nan check (~8 kernel launches per tensor; a GPU step waits on them): bf16 has no loss
        # scale to lower, the global norm still comes out non-finite, and training.divergence stops the run on it
        cfg["bf16"] = {"enabled": True, "check_grad_overflow": False}
    cfg.update(top)
    return cfg


def micro_batch(t: Any, world_size: int) -> int:
    per = t.batch_size // t.grad_accum
    if per % world_size:
        raise ValueError(
            f"train.batch_size {t.batch_size} / grad_accum {t.grad_accum} = {per} is not divisible "
            f"by the {world_size} ranks"
        )
    return per // world_size


@contextlib.contextmanager
def eval_mode(module: nn.Module):
    """``module`` in eval mode (no dropout) for the block, back in train mode after it, however it ends."""
    module.eval()
    try:
        yield module
    finally:
        module.train()


# ---------------------------------------------------------------- EMA
class EMA:
    """Exponential moving average of the trainable weights (fp32 shadow), updated after each step.

    Under ZeRO-3 each rank averages only its own partition (``param.ds_tensor``), and ``export``
    all-gathers the averaged partitions itself. ``applied`` swaps the averages into the partitions between
    ``zero3_optimizer``'s (DeepSpeed's ZeRO-3 optimizer) release of every gathered parameter and its gather of
    the ones it keeps whole (``stage3_param_persistence_threshold``), as around a checkpoint: without the release,
    the forward would use the trained values still gathered."""

    def __init__(self, module: nn.Module, decay: float, zero3: bool = False, zero3_optimizer=None):
        self.decay, self.zero3, self.zero3_optimizer = decay, zero3, zero3_optimizer
        self.params = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
        self.shadow = [self._data(p).detach().float().clone() for _, p in self.params]

    def _data(self, p: nn.Parameter) -> torch.Tensor:
        return p.ds_tensor.data if self.zero3 else p.data

    @torch.no_grad()
    def update(self) -> None:
        for s, (_, p) in zip(self.shadow, self.params):
            s.lerp_(self._data(p).float(), 1.0 - self.decay)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "shadow": [s.clone() for s in self.shadow]}

    def load_state_dict(self, state: dict) -> None:
        if len(state["shadow"]) != len(self.shadow):
            raise ValueError("EMA state does not match the model's parameters")
        for s, v in zip(self.shadow, state["shadow"]):
            s.copy_(v)

    @contextlib.contextmanager
    def applied(self):
        """The averages in the parameters (in their dtype, as ``export`` writes them) for the block, the trained
        values back after it, bit for bit: the held-out loss of the EMA weights (``training.heldout``). Under
        ZeRO-3 the averages go into each rank's partitions (collective: every rank enters the block)."""
        if self.zero3 and self.zero3_optimizer is None:
            raise RuntimeError("EMA.applied: the parameters are ZeRO-3 partitions and no ZeRO-3 optimizer was given")
        with torch.no_grad():
            self._released()
            trained = [self._data(p).clone() for _, p in self.params]
            try:
                for s, (_, p) in zip(self.shadow, self.params):
                    self._data(p).copy_(s)
                self._regathered()
                yield
            finally:
                self._released()
                for t, (_, p) in zip(trained, self.params):
                    self._data(p).copy_(t)
                self._regathered()

    def _released(self) -> None:
        """ZeRO-3: every parameter back to its partition alone (the gathered copies freed), as before a checkpoint."""
        if self.zero3:
            self.zero3_optimizer.checkpoint_event_prologue()

    def _regathered(self) -> None:
        """ZeRO-3: the parameters it keeps whole gathered again from the partitions (collective)."""
        if self.zero3:
            self.zero3_optimizer.checkpoint_event_epilogue()

    @torch.no_grad()
    def export(self, model: nn.Module, weights: Optional[dict], rank: int = 0) -> Optional[dict]:
        """``weights`` (the full state dict, rank 0) with every trainable parameter replaced by its
        average, in the parameter's dtype. Collective under ZeRO-3 (all ranks call it)."""
        full = []
        for s, (_, p) in zip(self.shadow, self.params):
            if self.zero3:
                from training.collectives import all_gather_host

                s = torch.cat(all_gather_host(s))[: p.ds_numel].view(p.ds_shape)  # CPU shards with offload
            full.append(s)
        if rank != 0 or weights is None:
            return None
        by_id = {id(p): t for (_, p), t in zip(self.params, full)}
        out = dict(weights)
        for name, v in model.state_dict(keep_vars=True).items():
            if id(v) in by_id:
                out[name] = by_id[id(v)].to("cpu", dtype=weights[name].dtype, copy=True)
        return out


# ---------------------------------------------------------------- engines
def _cpu_copy(sd: dict) -> dict:
    """Detached CPU copies (``.cpu()`` alone aliases CPU tensors); tied tensors stay tied."""
    out, by_id = {}, {}
    for k, v in sd.items():
        key = (v.data_ptr(), v.shape, v.dtype)
        if key not in by_id:
            by_id[key] = v.detach().to("cpu", copy=True)
        out[k] = by_id[key]
    return out


MODEL_PREFIX = "model."  # the PDM inside the TrainModule (aux modules live under "aux.<name>.")


def _split(sd: dict, prefixes: Sequence[str]) -> dict[str, dict]:
    """CPU copies of the entries of ``sd`` under each prefix, prefix stripped."""
    return {p: _cpu_copy({k[len(p) :]: v for k, v in sd.items() if k.startswith(p)}) for p in prefixes}


class LocalEngine:
    """Plain PyTorch: fwd/bwd, grad accumulation, clipping, AdamW, LambdaLR, autocast (bf16/fp16)."""

    rank, world_size, zero_stage = 0, 1, 0

    def __init__(self, module: TrainModule, t: Any, device: str = "cpu", log: Log = print):
        self.t, self.device = t, torch.device(device)
        self.module = module.to(self.device)
        self.precision = resolve_precision(t.precision, self.device.type, log)
        if self.precision == "fp16" and self.device.type == "cpu":
            self.precision = "fp32"
        self.compute_dtype = torch.float32
        self.model.grad_checkpointing = t.activation_checkpointing
        fused = self.device.type == "cuda"
        self.optimizer = torch.optim.AdamW(
            param_groups(self.module, t.weight_decay), lr=t.lr, betas=tuple(t.betas), eps=t.eps, fused=fused or None
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda(t))
        self.configured = configured_groups(self.optimizer, self.scheduler)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")
        self.micro_steps = 0
        self.global_steps = 0
        self.ema = EMA(self.module.model, t.ema_decay) if t.ema_decay else None

    @property
    def model(self) -> nn.Module:
        return self.module.model

    def _autocast(self):
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=DTYPES[self.precision])

    def forward_backward(self, batch: dict) -> dict:
        self.module.train()
        with self._autocast():
            loss, metrics = self.module(batch)
        self.scaler.scale(loss / self.t.grad_accum).backward()
        self.micro_steps += 1
        return metrics

    @torch.no_grad()
    def evaluate(self, batch: dict) -> dict:
        """The objective's metrics on ``batch`` in eval mode, without gradients (``training.heldout``)."""
        with eval_mode(self.module), self._autocast():
            return self.module(batch)[1]

    def step(self) -> dict:
        self.scaler.unscale_(self.optimizer)
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        clip = self.t.grad_clip if self.t.grad_clip > 0 else float("inf")
        norm = torch.nn.utils.clip_grad_norm_(params, clip)
        lr = self.optimizer.param_groups[0]["lr"]
        scale = self.scaler.get_scale()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.global_steps += 1
        info = {"lr": lr, "grad_norm": float(norm)}
        if self.scaler.is_enabled():  # fp16: the share of steps skipped on overflow, logged
            info["skipped"] = float(self.scaler.get_scale() < scale)
            if info["skipped"]:
                return info  # the schedule and the EMA wait for a real step, as in DeepSpeed
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update()
        return info

    def save(self, ckpt_dir: str, tag: str, client_state: dict) -> None:
        path = os.path.join(ckpt_dir, tag, "engine_state.pt")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        state = {
            "module": self.module.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "global_steps": self.global_steps,
            "client_state": client_state,
        }
        with atomic_path(path) as tmp:
            torch.save(state, tmp)

    def load(self, ckpt_dir: str, tag: str, trust: bool = False) -> dict:
        state = load_state(os.path.join(ckpt_dir, tag, "engine_state.pt"), trust, map_location=self.device)
        self.module.load_state_dict(state["module"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        follow_config(self.optimizer, self.scheduler, self.configured)
        self.scaler.load_state_dict(state["scaler"])
        self.global_steps = state["global_steps"]
        return state["client_state"]

    def full_state_dict(self) -> Optional[dict]:
        """The model's full state dict (on rank 0; collective under ZeRO-3 for the DeepSpeed engine)."""
        parts = self.full_state_dicts()
        return None if parts is None else parts[MODEL_PREFIX]

    def full_state_dicts(self, prefixes: Sequence[str] = (MODEL_PREFIX,)) -> Optional[dict[str, dict]]:
        """``{prefix: the TrainModule's tensors whose names start with prefix, prefix stripped}`` (e.g.
        "model." for the PDM, "aux.NAME." for an aux module trained in the engine), full, on rank 0;
        None on the other ranks. Collective under ZeRO-3 (one gather for all the prefixes)."""
        return _split(self.module.state_dict(), prefixes)

    def barrier(self) -> None:
        pass


class DeepSpeedEngine(LocalEngine):
    """``deepspeed.initialize`` around the ``TrainModule``; same API as ``LocalEngine``."""

    def __init__(self, module: TrainModule, t: Any, log: Log = print):  # noqa: D107 - no super().__init__
        import deepspeed
        import torch.distributed as dist
        from deepspeed.accelerator import get_accelerator

        acc = get_accelerator()
        self.t = t
        self.device = torch.device(acc.current_device_name())
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        self.precision = resolve_precision(t.precision, self.device.type, log)
        self.compute_dtype = DTYPES[self.precision]
        self.zero_stage = t.zero_stage
        self.ds_config = build_ds_config(t, self.world_size, self.precision, self.device.type, largest_param(module))
        module.model.grad_checkpointing = t.activation_checkpointing
        groups = param_groups(module, t.weight_decay)
        self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=module,
            model_parameters=groups,
            config=self.ds_config,
            lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(t)),
        )
        self.configured = configured_groups(self.optimizer, self.scheduler)
        self.module = self.engine.module
        self.device = self.engine.device
        zero3 = t.zero_stage == 3
        self.ema = (
            EMA(self.module.model, t.ema_decay, zero3=zero3, zero3_optimizer=self.engine.optimizer if zero3 else None)
            if t.ema_decay
            else None
        )
        self.micro_steps = 0
        self._lr = t.lr * lr_lambda(t)(0)
        self._skipped_steps = getattr(self.engine, "skipped_steps", 0)

    @property
    def global_steps(self) -> int:
        return self.engine.global_steps

    def forward_backward(self, batch: dict) -> dict:
        """DeepSpeed steps after every backward (it applies the update at the accumulation boundary)."""
        self.engine.train()
        loss, metrics = self.engine(batch)
        self.engine.backward(loss)
        if self.engine.is_gradient_accumulation_boundary():
            self._lr = self.engine.get_lr()[0]
        self.engine.step()
        self.micro_steps += 1
        return metrics

    @torch.no_grad()
    def evaluate(self, batch: dict) -> dict:
        """The objective's metrics on ``batch`` in eval mode, without gradients (every rank: ZeRO-3 gathers the
        parameters in the forward)."""
        with eval_mode(self.engine):
            return self.engine(batch)[1]

    def step(self) -> dict:
        """Called once per optimizer step, after the last micro-batch: the update already happened (or, in fp16,
        was skipped on overflow: DeepSpeed then reports an infinite norm; ``skipped`` says so, and the EMA waits for
        a real step, as in the plain engine)."""
        norm = self.engine.get_global_grad_norm()
        info = {"lr": self._lr, "grad_norm": float(norm) if norm is not None else float("nan")}
        skipped_steps = getattr(self.engine, "skipped_steps", 0)
        skipped, self._skipped_steps = skipped_steps > self._skipped_steps, skipped_steps
        if self.precision == "fp16":
            info["skipped"] = float(skipped)
        if self.ema is not None and not skipped:
            self.ema.update()
        return info

    def save(self, ckpt_dir: str, tag: str, client_state: dict) -> None:
        self.engine.save_checkpoint(ckpt_dir, tag=tag, client_state=client_state, save_latest=False)

    def load(self, ckpt_dir: str, tag: str, trust: bool = False) -> dict:
        check_deepspeed_files(os.path.join(ckpt_dir, tag), trust)  # DeepSpeed unpickles them fully
        path, client_state = self.engine.load_checkpoint(
            ckpt_dir, tag=tag, load_optimizer_states=True, load_lr_scheduler_states=True
        )
        if path is None:
            raise RuntimeError(f"DeepSpeed could not load checkpoint {tag!r} from {ckpt_dir}")
        follow_config(self.optimizer, self.scheduler, self.configured)
        self._lr = self.optimizer.param_groups[0]["lr"]
        self._skipped_steps = getattr(self.engine, "skipped_steps", 0)  # restored with the checkpoint
        return client_state or {}

    def full_state_dicts(self, prefixes: Sequence[str] = (MODEL_PREFIX,)) -> Optional[dict[str, dict]]:
        """Full weights on rank 0 (None elsewhere), split by prefix as ``LocalEngine.full_state_dicts``.
        Collective: every rank must call it under ZeRO-3, which gathers one module at a time
        (``GatheredParameters``), once for all the prefixes."""
        if self.zero_stage == 3:
            sd = self.engine._zero3_consolidated_16bit_state_dict()
            return None if sd is None else _split(sd, prefixes)
        if self.rank != 0:
            return None
        return _split(self.module.state_dict(), prefixes)

    def barrier(self) -> None:
        import torch.distributed as dist

        dist.barrier()


def make_engine(module: TrainModule, t: Any, use_deepspeed: bool, device: str = "cpu", log: Log = print):
    """``DeepSpeedEngine`` (torch.distributed must be initialised) or ``LocalEngine``."""
    if use_deepspeed:
        return DeepSpeedEngine(module, t, log)
    return LocalEngine(module, t, device, log)
