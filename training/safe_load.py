"""Loading checkpoint files without unpickling arbitrary Python objects (``train.trust_checkpoint``).

A torch file is a pickle: loading it fully can run any code its writer put in it. The pipeline's own files
(``rank_NNNNN.pt``, ``ema.pt``, ``engine_state.pt``) hold only tensors and plain values, so they are read with
``torch.load(weights_only=True)``; a file that needs more is refused, naming ``train.trust_checkpoint``
(``true`` loads it fully: only for files from a source you trust, e.g. a checkpoint written before RNG
states were stored as tensors).

DeepSpeed reads its own files (``mp_rank_*``, ``*zero_pp_rank_*``) with full unpickling, and they pickle a few
of DeepSpeed's classes (its loss scaler, the ZeRO stage enum, fragment addresses). ``check_deepspeed_files``
first reads each of them with ``weights_only=True`` and only those classes allowed (memory-mapped: the
tensors are not read); a file that needs anything else is refused the same way before DeepSpeed opens it.
"""

from __future__ import annotations

import importlib
import pickle
from pathlib import Path
from typing import Any

import torch

TRUST_KEY = "train.trust_checkpoint"
OWN_FILES = ("rank_*.pt", "ema.pt", "engine_state.pt")
DEEPSPEED_GLOBALS = (
    "deepspeed.runtime.fp16.loss_scaler.LossScaler",
    "deepspeed.runtime.fp16.loss_scaler.DynamicLossScaler",
    "deepspeed.runtime.zero.config.ZeroStageEnum",
    "deepspeed.utils.tensor_fragment.fragment_address",
)


class UntrustedCheckpoint(RuntimeError):
    """A checkpoint file that would need full unpickling, refused; the message names the file and the key."""


def _refusal(path: Path, exc: Exception) -> UntrustedCheckpoint:
    why = next((line.strip() for line in str(exc).splitlines() if "GLOBAL" in line), str(exc).splitlines()[0])
    return UntrustedCheckpoint(
        f"{path}: torch.load(weights_only=True) refused it: it pickles Python objects ({why}). Checkpoints this "
        f"pipeline writes hold only tensors and plain values; if you trust where this file comes from (e.g. a "
        f"checkpoint written by an older version), set {TRUST_KEY}: true to unpickle it fully"
    )


def load_state(path: str | Path, trust: bool = False, map_location: Any = "cpu") -> Any:
    """``torch.load`` of one of the pipeline's own files: weights only, unless ``trust``."""
    path = Path(path)
    if trust:
        return torch.load(path, map_location=map_location, weights_only=False)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise _refusal(path, exc) from exc


def deepspeed_globals() -> list:
    out = []
    for name in DEEPSPEED_GLOBALS:
        module, _, attr = name.rpartition(".")
        try:
            out.append(getattr(importlib.import_module(module), attr))
        except (ImportError, AttributeError):
            continue  # another DeepSpeed version: a file that needs it is refused, naming it
    return out


def check_deepspeed_files(tag_dir: str | Path, trust: bool = False) -> list[Path]:
    """Refuse (``UntrustedCheckpoint``) a DeepSpeed file in ``tag_dir`` that pickles anything but tensors,
    plain values and ``DEEPSPEED_GLOBALS``; returns the files checked (none with ``trust``)."""
    if trust:
        return []
    tag_dir = Path(tag_dir)
    own = {p for pattern in OWN_FILES for p in tag_dir.glob(pattern)}
    files = sorted(p for p in tag_dir.glob("*.pt") if p not in own)
    allowed = deepspeed_globals()
    for path in files:
        try:
            with torch.serialization.safe_globals(allowed):
                torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except pickle.UnpicklingError as exc:
            raise _refusal(path, exc) from exc
    return files
