"""VQ-GAN image tokenizer, compatible with taming-transformers checkpoints.

Public API:
    TokenizerConfig, taming_preset          -- config (``tokenizer:`` section)
    VQModel                                 -- encode(images) -> (ids, quant_error); decode(ids) -> images
    load_vqgan, convert_checkpoint, CheckpointError, save_tokenizer, load_tokenizer_dir
    train_tokenizer                         -- train a small VQ tokenizer on toy images (Eq. 1-2)

The pipeline stage lives in ``tokenization.tokenizer_stage`` (imported by the stage registry, not here).
"""

import importlib

# name -> its module; imported when first used, so that ``python -m tokenization.vqgan.checkpoint`` (the
# converter) runs without the package having imported that module first
_EXPORTS = {
    "TokenizerConfig": "config",
    "taming_preset": "config",
    "VQModel": "model",
    "load_vqgan": "checkpoint",
    "convert_checkpoint": "checkpoint",
    "CheckpointError": "checkpoint",
    "save_tokenizer": "checkpoint",
    "load_tokenizer_dir": "checkpoint",
    "train_tokenizer": "train",
}


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)


__all__ = list(_EXPORTS)
