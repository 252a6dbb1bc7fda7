"""Where stages come from: each module here registers its stages with ``@stage`` on import."""

from __future__ import annotations

import importlib

STAGE_MODULES = (
    "tokenization.synthetic_stage",
    "tokenization.text_stage",
    "tokenization.download_stage",
    "tokenization.tokenizer_stage",
    "tokenization.tokenize_stage",
    "training.train_stage",
    "training.superres_stage",
    "evaluation.sample_stage",
    "evaluation.evaluate_stage",
)

_loaded = False


def load_stage_modules() -> None:
    global _loaded
    if _loaded:
        return
    for name in STAGE_MODULES:
        importlib.import_module(name)
    _loaded = True
