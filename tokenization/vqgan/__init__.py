"""VQ-GAN image tokenizer, compatible with taming-transformers checkpoints.

Public API:
    TokenizerConfig, taming_preset          -- config (``tokenizer:`` section)
    VQModel                                 -- encode(images) -> (ids, quant_error); decode(ids) -> images
    load_vqgan, convert_checkpoint, CheckpointError, save_tokenizer, load_tokenizer_dir
    train_tokenizer                         -- train a small VQ tokenizer on toy images (Eq. 1-2)

The pipeline stage lives in ``tokenization.tokenizer_stage`` (imported by the stage registry, not here).
"""

from tokenization.vqgan.checkpoint import (
    CheckpointError,
    convert_checkpoint,
    load_tokenizer_dir,
    load_vqgan,
    save_tokenizer,
)
from tokenization.vqgan.config import TokenizerConfig, taming_preset
from tokenization.vqgan.model import VQModel
from tokenization.vqgan.train import train_tokenizer

__all__ = [
    "TokenizerConfig",
    "taming_preset",
    "VQModel",
    "load_vqgan",
    "convert_checkpoint",
    "CheckpointError",
    "save_tokenizer",
    "load_tokenizer_dir",
    "train_tokenizer",
]
