"""An open_clip model from a LOCAL checkpoint, as normalised image and text embeddings.

``open_clip.create_model_and_transforms(name, pretrained=<local file>)``: ``name`` is a built-in
architecture (``ViT-B-32``), one registered with ``open_clip.add_model_config``, or
``local-dir:/folder`` (open_clip_config.json + weights; the checkpoint argument is then unused).
Nothing is downloaded; models whose tokenizer lives on the HF hub (``hf_tokenizer_name``) need it cached.

:class:`ClipEncoder` loads lazily and pickles without its weights, so it can be shipped to Ray tasks or
actors and loaded there (each worker reads the checkpoint itself).
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from core.files import sha256_of


def _check_source(model_name: str, checkpoint: str | Path | None) -> None:
    if model_name.startswith("hf-hub:"):
        raise ValueError(
            f"clip model {model_name!r}: hub models cannot be downloaded here; "
            f"use a built-in name with eval.clip_checkpoint, or 'local-dir:/folder'"
        )
    if model_name.startswith("local-dir:"):
        return
    if checkpoint is None:
        raise FileNotFoundError(
            f"eval.clip_checkpoint is not set: CLIP score and retrieval need a local open_clip checkpoint "
            f"for {model_name!r} (e.g. open_clip_pytorch_model.bin of ViT-B-32/laion2b_s34b_b79k), "
            f"downloaded on a machine with internet"
        )
    if not Path(checkpoint).expanduser().is_file():
        raise FileNotFoundError(f"CLIP checkpoint not found: {checkpoint} (eval.clip_checkpoint, model {model_name!r})")


def load_clip(model_name: str, checkpoint: str | Path | None, device: str | torch.device = "cpu"):
    """``(model, preprocess, tokenizer)`` in eval mode; clear errors for missing or hub-only weights."""
    import open_clip

    _check_source(model_name, checkpoint)
    pretrained = None if model_name.startswith("local-dir:") else str(Path(checkpoint).expanduser())
    model, _, preprocess = open_clip.create_model_and_transforms(model_name, pretrained=pretrained, device=device)
    model.eval()
    return model, preprocess, open_clip.get_tokenizer(model_name)


def _ensure_registered(name: str, cfg: dict | None) -> None:
    """Register ``cfg`` under ``name`` with open_clip if this process (e.g. a Ray worker) lacks it."""
    import json
    import tempfile

    import open_clip

    if cfg is None or open_clip.get_model_config(name) is not None:
        return
    # open_clip reads the file when it is registered and keeps the architecture; the folder is removed at once
    # (registering the folder, not the file, lets a later rescan skip it once it is gone)
    with tempfile.TemporaryDirectory(prefix="open_clip_cfg_") as tmp:
        (Path(tmp) / f"{name}.json").write_text(json.dumps(cfg))
        open_clip.add_model_config(Path(tmp))


def _folder_sha256(folder: Path) -> str:
    """sha256 of the files open_clip can read in a ``local-dir:`` folder: its top-level files by name and bytes,
    hidden ones (a hub download's ``.cache``, lock files) left out."""
    h = hashlib.sha256()
    for f in sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")):
        h.update(f"{f.name}\0{sha256_of(f)}\0".encode())
    return h.hexdigest()


class ClipEncoder:
    """L2-normalised ``float32`` CLIP embeddings of images (uint8 arrays or PIL) and of texts."""

    def __init__(
        self,
        model_name: str,
        checkpoint: str | Path | None,
        device: str | None = None,
        batch_size: int = 64,
        model_cfg: dict | None = None,
    ):
        _check_source(model_name, checkpoint)  # fail at construction, before any data is read
        self.model_name, self.checkpoint, self.batch_size = model_name, checkpoint, batch_size
        # an architecture registered in this process (open_clip.add_model_config) travels with the encoder
        import open_clip

        self.model_cfg = model_cfg or (
            None if model_name.startswith("local-dir:") else open_clip.get_model_config(model_name)
        )
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self._loaded = None

    def __getstate__(self):
        return {**self.__dict__, "_loaded": None}

    @functools.cached_property
    def protocol(self) -> dict:
        ck = self.checkpoint
        if self.model_name.startswith("local-dir:"):  # the folder (config and weights) is the model
            folder = Path(self.model_name.removeprefix("local-dir:")).expanduser()
            sha = _folder_sha256(folder) if folder.is_dir() else None
        else:
            sha = sha256_of(Path(ck).expanduser()) if ck and Path(ck).expanduser().is_file() else None
        return {"clip_model": self.model_name, "clip_checkpoint": str(ck), "clip_checkpoint_sha256": sha}

    def _get(self):
        if self._loaded is None:
            _ensure_registered(self.model_name, self.model_cfg)
            self._loaded = load_clip(self.model_name, self.checkpoint, self.device)
        return self._loaded

    @torch.no_grad()
    def images(self, images: Sequence[np.ndarray | Image.Image] | np.ndarray) -> np.ndarray:
        model, preprocess, _ = self._get()
        out = []
        for start in range(0, len(images), self.batch_size):
            chunk = images[start : start + self.batch_size]
            pil = [x if isinstance(x, Image.Image) else Image.fromarray(np.asarray(x)) for x in chunk]
            x = torch.stack([preprocess(p.convert("RGB")) for p in pil]).to(self.device)
            out.append(torch.nn.functional.normalize(model.encode_image(x).float(), dim=-1).cpu())
        return torch.cat(out).numpy()

    @torch.no_grad()
    def texts(self, texts: Sequence[str]) -> np.ndarray:
        model, _, tokenizer = self._get()
        out = []
        for start in range(0, len(texts), self.batch_size):
            tokens = tokenizer(list(texts[start : start + self.batch_size])).to(self.device)
            out.append(torch.nn.functional.normalize(model.encode_text(tokens).float(), dim=-1).cpu())
        return torch.cat(out).numpy()
