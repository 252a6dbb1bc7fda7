"""Loading and saving VQ-GAN weights.

* ``load_vqgan(cfg)``: builds a ``VQModel`` from ``cfg`` (architecture optionally read from taming's
  model yaml, ``cfg.yaml_path``) and loads ``cfg.ckpt_path``: a Lightning ``.ckpt`` (torch file with a
  ``state_dict`` key; ``loss.*`` keys, the discriminator and LPIPS, are ignored) or a ``.safetensors``.
  ``.ckpt`` files are read with ``weights_only=True``; the published taming files also pickle Lightning
  objects, which that rejects: set ``tokenizer.trust_checkpoint: true`` (full unpickling; classes whose
  module is not installed, e.g. pytorch_lightning's, become inert stubs) or convert once with
  ``convert_checkpoint``.
* ``convert_checkpoint(src, dst)``: ``.ckpt`` -> ``.safetensors`` (model tensors only).
  Also ``python -m tokenization.vqgan.checkpoint SRC.ckpt DST.safetensors``.
* ``save_tokenizer`` / ``load_tokenizer_dir``: the ``vqgan.safetensors`` + ``tokenizer.yaml`` pair
  written by ``train_tokenizer``.

Every failure raises ``CheckpointError`` with a message that names the file and what to change.
"""

from __future__ import annotations

import os
import pickle
import sys
import types
import zipfile
from collections.abc import Mapping
from dataclasses import asdict, fields, replace
from pathlib import Path

import torch
import yaml

from core.files import atomic_path, write_text_atomic
from tokenization.vqgan.config import TokenizerConfig
from tokenization.vqgan.model import VQModel

IGNORED_PREFIXES = ("loss.",)  # discriminator, LPIPS and logvar of taming's training loss
WRAPPER_PREFIXES = ("first_stage_model.",)  # taming transformer checkpoints embed the VQ-GAN here
WEIGHTS_FILE = "vqgan.safetensors"
CONFIG_FILE = "tokenizer.yaml"
_SHOW = 10

DOWNLOAD_HINT = (
    "The published taming-transformers VQ-GANs are linked from "
    "https://github.com/CompVis/taming-transformers#overview-of-pretrained-models "
    "(ImageNet f16 16384, used by the PDM paper: https://heibox.uni-heidelberg.de/d/a7530b09fed84f80a887/ ; "
    "Gumbel f8 8192: https://heibox.uni-heidelberg.de/d/2e5662443a6b4307b470/). "
    "Download on a machine with internet and set tokenizer.ckpt_path (checkpoints/last.ckpt) and "
    "tokenizer.yaml_path (configs/model.yaml)."
)


class CheckpointError(Exception):
    """A VQ-GAN checkpoint or model yaml could not be used; the message says why and what to change."""


# ----------------------------------------------------------------------------- taming yaml


def read_taming_yaml(path: str | os.PathLike) -> dict:
    """Architecture fields of ``TokenizerConfig`` from taming's model yaml (``model.params.ddconfig`` ...)."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"tokenizer.yaml_path: file not found: {p}. {DOWNLOAD_HINT}")
    try:
        doc = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise CheckpointError(f"tokenizer.yaml_path: {p} is not valid YAML: {e}") from e
    node = doc.get("model", doc) if isinstance(doc, dict) else {}
    target = str(node.get("target", ""))
    params = node.get("params", node)
    dd = params.get("ddconfig") if isinstance(params, dict) else None
    if not isinstance(dd, dict):
        raise CheckpointError(f"{p}: no model.params.ddconfig section (is this taming's model yaml?)")
    if dd.get("double_z", False):
        raise CheckpointError(f"{p}: ddconfig.double_z is true; a VQ-GAN uses double_z: false")
    out: dict = {"kind": "gumbel" if "gumbel" in target.lower() else "vq"}
    for key in ("embed_dim", "n_embed"):
        if key in params:
            out[key] = int(params[key])
    for key in ("resolution", "in_channels", "out_ch", "ch", "num_res_blocks", "z_channels"):
        if key in dd:
            out[key] = int(dd[key])
    for key in ("ch_mult", "attn_resolutions"):
        if key in dd:
            out[key] = [int(v) for v in dd[key]]
    if "dropout" in dd:
        out["dropout"] = float(dd["dropout"])
    return out


def resolve_config(cfg: TokenizerConfig) -> TokenizerConfig:
    """``cfg`` with the architecture fields replaced by those of ``cfg.yaml_path`` (if set)."""
    if not cfg.yaml_path:
        return cfg
    try:
        return replace(cfg, **read_taming_yaml(cfg.yaml_path))
    except ValueError as e:
        raise CheckpointError(f"{cfg.yaml_path}: unusable architecture: {e}") from e


# ----------------------------------------------------------------------------- reading tensors


def _stub_class(module: str, name: str) -> type:
    def _setstate(self, state):
        self.__dict__["_state"] = state

    return type(
        name,
        (),
        {
            "__module__": module,
            "__new__": lambda cls, *a, **k: object.__new__(cls),
            "__init__": lambda self, *a, **k: None,
            "__setstate__": _setstate,
            "__call__": lambda self, *a, **k: None,
        },
    )


class _LenientUnpickler(pickle.Unpickler):
    """Unpickler that replaces classes from modules that are not installed by inert stubs."""

    def find_class(self, module, name):
        try:
            return super().find_class(module, name)
        except (ImportError, AttributeError):
            return _stub_class(module, name)


_lenient_pickle = types.ModuleType("_vqgan_lenient_pickle")
_lenient_pickle.Unpickler = _LenientUnpickler
_lenient_pickle.load = pickle.load
_lenient_pickle.__dict__.update({k: getattr(pickle, k) for k in ("UnpicklingError", "HIGHEST_PROTOCOL")})


def _torch_load(path: Path, trust: bool) -> object:
    if not zipfile.is_zipfile(path):
        with open(path, "rb") as f:
            if f.read(1) != b"\x80":  # neither torch's zip format nor a (legacy) pickle
                raise CheckpointError(f"{path}: could not read checkpoint: not a torch or safetensors file")
    if trust:
        return torch.load(path, map_location="cpu", weights_only=False, pickle_module=_lenient_pickle)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"{path}: torch.load(weights_only=True) refused this file (it pickles Python objects, e.g. "
            f"Lightning callbacks, as the published taming checkpoints do). If you trust its source, set "
            f"tokenizer.trust_checkpoint: true, or convert it once to safetensors with "
            f"`python -m tokenization.vqgan.checkpoint {path} {path.with_suffix('.safetensors')}` and point "
            f"tokenizer.ckpt_path at the .safetensors file. (torch said: {str(e).splitlines()[0]})"
        ) from e


def read_state_dict(path: str | os.PathLike, trust: bool = False) -> dict[str, torch.Tensor]:
    """All tensors of a ``.safetensors`` file or of a torch ``.ckpt`` (its ``state_dict`` if present)."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"VQ-GAN checkpoint not found: {p}. {DOWNLOAD_HINT}")
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(p), device="cpu")
        obj = _torch_load(p, trust)
    except CheckpointError:
        raise
    except Exception as e:  # corrupt / truncated / not a torch file
        raise CheckpointError(f"{p}: could not read checkpoint: {type(e).__name__}: {e}") from e
    sd = obj.get("state_dict", obj) if isinstance(obj, Mapping) else None
    if not isinstance(sd, Mapping):
        raise CheckpointError(f"{p}: expected a dict with a 'state_dict' of tensors, got {type(obj).__name__}")
    return {k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}


# ----------------------------------------------------------------------------- matching keys

_SHAPE_FIELDS = [
    ("quantize.embedding.weight", "n_embed (rows) / embed_dim (columns)"),
    ("quantize.embed.weight", "n_embed (rows) / embed_dim (columns)"),
    ("quantize.proj.", "n_embed / embed_dim"),
    ("post_quant_conv.", "z_channels / embed_dim"),
    ("quant_conv.", "embed_dim / z_channels"),
    ("encoder.conv_in.", "ch / in_channels"),
    ("encoder.conv_out.", "z_channels"),
    ("decoder.conv_in.", "z_channels / ch * ch_mult[-1]"),
    ("decoder.conv_out.", "out_ch"),
]


def _field_hint(key: str) -> str:
    for prefix, hint in _SHAPE_FIELDS:
        if key.startswith(prefix):
            return hint
    return "ch / ch_mult"


def _listing(label: str, keys: list[str]) -> str:
    more = f", ... ({len(keys) - _SHOW} more)" if len(keys) > _SHOW else ""
    return f"{len(keys)} {label} keys: {', '.join(keys[:_SHOW])}{more}"


def _strip_wrapper(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    if any(k.startswith(("encoder.", "decoder.")) for k in sd):
        return sd
    for prefix in WRAPPER_PREFIXES:
        if any(k.startswith(prefix + "encoder.") for k in sd):
            return {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}
    return sd


def match_state_dict(model: VQModel, sd: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """``sd`` restricted to the model's keys; raises ``CheckpointError`` on missing/unexpected keys or shapes."""
    sd = {k: v for k, v in _strip_wrapper(sd).items() if not k.startswith(IGNORED_PREFIXES)}
    expected = model.state_dict()
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    if missing or unexpected:
        hints = []
        if "quantize.embed.weight" in unexpected and model.cfg.kind == "vq":
            hints.append("the checkpoint is a Gumbel VQ-GAN: set tokenizer.kind: gumbel")
        if "quantize.embedding.weight" in unexpected and model.cfg.kind == "gumbel":
            hints.append("the checkpoint is a plain VQ-GAN: set tokenizer.kind: vq")
        hints.append(
            "check tokenizer.ch_mult / num_res_blocks / attn_resolutions, or set tokenizer.yaml_path "
            "to the checkpoint's taming model yaml"
        )
        raise CheckpointError(
            f"{source}: state dict does not match the configured VQ-GAN ({model.cfg.kind}). "
            f"{_listing('missing', missing)}. {_listing('unexpected', unexpected)}. "
            f"Ignored prefixes: {', '.join(IGNORED_PREFIXES)}. Hint: {'; '.join(hints)}."
        )
    bad = [k for k in expected if tuple(sd[k].shape) != tuple(expected[k].shape)]
    if bad:
        lines = [
            f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(expected[k].shape)} "
            f"(config field: tokenizer.{_field_hint(k)})"
            for k in bad[:_SHOW]
        ]
        raise CheckpointError(
            f"{source}: {len(bad)} tensor shape mismatches: "
            + "; ".join(lines)
            + ". Change those tokenizer fields to match the checkpoint, or set tokenizer.yaml_path."
        )
    return sd


# ----------------------------------------------------------------------------- public API


def load_vqgan(cfg: TokenizerConfig) -> VQModel:
    """A ``VQModel`` built from ``cfg`` (+ ``cfg.yaml_path``) with weights from ``cfg.ckpt_path``, in eval mode."""
    if not cfg.ckpt_path:
        raise CheckpointError("tokenizer.ckpt_path is not set. " + DOWNLOAD_HINT)
    cfg = resolve_config(cfg)
    model = VQModel(cfg)
    sd = read_state_dict(cfg.ckpt_path, trust=cfg.trust_checkpoint)
    model.load_state_dict(match_state_dict(model, sd, str(cfg.ckpt_path)), strict=True)
    return model.eval()


def convert_checkpoint(src: str | os.PathLike, dst: str | os.PathLike) -> int:
    """Convert a taming ``.ckpt`` into a ``.safetensors`` with the model tensors only (``loss.*`` dropped).

    The source is unpickled fully (it is assumed to be a file you trust, e.g. a published taming
    checkpoint); classes of modules that are not installed are stubbed. Returns the number of tensors.
    """
    from safetensors.torch import save_file

    sd = _strip_wrapper(read_state_dict(src, trust=True))
    sd = {k: v.contiguous() for k, v in sd.items() if not k.startswith(IGNORED_PREFIXES)}
    with atomic_path(dst) as tmp:
        save_file(sd, str(tmp))
    return len(sd)


def config_from_dict(d: Mapping, source: str = "<dict>") -> TokenizerConfig:
    """``TokenizerConfig(**d)`` with unknown keys reported."""
    names = {f.name for f in fields(TokenizerConfig)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise CheckpointError(f"{source}: unknown tokenizer fields {unknown}")
    try:
        return TokenizerConfig(**d)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{source}: {e}") from e


def save_tokenizer(model: VQModel, cfg: TokenizerConfig, out_dir: str | os.PathLike) -> Path:
    """Write ``out_dir/vqgan.safetensors`` and ``out_dir/tokenizer.yaml`` (the config, ``ckpt_path``
    pointing at the weights) atomically; returns the yaml path."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    weights = out / WEIGHTS_FILE
    with atomic_path(weights) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(tmp))
    doc = asdict(replace(cfg, ckpt_path=str(weights.resolve()), yaml_path=None, trust_checkpoint=False))
    write_text_atomic(out / CONFIG_FILE, yaml.safe_dump(doc, sort_keys=False))
    return out / CONFIG_FILE


def load_tokenizer_dir(path: str | os.PathLike) -> VQModel:
    """Load a tokenizer saved by ``save_tokenizer`` / ``train_tokenizer`` from its folder (or its yaml).

    The weights are taken from the folder itself, so the folder may have been moved. They are safetensors
    (``save_tokenizer`` converts any checkpoint): the folder's own yaml cannot ask for a pickle to be trusted."""
    p = Path(path)
    ypath = p / CONFIG_FILE if p.is_dir() else p
    if not ypath.is_file():
        raise CheckpointError(f"tokenizer config not found: {ypath} (written by the tokenizer stage)")
    cfg = replace(config_from_dict(yaml.safe_load(ypath.read_text()) or {}, str(ypath)), trust_checkpoint=False)
    local = ypath.parent / WEIGHTS_FILE
    if local.is_file():
        cfg = replace(cfg, ckpt_path=str(local))
    return load_vqgan(cfg)


def _main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m tokenization.vqgan.checkpoint SRC.ckpt DST.safetensors", file=sys.stderr)
        return 2
    n = convert_checkpoint(argv[0], argv[1])
    print(f"wrote {n} tensors to {argv[1]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))
