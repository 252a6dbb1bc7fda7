"""The training loop, shared by every launcher (local process, DeepSpeed ranks, Ray Train workers).

    summary = run_training(TrainJob(sections=trainer_sections(cfg), out_dir="run/train",
                                    shards=[...], text_encoder="run/text", engine="deepspeed"))

A ``TrainJob`` is plain JSON, so a launcher can hand it to processes it starts
(``python -m training.trainer --job JOB.json``; the DeepSpeed launcher adds ``--local_rank``). It carries
the config sections the trainer reads (``TrainerConfig``: name, model, train, text_encoder), nothing else
of the experiment; the export's ``config.yaml`` is those sections.
Per optimizer step: ``grad_accum`` micro-batches from the ``ShardLoader`` -> frozen text encoder ->
``engine.forward_backward`` (``TrainModule``: tuples + loss) -> ``engine.step`` -> EMA -> optional
``PolicyUpdate`` -> metrics every ``log_every`` -> checkpoint every ``checkpoint_every`` and at the end.
The run resumes from the latest complete checkpoint (weights, optimizer, LR schedule, data position,
RNG, EMA) when ``train.resume``. Rank 0 writes ``summary.json`` and the final export ``export/``
(``model.safetensors`` [+ ``model_ema.safetensors``] [+ the hooks' ``exports``, e.g. ``policy.safetensors``
with ``train.order: learned``] + ``config.yaml``).

Order-learner hook: ``TrainJob.hooks = "package.module:factory"`` names ``factory(cfg, model) ->
TrainHooks`` (order, extra_losses, aux modules, policy_update, exports), built in every rank; in-process
callers can pass ``hooks=TrainHooks(...)`` to ``run_training`` directly. With ``train.order: learned``
and no named factory, ``training.order_learner_hooks.learned_order_hooks`` builds them.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch

from core.config import from_dict, identity_dict, to_dict, to_yaml
from core.environment import environment
from core.files import read_json, write_json_atomic
from tokenization.text import WEIGHT_KEYS, TextEncoderConfig
from training.checkpoint import (
    COMPLETE,
    ResumeRefused,
    choose_resume,
    load_checkpoint,
    move_aside,
    publish_export,
    save_checkpoint,
    step_of,
    tag_for,
)
from training.data import LoaderSpec, ShardLoader, shards_digest
from training.determinism import deterministic_mode, seed_everything
from training.divergence import check_logged, check_step
from training.engine import init_distributed, make_engine, micro_batch
from training.heldout import EMA_PREFIX
from training.host_allocator import host_allocator
from training.host_allocator import resolve as resolve_allocator
from training.metrics_log import MetricsAccumulator, MetricsLogger, last_record
from training.model import build_model, model_kind
from training.model.config import ModelConfig
from training.model.train_module import StepSettings, TrainHooks, TrainModule
from training.progress import Progress, heldout_text
from training.rank_environments import gather_rank_environments
from training.train_config import TrainConfig

Log = Callable[[str], None]


@dataclass
class TrainerConfig:
    """The sections of an experiment that the trainer reads."""

    name: str = "experiment"
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    text_encoder: TextEncoderConfig = field(default_factory=TextEncoderConfig)


# ``train`` keys that cannot change the trained weights: how long (``steps``: a run can be extended, its schedule
# then follows the new length), checkpoint cadence and resume policy (the resume is exact: weights, optimizer, RNG,
# data position), logs and the sample grids (``sample_every``: they sample with their own generator), timeouts,
# paths, and what to do on a bad shard (skip or stop: a finished run read the same data), the held-out losses
# (``eval_every``, ``eval_samples``: no gradient, no shared random state). Every other key, and
# every key added later, is part of a checkpoint's lineage.
NOT_WEIGHT_KEYS = frozenset(
    {
        "steps",
        "checkpoint_every",
        "keep_last",
        "resume",
        "trust_checkpoint",
        "log_every",
        "sample_every",
        "eval_every",
        "eval_samples",
        "tensorboard",
        "wandb_project",
        "wandb_mode",
        "dist_timeout_minutes",
        "nvme_path",
        "on_bad_shard",
    }
)
SUMMARY = "summary.json"  # rank 0's record of a finished run (train stage: finished_summary)
# the keys an older checkpoint may record that the lineage now leaves out: not compared
LINEAGE_IGNORED = frozenset(f"train.{k}" for k in NOT_WEIGHT_KEYS)
# ``text_encoder`` keys whose whole effect reaches the trainer through an input's identity: the encoder's weights
# (the text stage's identity: path, the tiny T5's recipe) and the text ids in the token shards (the tokenize
# stage's identity: max_length, truncation); ``device``: the trainer moves the encoder to its own device.
TEXT_KEYS_IN_INPUTS = WEIGHT_KEYS | {"max_length", "truncation", "device"}


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        out.update(_flat(v, key + ".") if isinstance(v, dict) else {key: v})
    return out


def train_lineage(cfg: TrainerConfig, inputs: dict, shards: Optional[list[str]] = None) -> dict:
    """What a checkpoint is made from: the identities of the token shards and the text encoder (``inputs``),
    the shard list it reads (``data.mixing`` and ``train.train_split`` choose it), the model, every ``train``
    key but ``NOT_WEIGHT_KEYS`` (optimiser, objective, RNG, precision, EMA, engine, data loader, seed) and the
    ``text_encoder`` keys that act in training. A key is in by default: one added to the config later cannot
    silently go missing. ``train.steps`` is not part of it: a run can be extended."""
    train = {k: v for k, v in identity_dict(cfg.train).items() if k not in NOT_WEIGHT_KEYS}  # removed keys as were
    text = {k: v for k, v in identity_dict(cfg.text_encoder).items() if k not in TEXT_KEYS_IN_INPUTS}
    model = {k: v for k, v in identity_dict(cfg.model).items() if k != "preset"}
    return {
        "version": 2,  # 1 (no key): inputs, model, optimizer and objective only; its checkpoints are refused once
        "inputs": dict(sorted(inputs.items())),
        "data": {"shards": shards_digest(shards) if shards is not None else None},
        "model": _flat(model),
        "train": _flat(train),
        "text_encoder": _flat(text),
    }


def trainer_sections(cfg: Any) -> dict:
    """The trainer's sections of an experiment config (any object with those attributes), as plain data."""
    return {
        k: to_dict(getattr(cfg, k)) if k != "name" else cfg.name for k in ("name", "model", "train", "text_encoder")
    }


@dataclass
class TrainJob:
    """Everything a training process needs (JSON-serialisable)."""

    sections: dict  # TrainerConfig as plain data (trainer_sections)
    out_dir: str  # the train stage folder
    shards: list[str]  # token shard paths
    inputs: dict = field(default_factory=dict)  # identities of what it trains on (token shards, text encoder)
    text_encoder: Optional[str] = None  # the text stage's folder (None: load from config.text_encoder)
    engine: str = "local"  # local | deepspeed
    hooks: Optional[str] = None  # "module:factory" -> TrainHooks
    text_encoder_factory: Optional[str] = None  # "module:factory", factory(cfg) -> encoder (custom/tests)
    tokenizer: Optional[str] = None  # the tokenizer stage's folder (decodes the train.sample_every grids)
    host_allocator: str = "auto"  # cluster.host_allocator: the C allocator's treatment of freed memory
    heldout_shards: list[str] = field(default_factory=list)  # the eval split's token shards (train.eval_every)

    def save(self, path: str | Path) -> None:
        write_json_atomic(path, asdict(self))

    def trainer_config(self) -> TrainerConfig:
        return from_dict(TrainerConfig, self.sections, source="TrainJob.sections")

    @classmethod
    def load(cls, path: str | Path) -> TrainJob:
        return cls(**json.loads(Path(path).read_text()))


def batch_to(batch: dict, device: torch.device | str) -> dict:
    """Move the tensor entries of a loader batch to ``device`` (non-blocking)."""
    return {k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}


@torch.no_grad()
def encode_text(encoder: Any, batch: dict, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """The frozen text encoder's states for ``batch['text_ids']`` / ``text_mask``: Float[B, S, text_dim]."""
    text = encoder.encode(batch["text_ids"], batch["text_mask"])
    return text.detach().to(dtype) if dtype is not None else text.detach()


def load_text_encoder(text_cfg: TextEncoderConfig, folder: Optional[str]):
    """The frozen text encoder (``tokenization.text.load_text_encoder``; the text stage's folder when given),
    in eval mode with gradients off."""
    from tokenization.text import load_text_encoder as load

    enc = load(text_cfg, folder)
    if isinstance(enc, torch.nn.Module):
        enc.eval().requires_grad_(False)
    return enc


def _import(spec: str) -> Callable:
    mod, _, fn = spec.partition(":")
    if not fn:
        raise ValueError(f"expected 'package.module:function', got {spec!r}")
    return getattr(importlib.import_module(mod), fn)


def _resolve_hooks(
    spec: Optional[str], cfg: Any, model: torch.nn.Module, tokenizer_dir: Optional[str] = None
) -> TrainHooks:
    """The named factory's hooks; else the order learner's when ``train.order == "learned"``; else none."""
    if spec:
        return _import(spec)(cfg, model)
    if cfg.train.order == "learned":
        from training.order_learner_hooks import learned_order_hooks

        return learned_order_hooks(cfg, model, tokenizer_dir=tokenizer_dir)
    return TrainHooks()


def _loader_spec(cfg: Any, shards: list[str], rank: int, world: int) -> LoaderSpec:
    t = cfg.train
    return LoaderSpec(
        shards=list(shards),
        seq_len=cfg.model.grid_h * cfg.model.grid_w,
        codebook_size=cfg.model.codebook_size,
        micro_batch=micro_batch(t, world),
        rank=rank,
        world=world,
        num_workers=t.num_workers,
        seed=t.seed,
        shuffle_buffer=t.shuffle_buffer,
        split=t.data_split,
        on_bad_shard=t.on_bad_shard,
    )


def _stream_changes(saved: dict, loader: ShardLoader) -> list[str]:
    """What differs between a checkpoint's data-loader state and the loader now (``loader.KEY: saved -> now``)."""
    was, now = saved.get("fingerprint") or {}, loader.spec.fingerprint()
    return [
        f"loader.{k}: {was.get(k)!r} -> {now.get(k)!r}" for k in sorted(set(was) | set(now)) if was.get(k) != now.get(k)
    ]


def _slowest_epoch(epoch: int, distributed: bool) -> int:
    """The data epoch of the slowest reader on any rank (each rank reads its own shards, which may differ in size)."""
    return int(-_all_reduce([-epoch], distributed, "max")[0])


def _all_reduce(values: list[float], distributed: bool, op: str = "sum") -> list[float]:
    if not distributed:
        return values
    import torch.distributed as dist

    from training.collectives import all_reduce_host

    t = torch.tensor(values, dtype=torch.float64)
    return all_reduce_host(t, dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX).tolist()


def run_training(
    job: TrainJob, *, text_encoder: Any = None, hooks: Optional[TrainHooks] = None, log: Log = print
) -> dict:
    """Train (or resume) to ``train.steps``; returns the summary (rank 0's view on every rank). With
    ``train.deterministic`` two runs of one job on one machine give the same weights, bit for bit
    (``training.determinism``)."""
    cfg = job.trainer_config()
    t = cfg.train
    device_type = "cuda" if torch.cuda.is_available() else "cpu"
    offload = (t.offload_optimizer, t.offload_params) != ("none", "none")
    allocator = resolve_allocator(job.host_allocator, device_type, offload)
    with deterministic_mode(t.deterministic, t.threads, device_type) as threads, host_allocator(allocator):
        return _train(job, cfg, threads, text_encoder, hooks, log)


def _train(job: TrainJob, cfg: TrainerConfig, threads: int, text_encoder: Any, hooks: Optional[TrainHooks], log: Log):
    t = cfg.train
    out = Path(job.out_dir)
    ckpt_dir = out / "checkpoints"
    distributed = job.engine == "deepspeed"
    rank, world = init_distributed(t.dist_timeout_minutes, log)[:2] if distributed else (0, 1)
    say = log if rank == 0 else (lambda msg: None)

    seed_everything(t.seed)  # identical initial weights on every rank
    model = build_model(cfg.model, t.mode)
    hooks = hooks or _resolve_hooks(job.hooks, cfg, model, job.tokenizer)
    module = TrainModule(
        model, StepSettings.from_config(t), order=hooks.order, extra_losses=hooks.extra_losses, aux=hooks.aux
    )
    n_params = sum(p.numel() for p in module.parameters() if p.requires_grad)
    device = "cuda" if torch.cuda.is_available() and not distributed else "cpu"
    engine = make_engine(module, t, use_deepspeed=distributed, device=device, log=say)
    ranks = gather_rank_environments(world, say)  # after the engine: it sets each rank's device
    if text_encoder is not None:
        encoder = text_encoder
    elif job.text_encoder_factory:
        encoder = _import(job.text_encoder_factory)(cfg)
    else:
        encoder = load_text_encoder(cfg.text_encoder, job.text_encoder)
    if isinstance(encoder, torch.nn.Module):
        encoder.to(engine.device)

    loader = ShardLoader(_loader_spec(cfg, job.shards, rank, world))
    start = 0
    lineage = train_lineage(cfg, job.inputs, job.shards)
    tag, changes = choose_resume(ckpt_dir, lineage, t.resume, say, LINEAGE_IGNORED)  # ResumeRefused: every rank
    refuse_past_the_end(ckpt_dir, tag, t.steps)
    if t.resume == "never":  # changed or not: a new run must not share (and prune) the old run's step folders
        engine.barrier()  # every rank has looked before rank 0 moves the old checkpoints aside
        if rank == 0:
            move_aside(ckpt_dir, say)
        engine.barrier()
    if rank == 0:  # summary.json names the newest checkpoint only from the run that wrote it (finished_summary)
        (out / SUMMARY).unlink(missing_ok=True)
    if tag is not None and changes:
        say(f"[train] train.resume: force: resuming from {ckpt_dir / tag} although {'; '.join(changes)}")
    if tag is not None:
        start, _, extras = load_checkpoint(engine, ckpt_dir, tag, trust=t.trust_checkpoint)
        stream = _stream_changes(extras["loader"], loader)
        if not stream:
            loader.load_state_dict(extras["loader"])
        elif t.resume == "force":
            say(f"[train] train.resume: force: the data stream starts afresh ({'; '.join(stream)})")
        else:  # the lineage matched, the stream did not (another world size, moved shards): refuse, never crash
            raise ResumeRefused(
                f"{ckpt_dir / tag} was made reading another data stream: {'; '.join(stream)}. Set train.resume: "
                "never to train from scratch (the old checkpoints are moved aside), or force to continue from it "
                "with a fresh data stream"
            )
        if hooks.state is not None and "hooks" in extras:
            hooks.state.load_state_dict(extras["hooks"])
        say(f"[train] resumed from {ckpt_dir / tag} at step {start}")
    logger = MetricsLogger(
        out,
        rank,
        t.tensorboard,
        t.wandb_project,
        t.wandb_mode,
        cfg.name,
        to_dict(cfg) if rank == 0 else None,
        resume_step=start,
    )
    config_yaml = to_yaml(cfg)
    meta = {
        "model_config": json.dumps(to_dict(cfg.model)),
        "mode": t.mode,
        "kind": model_kind(t.mode),
    }
    L = cfg.model.grid_h * cfg.model.grid_w
    acc = MetricsAccumulator()
    last: dict = {}
    t_log, steps_in_log = time.time(), 0
    progress = Progress(start, t.steps)
    say(
        f"[train] {t.mode} {n_params:,} trainable params, "
        f"steps {start}->{t.steps}, batch {t.batch_size} = {world} ranks x {micro_batch(t, world)} x "
        f"{t.grad_accum} accum, engine {job.engine} (ZeRO {t.zero_stage if distributed else '-'}, "
        f"{engine.precision}), split {loader.spec.resolved_split}, {threads} threads/rank"
        f"{', deterministic' if t.deterministic else ''}"
    )
    heldout = None
    if t.eval_every and job.heldout_shards:
        from training.heldout import HeldOut

        heldout = HeldOut(
            job.heldout_shards,
            L,
            cfg.model.codebook_size,
            t.eval_samples,
            micro_batch(t, world),
            t.seed,
            rank,
            world,
            t.on_bad_shard,
        )
        say(f"[train] held-out loss every {t.eval_every} steps on {heldout.samples} eval samples")
    elif t.eval_every:  # the train stage fails first when the run has no eval split (training.train_stage)
        say("[train] train.eval_every is set but the job has no held-out token shards: no held-out loss")

    def prepare(batch: dict) -> dict:
        batch = batch_to(batch, engine.device)
        batch["text"] = encode_text(encoder, batch, engine.compute_dtype)
        return batch

    grid = None
    if t.sample_every and job.tokenizer:
        from training.sample_grid import SampleGrid

        grid = SampleGrid(job.tokenizer, out / "samples", t.stages, rank=rank, seed=t.seed)
    elif t.sample_every:
        say("[train] train.sample_every is set but the job has no tokenizer folder: no sample grids")
    it = iter(loader)
    batch = None
    try:
        for step in range(start + 1, t.steps + 1):
            for _ in range(t.grad_accum):
                batch = prepare(next(it))
                acc.add(engine.forward_backward(batch))
            info = engine.step()
            check_step(step, info, ckpt_dir)  # nan weights: stop before a checkpoint holds them
            acc.add(info)
            if hooks.policy_update is not None:
                acc.add(hooks.policy_update(step, engine.model, batch))
            steps_in_log += 1
            val = {}
            if heldout is not None and (step % t.eval_every == 0 or step == t.steps):
                t_eval = time.time()
                val = heldout(engine.evaluate, prepare, distributed)
                if engine.ema is not None:  # the weights the sample stage uses
                    with engine.ema.applied():
                        val.update(heldout(engine.evaluate, prepare, distributed, prefix=EMA_PREFIX))
                t_log += time.time() - t_eval  # samples/s counts training only
            if val and not (step % t.log_every == 0 or step == t.steps):  # a record of its own at this step
                logger.log(step, val)
                say(f"[train] step {step}/{t.steps} | {heldout_text(val)}")
            if step % t.log_every == 0 or step == t.steps:
                metrics = {**acc.mean(distributed=distributed), **val}
                check_logged(step, metrics, ckpt_dir)
                dt = max(time.time() - t_log, 1e-9)
                bad = _all_reduce([loader.bad_shards, loader.bad_samples], distributed, loader.bad_reduce)
                metrics.update(
                    {
                        "tokens_per_s": steps_in_log * t.batch_size * L / dt,
                        "samples_per_s": steps_in_log * t.batch_size / dt,
                        "data/bad_shards": bad[0],
                        "data/bad_samples": bad[1],
                        "data/epoch": _slowest_epoch(loader.epoch, distributed),
                    }
                )
                logger.log(step, metrics)
                say(progress.line(step, metrics))
                last = {"step": step, **metrics}
                acc.reset()
                t_log, steps_in_log = time.time(), 0
            if grid is not None and step % t.sample_every == 0:
                path = grid(step, engine.model, batch)
                if path is not None:
                    say(f"[train] samples -> {path}")
            if step % t.checkpoint_every == 0 or step == t.steps:
                save_checkpoint(
                    engine,
                    ckpt_dir,
                    step,
                    client_state={"step": step},
                    rank_state={
                        "loader": loader.state_dict(),
                        **({"hooks": hooks.state.state_dict()} if hooks.state is not None else {}),
                    },
                    config_yaml=config_yaml,
                    metadata=meta,
                    keep_last=t.keep_last,
                    log=say,
                    lineage=lineage,
                    parts=hooks.exports,
                )
    finally:
        logger.close()
    if not last and rank == 0:  # nothing trained here (the run had reached its last step): its last logged metrics
        logged = last_record(out / "metrics.jsonl")
        last = {k: v for k, v in logged.items() if k != "time"} if logged else {}
    summary = {
        "steps": t.steps,
        "resumed_from": start,
        "checkpoint": str(ckpt_dir / tag_for(t.steps)),
        "export": str(out / "export" / "model.safetensors"),
        "world_size": world,
        "engine": job.engine,
        "precision": engine.precision,
        "deterministic": t.deterministic,
        "threads": threads,
        "last_metrics": last,
        "environment": environment(),  # rank 0's: on a cluster, not the driver's (core.environment)
        "ranks": ranks,  # each host's ranks, and how its environment differs from rank 0's
    }
    if rank == 0:
        publish_export(ckpt_dir / tag_for(t.steps), out / "export")
        made = read_json(ckpt_dir / tag_for(t.steps) / COMPLETE, {}).get("time")  # which checkpoint it was
        write_json_atomic(out / SUMMARY, {**summary, "checkpoint_time": made})
        say(f"[train] done: export {summary['export']}")
    engine.barrier()
    return summary


def refuse_past_the_end(ckpt_dir: str | Path, tag: Optional[str], steps: int) -> None:
    """Raise ``ResumeRefused`` when the checkpoint a resume would load is past ``train.steps`` (the run was
    shortened after it trained further): its weights are not the ``steps``-step run's, nor are its metrics."""
    if tag is not None and step_of(tag) > steps:
        raise ResumeRefused(
            f"{Path(ckpt_dir) / tag} is past train.steps ({steps}): set train.steps to {step_of(tag)} or more to "
            f"continue from it, or train.resume: never to train {steps} steps from scratch (the old checkpoints "
            "are moved aside)"
        )


def finished_summary(out_dir: str | Path, steps: int, tag: Optional[str]) -> Optional[dict]:
    """The summary of the run that trained to ``steps`` and published its export, when ``tag`` (the newest
    complete checkpoint with this job's lineage: what a resume would load) is that run's final checkpoint; else
    None. A rerun then has nothing to train (a stage killed after its trainer finished, a changed log setting):
    the caller skips the launch, which would load the checkpoint on every rank to train 0 steps. Every run
    removes the summary before it can write a checkpoint, so a summary never outlives a newer checkpoint."""
    out = Path(out_dir)
    if tag is None or tag != tag_for(steps):
        return None
    summary = read_json(out / SUMMARY, None)
    if not isinstance(summary, dict) or summary.get("steps") != steps:
        return None
    if summary.get("checkpoint") != str(out / "checkpoints" / tag) or summary.get("checkpoint_time") is None:
        return None
    made = read_json(out / "checkpoints" / tag / COMPLETE, {}).get("time")
    return summary if summary["checkpoint_time"] == made else None  # that very checkpoint, not one made later


def run_job(job: dict) -> dict:
    """``run_training`` of a job given as plain data, printing its log (Ray Train workers call this)."""
    return run_training(TrainJob(**job), log=lambda m: print(m, flush=True))


def main(argv: Optional[list[str]] = None) -> int:
    """``python -m training.trainer --job JOB.json`` (what the DeepSpeed launcher runs on each rank)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--job", required=True, help="TrainJob JSON")
    p.add_argument("--local_rank", type=int, default=None, help="set by the DeepSpeed launcher")
    args = p.parse_args(argv)
    if args.local_rank is not None:
        os.environ.setdefault("LOCAL_RANK", str(args.local_rank))
    run_training(TrainJob.load(args.job), log=lambda m: print(m, flush=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
