"""Checkpoints: DeepSpeed (or plain) state dirs, per-rank extras, a safetensors export, atomic ``latest``.

Layout (``ckpt_dir`` = ``<train stage folder>/checkpoints``)::

    latest                      the tag of the newest COMPLETE checkpoint (replaced atomically)
    step_00000500/
        <engine files>          DeepSpeed's own (mp_rank_*, zero_pp_rank_*...) or engine_state.pt
        rank_00000.pt ...       per-rank extras: data-loader position, RNG states, ZeRO-3 EMA partition
        ema.pt                  the EMA (ZeRO 0-2: the same on every rank, written once)
        model.safetensors       the trainable weights, full (gathered under ZeRO-3), one file
        model_ema.safetensors   the EMA weights (when train.ema_decay is set)
        policy.safetensors      parts exported beside the PDM (``PartExport``): the learned order's
                                position policy when train.order = learned
        config.yaml             the trainer's config sections, beside the export
        COMPLETE                written last, by rank 0, after a barrier: {step, world_size, time, lineage}

``model.safetensors`` holds the PDM only, whatever else is trained (aux modules of the engine, the
learned order's policy beside it); such a part reaches the export only when the trainer's hooks name
it (``TrainHooks.exports``), in its own file.

Save order: (stale dir of a crashed save removed) -> engine state -> rank extras -> export -> barrier
-> COMPLETE -> ``latest`` (tmp file + rename) -> prune to the last ``keep_last``. A crash at any point
before the rename leaves ``latest`` on the previous complete checkpoint; a directory without COMPLETE
is never resumed from and is removed by the next save. ``find_resume`` falls back to the newest
complete tag if ``latest`` is missing or points at an incomplete directory. Every file is written by
``core.files`` (fsynced, then renamed), so COMPLETE never vouches for data that is not on disk.

Resume policy (``choose_resume``, ``train.resume``): a checkpoint records its lineage (the token shards and
text encoder it was trained on, the model, every ``train`` key that can change the weights:
``training.trainer.train_lineage``). ``auto`` resumes only from a checkpoint with the same lineage and
refuses one made otherwise, naming the difference;
``never`` moves existing checkpoints aside and trains from scratch; ``force`` resumes whatever changed
(the learning-rate schedule and optimiser hyper-parameters then follow the config).
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import numpy as np
import torch

from core.files import atomic_path, read_json, write_json_atomic, write_text_atomic
from training.safe_load import load_state

LATEST, COMPLETE, LINEAGE = "latest", "COMPLETE", "lineage.json"
_TAG = re.compile(r"^step_(\d{8,})$")
Log = Callable[[str], None]


def tag_for(step: int) -> str:
    return f"step_{step:08d}"


def step_of(tag: str) -> int:
    m = _TAG.match(tag)
    if not m:
        raise ValueError(f"not a checkpoint tag: {tag!r}")
    return int(m.group(1))


def is_complete(ckpt_dir: str | Path, tag: str) -> bool:
    return (Path(ckpt_dir) / tag / COMPLETE).is_file()


def complete_tags(ckpt_dir: str | Path) -> list[str]:
    """Complete checkpoint tags, oldest first."""
    d = Path(ckpt_dir)
    if not d.is_dir():
        return []
    tags = [p.name for p in d.iterdir() if p.is_dir() and _TAG.match(p.name) and is_complete(d, p.name)]
    return sorted(tags, key=step_of)


def find_resume(ckpt_dir: str | Path, log: Log = print) -> Optional[str]:
    """The tag to resume from: ``latest`` if complete, else the newest complete tag, else None."""
    d = Path(ckpt_dir)
    latest = d / LATEST
    if latest.is_file():
        tag = latest.read_text().strip()
        if is_complete(d, tag):
            return tag
        log(f"[checkpoint] WARNING: {latest} names {tag!r}, which is not complete; using the newest complete one")
    tags = complete_tags(d)
    return tags[-1] if tags else None


def rng_state() -> dict:
    """The RNG states as tensors and plain values (loadable with ``torch.load(weights_only=True)``)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": random.getstate(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    if isinstance(n, dict):
        np.random.set_state(
            (n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
        )
    else:  # a numpy tuple, from a (trusted) checkpoint of an older version
        np.random.set_state(n)
    random.setstate(state["python"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _torch_save_atomic(obj: Any, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def export_safetensors(state_dict: dict, path: str | Path, metadata: Optional[dict] = None) -> None:
    """One safetensors file (tmp + rename). Tied tensors are stored once; ``metadata['aliases']`` maps
    each dropped name to the stored one (``load_export`` restores them)."""
    from safetensors.torch import save_file

    stored: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    by_ptr: dict[tuple, str] = {}
    for name, t in state_dict.items():
        key = (t.data_ptr(), t.shape, t.dtype) if t.numel() else None
        if key is not None and key in by_ptr:
            aliases[name] = by_ptr[key]
            continue
        if key is not None:
            by_ptr[key] = name
        stored[name] = t.detach().cpu().contiguous().clone()
    meta = {k: (v if isinstance(v, str) else json.dumps(v)) for k, v in (metadata or {}).items()}
    meta["aliases"] = json.dumps(aliases)
    with atomic_path(path) as tmp:
        save_file(stored, str(tmp), metadata=meta)
        sort_header(tmp)


def sort_header(path: str | Path) -> None:
    """Rewrite a safetensors file's JSON header with sorted keys, in place: safetensors writes the
    metadata from a hash map whose order changes from process to process, so two identical exports
    differed in their bytes. The sorted header has the same length (compact JSON, the same content)."""
    with open(path, "r+b") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
        text = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
        if len(text) > n:
            raise ValueError(f"{path}: the sorted safetensors header is longer than the written one")
        f.seek(8)
        f.write(text + b" " * (n - len(text)))


def load_export(path: str | Path) -> tuple[dict, dict]:
    """(state_dict with aliases restored, metadata) of an ``export_safetensors`` file."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    sd = load_file(str(path))
    with safe_open(str(path), "pt") as f:
        meta = dict(f.metadata() or {})
    for name, target in json.loads(meta.get("aliases", "{}")).items():
        sd[name] = sd[target]
    return sd, meta


@dataclass(frozen=True)
class PartExport:
    """A part exported beside the PDM: ``file`` (a ``*.safetensors`` name) gets the trained module's tensors
    under ``prefix`` (stripped, e.g. "aux.NAME."; gathered like the PDM's weights, one ZeRO-3 gather for
    all), or, for a module kept outside the engine, ``state()`` (e.g. the learned order's policy), with
    ``metadata`` plus the checkpoint's ``step``."""

    file: str
    prefix: str = ""
    metadata: dict = field(default_factory=dict)
    state: Optional[Callable[[], dict]] = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if not self.file.endswith(".safetensors") or "/" in self.file or self.file.startswith(("model", ".")):
            raise ValueError(
                f"PartExport file must be a plain '*.safetensors' name not starting with 'model', got {self.file!r}"
            )


def write_export(
    folder: str | Path,
    weights: Optional[dict],
    ema_weights: Optional[dict],
    config_yaml: str,
    metadata: dict,
    parts: Optional[dict[str, tuple[dict, dict]]] = None,
) -> None:
    """``model.safetensors`` (+ ``model_ema.safetensors``), each ``parts`` file (``{file: (state_dict,
    metadata)}``, e.g. ``policy.safetensors``) and ``config.yaml`` into ``folder`` (rank 0)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if weights is not None:
        export_safetensors(weights, folder / "model.safetensors", metadata)
    if ema_weights is not None:
        export_safetensors(ema_weights, folder / "model_ema.safetensors", {**metadata, "ema": "true"})
    for name, (sd, meta) in (parts or {}).items():
        export_safetensors(sd, folder / name, meta)
    write_text_atomic(folder / "config.yaml", config_yaml)


def publish_export(tag_dir: str | Path, dest: str | Path) -> None:
    """Copy a complete checkpoint's export files (every ``*.safetensors`` + config.yaml) to ``dest`` (each
    by rename), with ``lineage.json`` (the checkpoint's step and lineage: what the weights were made from);
    a ``*.safetensors`` in ``dest`` that the checkpoint lacks (an earlier run's EMA or policy) is removed, so
    the export never mixes two runs."""
    src, dest = Path(tag_dir), Path(dest)
    if not (src / COMPLETE).is_file():
        raise FileNotFoundError(f"{src} is not a complete checkpoint")
    dest.mkdir(parents=True, exist_ok=True)
    names = sorted(p.name for p in src.glob("*.safetensors") if p.is_file())
    for stale in dest.glob("*.safetensors"):
        if stale.name not in names:
            stale.unlink()
    for name in names + ["config.yaml"]:
        if (src / name).is_file():
            with atomic_path(dest / name) as tmp:
                shutil.copyfile(src / name, tmp)
    write_json_atomic(dest / LINEAGE, read_json(src / COMPLETE, {}))  # what made it: step, lineage


def gather_exports(
    engine: Any, parts: Sequence[PartExport] = ()
) -> tuple[Optional[dict], Optional[dict], dict[str, dict]]:
    """(weights, EMA weights, {part file: its weights}) gathered on rank 0 (collective under ZeRO-3);
    (None, None, {}) on the other ranks."""
    from training.engine import MODEL_PREFIX

    full = engine.full_state_dicts((MODEL_PREFIX, *[p.prefix for p in parts if p.state is None]))
    weights = None if full is None else full[MODEL_PREFIX]
    ema = None
    if engine.ema is not None:
        ema = engine.ema.export(engine.model, weights, engine.rank)
    extra = {}
    for p in parts if full is not None else ():
        if p.state is not None:
            extra[p.file] = {k: v.detach().to("cpu", copy=True) for k, v in p.state().items()}
            continue
        if not full[p.prefix]:
            raise ValueError(f"export {p.file}: the trained module has no tensors under {p.prefix!r}")
        extra[p.file] = full[p.prefix]
    return weights, ema, extra


def save_checkpoint(
    engine: Any,
    ckpt_dir: str | Path,
    step: int,
    *,
    client_state: dict,
    rank_state: dict,
    config_yaml: str,
    metadata: dict,
    keep_last: int,
    log: Log = print,
    parts: Sequence[PartExport] = (),
    lineage: Optional[dict] = None,
) -> str:
    """Collective: every rank calls it. Returns the tag. See the module docstring for the order.
    ``parts``: modules exported beside the PDM (``PartExport``, e.g. the learned order's policy)."""
    d = Path(ckpt_dir)
    tag = tag_for(step)
    tag_dir = d / tag
    rank = engine.rank
    t0 = time.time()
    if rank == 0:
        d.mkdir(parents=True, exist_ok=True)
        if tag_dir.exists():  # debris of a save that crashed: never half-reuse it
            shutil.rmtree(tag_dir)
    engine.barrier()
    engine.save(str(d), tag, client_state)
    tag_dir.mkdir(parents=True, exist_ok=True)
    zero3 = engine.zero_stage == 3
    extras = {**rank_state, "rng": rng_state()}
    if engine.ema is not None and zero3:
        extras["ema"] = engine.ema.state_dict()
    _torch_save_atomic(extras, tag_dir / f"rank_{rank:05d}.pt")
    if engine.ema is not None and not zero3 and rank == 0:
        _torch_save_atomic(engine.ema.state_dict(), tag_dir / "ema.pt")
    weights, ema, extra = gather_exports(engine, parts)
    if rank == 0:
        write_export(
            tag_dir,
            weights,
            ema,
            config_yaml,
            {**metadata, "step": str(step)},
            {p.file: (extra[p.file], {**p.metadata, "step": str(step)}) for p in parts},
        )
    engine.barrier()
    if rank == 0:
        done = {"step": step, "world_size": engine.world_size, "time": time.time(), "lineage": lineage}
        write_json_atomic(tag_dir / COMPLETE, done)
        write_text_atomic(d / LATEST, tag)
        prune(d, keep_last)
        log(f"[checkpoint] step {step} -> {tag_dir} ({time.time() - t0:.1f}s)")
    engine.barrier()
    return tag


def remove_checkpoints(ckpt_dir: str | Path) -> None:
    """Delete every step folder of ``ckpt_dir`` and its ``latest`` pointer; its other files (a caller's own
    records) stay."""
    d = Path(ckpt_dir)
    for p in d.iterdir() if d.is_dir() else ():
        if p.is_dir() and _TAG.match(p.name):
            shutil.rmtree(p)
    (d / LATEST).unlink(missing_ok=True)


def prune(ckpt_dir: str | Path, keep_last: int) -> None:
    """Keep the ``keep_last`` newest complete checkpoints (always the one ``latest`` names); drop
    incomplete directories older than it."""
    d = Path(ckpt_dir)
    latest = (d / LATEST).read_text().strip() if (d / LATEST).is_file() else None
    tags = complete_tags(d)
    keep = set(tags[-keep_last:]) | ({latest} if latest else set())
    newest = step_of(latest) if latest else None
    for p in d.iterdir():
        if not p.is_dir() or not _TAG.match(p.name) or p.name in keep:
            continue
        if is_complete(d, p.name) or (newest is not None and step_of(p.name) < newest):
            shutil.rmtree(p, ignore_errors=True)


def load_checkpoint(engine: Any, ckpt_dir: str | Path, tag: str, trust: bool = False) -> tuple[int, dict, dict]:
    """Load engine state and this rank's extras; restores RNG and EMA. Returns (step, client_state, rank_state).
    Every file is read without unpickling Python objects unless ``trust`` (``training.safe_load``)."""
    d = Path(ckpt_dir)
    client_state = engine.load(str(d), tag, trust=trust)
    path = d / tag / f"rank_{engine.rank:05d}.pt"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing: the checkpoint was written by a different number of ranks "
            f"(resume with the same world size)"
        )
    extras = load_state(path, trust)
    set_rng_state(extras.pop("rng"))
    if engine.ema is not None:
        if engine.zero_stage == 3:
            engine.ema.load_state_dict(extras.pop("ema"))
        elif (d / tag / "ema.pt").is_file():
            engine.ema.load_state_dict(load_state(d / tag / "ema.pt", trust))
    return step_of(tag), client_state, extras


class ResumeRefused(RuntimeError):
    """``train.resume: auto`` found a checkpoint made from other data, model or optimiser settings."""


def checkpoint_lineage(ckpt_dir: str | Path, tag: str) -> Optional[dict]:
    """The lineage a complete checkpoint recorded (None for one written before lineages were recorded)."""
    done = read_json(Path(ckpt_dir) / tag / COMPLETE, {})
    return done.get("lineage") if isinstance(done, dict) else None


def lineage_changes(old: Optional[dict], new: dict, ignore: Iterable[str] = ()) -> list[str]:
    """What differs between two lineages, one ``part: key old -> new`` entry per changed value; a key one of
    them lacks counts as None there. ``ignore``: ``part.key`` names a lineage leaves out on purpose (found not
    to change the weights): one an older checkpoint recorded is not compared."""
    if old is None:
        return ["its lineage (written before checkpoints recorded one)"]
    ignore = set(ignore)
    out = []
    for part in [*new, *(p for p in old if p not in new)]:  # a part only the old lineage has counts too
        a, b = old.get(part), new.get(part)
        if a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            keys = sorted(k for k in set(a) | set(b) if k in b or f"{part}.{k}" not in ignore)
            out += [f"{part}.{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in keys if a.get(k) != b.get(k)]
        else:
            out.append(f"{part}: {a!r} -> {b!r}")
    return out


def choose_resume(
    ckpt_dir: str | Path,
    lineage: dict,
    policy: Literal["auto", "never", "force"],
    log: Log = print,
    ignore: Iterable[str] = (),
) -> tuple[Optional[str], list[str]]:
    """(the tag to resume from or None, the lineage changes of the newest complete checkpoint). Reads only.

    ``auto`` raises ``ResumeRefused`` naming the changes when there are any; ``never`` returns no tag (the
    caller moves the old checkpoints aside with ``move_aside``); ``force`` returns the tag and the changes."""
    tag = find_resume(ckpt_dir, log)
    if tag is None:
        return None, []
    changes = lineage_changes(checkpoint_lineage(ckpt_dir, tag), lineage, ignore)
    if policy == "never":
        return None, changes
    if changes and policy == "auto":
        shown = "; ".join(changes[:6]) + (f" (+{len(changes) - 6} more)" if len(changes) > 6 else "")
        raise ResumeRefused(
            f"{Path(ckpt_dir) / tag} was made from something else: {shown}. Set train.resume: never to train "
            f"from scratch (the old checkpoints are moved aside), or force to continue from it with the new settings"
        )
    return tag, changes


def move_aside(ckpt_dir: str | Path, log: Log = print) -> Optional[Path]:
    """Rename a checkpoint folder to ``checkpoints.replaced-TIME`` (kept for the user; nothing is deleted)."""
    d = Path(ckpt_dir)
    if not d.exists() or not any(d.iterdir()):
        return None
    stamp = f"{d.name}.replaced-{time.strftime('%Y%m%d-%H%M%S')}"
    aside, n = d.with_name(stamp), 1
    while aside.exists():  # moved aside within the same second before
        n += 1
        aside = d.with_name(f"{stamp}-{n}")
    os.replace(d, aside)
    log(f"[checkpoint] train.resume: never: the old checkpoints moved to {aside}")
    return aside
