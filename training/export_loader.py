"""Load an exported model (the ``train`` stage's ``RUN/train/export``) for sampling and evaluation.

    model, model_cfg, meta = load_exported_model(run_dir / "train" / "export", tokenizer=vq)

The export folder holds ``model.safetensors`` (and ``model_ema.safetensors`` with an EMA) plus the
resolved experiment ``config.yaml`` (``training.checkpoint.write_export``). The architecture comes from
that YAML's ``model`` section; PDM, ARModel or VQDiffusionTransformer is chosen by the file's ``kind``
metadata (else the YAML's ``train.mode``). Every failure names the file and what to do: missing files, a
model whose codebook size or token grid differs from the tokenizer's (both sizes named), a text width that
differs from the text encoder's, weights that do not fit the architecture.

A run trained with ``train.order: learned`` also exports its position policy (``policy.safetensors``,
``training.model.order_learner.PositionPolicy``; the architecture is in the file's ``policy_config``
metadata) for ``sample.order: learned``::

    policy, meta = load_exported_policy(export_dir, model_cfg=model_cfg, model_meta=model_meta)
    res = Learned(policy, model).sample(text, text_mask, sample_cfg, generator)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import torch
import yaml

from training.model import MODE_KINDS, MODEL_KINDS, build_model
from training.model.config import ModelConfig

WEIGHTS, EMA_WEIGHTS, CONFIG = "model.safetensors", "model_ema.safetensors", "config.yaml"
POLICY_WEIGHTS, POLICY_KIND = "policy.safetensors", "position_policy"
_HOW = (
    "run the train stage (`pt2i run CONFIG --stage train`), or point at a folder holding "
    f"{WEIGHTS} and {CONFIG} as written by training.checkpoint.write_export"
)


class ExportError(FileNotFoundError):
    """An exported model cannot be used; the message names the file and what to change."""


def read_export_config(export_dir: str | Path) -> tuple[ModelConfig, dict]:
    """(ModelConfig from the ``model`` section of ``config.yaml``, the whole YAML as a dict)."""
    from core.config import ConfigError, from_dict

    path = Path(export_dir) / CONFIG
    if not path.is_file():
        raise ExportError(f"{path}: the model config is missing beside the weights; {_HOW}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ExportError(f"{path}: not valid YAML: {exc}") from None
    section = raw.get("model") if isinstance(raw, dict) else None
    if not isinstance(section, dict):
        raise ExportError(f"{path}: no 'model' section (is this an experiment config written by the trainer?)")
    from training.model.config import PRESETS

    if section.get("preset") in PRESETS:
        section = {**PRESETS[section["preset"]], **section}
    try:
        return from_dict(ModelConfig, section, source=str(path), path="model"), raw
    except (ConfigError, ValueError, TypeError) as exc:
        raise ExportError(str(exc)) from None


def check_compatible(
    model_cfg: ModelConfig, tokenizer: Any = None, text_dim: Optional[int] = None, source: str = "the exported model"
) -> None:
    """Raise ValueError when the model cannot decode with ``tokenizer`` (codebook size, grid) or read
    states of width ``text_dim``. ``tokenizer`` needs ``codebook_size`` and ``grid_size`` (a VQModel)."""
    if tokenizer is not None:
        k = int(tokenizer.codebook_size)
        if k != model_cfg.codebook_size:
            raise ValueError(
                f"{source} was trained with codebook size {model_cfg.codebook_size} but the tokenizer "
                f"has {k} codes: its token ids mean nothing to this VQ-GAN. Sample with the tokenizer "
                f"the model was trained on (tokenizer.n_embed = {model_cfg.codebook_size}) or retrain"
            )
        grid = tuple(getattr(tokenizer, "grid_size", model_cfg.grid))
        if grid != model_cfg.grid:
            raise ValueError(
                f"{source} writes a {model_cfg.grid[0]}x{model_cfg.grid[1]} token grid but the "
                f"tokenizer's grid is {grid[0]}x{grid[1]} (tokenizer.image_size / its factor)"
            )
    if text_dim is not None and int(text_dim) != model_cfg.text_dim:
        raise ValueError(
            f"{source} reads text states of width {model_cfg.text_dim} but the text encoder gives "
            f"{text_dim}: use the text encoder it was trained with"
        )


def load_exported_model(
    export_dir: str | Path,
    *,
    tokenizer: Any = None,
    text_dim: Optional[int] = None,
    device: str | torch.device = "cpu",
    prefer_ema: bool = True,
) -> tuple[torch.nn.Module, ModelConfig, dict]:
    """(model in eval mode on ``device``, its ModelConfig, meta) from an export folder.

    ``meta``: the safetensors metadata plus ``kind`` ("pdm", "ar" or "vq_diffusion"), ``weights`` (the file loaded),
    ``ema`` (bool) and ``train_mode``. ``prefer_ema`` loads ``model_ema.safetensors`` when present.
    Compatibility with ``tokenizer`` / ``text_dim`` is checked before the weights are read."""
    from training.checkpoint import load_export

    folder = Path(export_dir)
    if not folder.is_dir():
        raise ExportError(f"no exported model at {folder}: {_HOW}")
    weights = folder / EMA_WEIGHTS if prefer_ema and (folder / EMA_WEIGHTS).is_file() else folder / WEIGHTS
    if not weights.is_file():
        raise ExportError(f"{weights}: the model weights are missing; {_HOW}")
    model_cfg, raw = read_export_config(folder)
    check_compatible(model_cfg, tokenizer, text_dim, source=str(weights))
    try:
        state, meta = load_export(weights)
    except Exception as exc:  # noqa: BLE001  (safetensors raises several types for a corrupt file)
        raise ExportError(f"{weights}: not a readable safetensors file ({type(exc).__name__}: {exc}); {_HOW}") from None
    train = raw.get("train") if isinstance(raw.get("train"), dict) else {}
    train_mode = train.get("mode", "progressive")
    kind = meta.get("kind") or MODE_KINDS.get(train_mode, "pdm")
    if kind not in MODEL_KINDS:
        raise ExportError(
            f"{weights}: unknown model kind {kind!r} in its metadata (expected one of {', '.join(MODEL_KINDS)})"
        )
    model = build_model(model_cfg, kind)
    _load_state(model, state, weights)
    model.to(device).eval()
    meta = {**meta, "kind": kind, "weights": str(weights), "ema": weights.name == EMA_WEIGHTS, "train_mode": train_mode}
    return model, model_cfg, meta


def require_policy(export_dir: str | Path) -> Path:
    """The path of the export's position policy; an ExportError naming it and what to do when it is missing
    (``sample.order: learned`` on a model trained with another ``train.order``). Reads no weights."""
    folder = Path(export_dir)
    path = folder / POLICY_WEIGHTS
    if path.is_file():
        return path
    order = None
    try:
        raw = yaml.safe_load((folder / CONFIG).read_text()) or {}
        order = (raw.get("train") or {}).get("order") if isinstance(raw, dict) else None
    except (OSError, yaml.YAMLError, AttributeError):
        pass
    if order is not None and order != "learned":
        why = (
            f"this model was trained with train.order={order} (see {folder / CONFIG}), which learns no policy; "
            f"retrain with train.order: learned or choose another sample.order"
        )
    else:
        why = (
            "the train stage did not export the policy (an export written before policies were exported, or "
            "files copied without it); rerun the train stage with train.order: learned, or choose another "
            "sample.order"
        )
    from training.model.sampling.config import ORDERS

    others = ", ".join(o for o in ORDERS if o != "learned")
    raise ExportError(
        f"{path} is missing: sample.order=learned generates with the position policy of a run "
        f"trained with train.order: learned, and {why} ({others})"
    )


def load_exported_policy(
    export_dir: str | Path,
    *,
    model_cfg: Optional[ModelConfig] = None,
    model_meta: Optional[dict] = None,
    device: str | torch.device = "cpu",
) -> tuple[torch.nn.Module, dict]:
    """(``PositionPolicy`` in eval mode on ``device``, its metadata) from an export folder's
    ``policy.safetensors`` (see ``require_policy`` for a missing file).

    With ``model_cfg`` the policy must read that model's hidden width and sequence length; with
    ``model_meta`` (``load_exported_model``'s) both files must come from the same checkpoint step.
    ``meta["policy_config"]`` is the decoded architecture; ``meta["order_learner"]`` the training section."""
    import json

    from training.checkpoint import load_export
    from training.model.order_learner.policy import PositionPolicy

    path = require_policy(export_dir)
    try:
        state, meta = load_export(path)
    except Exception as exc:  # noqa: BLE001
        raise ExportError(
            f"{path}: not a readable safetensors file ({type(exc).__name__}: {exc}); rerun the "
            f"train stage with train.order: learned"
        ) from None
    if meta.get("kind") != POLICY_KIND:
        raise ExportError(
            f"{path}: metadata kind is {meta.get('kind')!r}, expected {POLICY_KIND!r} (a position "
            f"policy written by the trainer with train.order: learned)"
        )
    try:
        spec = json.loads(meta["policy_config"])
        policy = PositionPolicy(**spec)
    except (KeyError, TypeError, ValueError) as exc:
        raise ExportError(f"{path}: unusable policy_config metadata ({type(exc).__name__}: {exc})") from None
    if model_cfg is not None and (spec["dim"], spec["seq_len"]) != (model_cfg.dim, model_cfg.seq_len):
        raise ExportError(
            f"{path}: the policy reads hidden states of width {spec['dim']} over {spec['seq_len']} "
            f"positions but the model has dim {model_cfg.dim} and {model_cfg.seq_len} positions: "
            f"the policy belongs to another model; rerun the train stage"
        )
    if (
        model_meta is not None
        and meta.get("step")
        and model_meta.get("step")
        and str(meta["step"]) != str(model_meta["step"])
    ):
        raise ExportError(
            f"{path} was written at step {meta['step']} but {model_meta.get('weights', WEIGHTS)} at "
            f"step {model_meta['step']}: the export folder mixes two checkpoints; rerun the train "
            f"stage (or copy the files of one checkpoint)"
        )
    _load_state(policy, state, path, what="the policy_config in its metadata")
    policy.to(device).eval().requires_grad_(False)
    for key in ("policy_config", "order_learner"):
        if key in meta:
            try:
                meta[key] = json.loads(meta[key])
            except ValueError:
                pass
    return policy, {**meta, "weights": str(path)}


def _load_state(model: torch.nn.Module, state: dict, path: Path, what: Optional[str] = None) -> None:
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [
        f"{k}: file {tuple(state[k].shape)} vs config {tuple(own[k].shape)}"
        for k in own
        if k in state and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or shapes:
        parts = []
        for label, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shapes)):
            if items:
                parts.append(f"{label} ({len(items)}): {', '.join(items[:5])}{' ...' if len(items) > 5 else ''}")
        raise ExportError(
            f"{path}: the weights do not fit the architecture of {what or path.parent / CONFIG}: " + "; ".join(parts)
        )
    model.load_state_dict(state, strict=True)
