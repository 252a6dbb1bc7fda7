"""A sample folder (``evaluation.sample_files``) and what its images depend on: the models of the run, the
prompts and the sampler settings. The ``sample`` stage and ``pt2i generate`` fill their folders through it:
the same checks of the export, the same record (``job.json``) and the same reset when that record changes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path

from core.config import identity_dict, to_dict
from core.files import write_text_atomic
from core.stage import StageError
from evaluation.sample_files import JOB, PROMPTS
from tokenization.text import WEIGHT_KEYS, TextEncoderConfig

# ``text_encoder`` keys that cannot change the samples: the encoder's files and the tiny T5's recipe reach them
# through the text stage's fingerprint (an input), the worker puts the encoder on its own device, and the
# truncation policy only warns or fails. Every other key (max_length, dtype, kind, ...) changes the prompts' states.
_TEXT_KEYS_NOT_IN_SAMPLES = WEIGHT_KEYS | {"device", "truncation"}
TEXT_SECTIONS = tuple(
    f"text_encoder.{f.name}" for f in dataclasses.fields(TextEncoderConfig) if f.name not in _TEXT_KEYS_NOT_IN_SAMPLES
)
FOLDERS = ("images", "tokens", "steps")


def model_stages(cfg) -> tuple[str, ...]:
    """The stages whose models the samples come from: the generator's, and the SR model's when ``sr.enabled``."""
    return ("train", "tokenizer", "text") + (("superres",) if cfg.sr.enabled else ())


def require_export(export: Path, order: str) -> None:
    """A :class:`StageError` naming what is missing from the train stage's ``export`` folder (the weights, their
    config, and the position policy when ``sample.order`` is ``learned``)."""
    for name in ("model.safetensors", "config.yaml"):
        if not (export / name).is_file():
            raise StageError(f"{export / name} is missing: rerun the train stage (`pt2i run CONFIG --stage train`)")
    if order == "learned":
        from training.export_loader import ExportError, require_policy

        try:
            require_policy(export)
        except ExportError as exc:
            raise StageError(str(exc)) from None


def prompts_body(records: list[dict]) -> str:
    """``prompts.jsonl``'s text: one JSON record per line."""
    return "".join(json.dumps(r) + "\n" for r in records)


def fingerprint(cfg, inputs: dict, body: str) -> dict:
    """What a folder's images depend on: the sampler settings, EMA or not, how the prompts are encoded, the
    models' stage fingerprints (``inputs``) and the prompts (``body``, :func:`prompts_body`)."""
    text = {k: v for k, v in to_dict(cfg.text_encoder).items() if f"text_encoder.{k}" in TEXT_SECTIONS}
    return {
        "sample": identity_dict(cfg.sample),  # a new key at its neutral default changes no sample
        "use_ema": cfg.eval.use_ema,
        "text_encoder": text,  # max_length, dtype, ...: how the prompts are encoded
        "inputs": inputs,
        "prompts_sha256": hashlib.sha256(body.encode()).hexdigest(),
    }


def prepare(out: Path, record: dict, body: str, log: Callable[[str], None], tag: str) -> None:
    """Make ``out`` a folder for ``record`` (:func:`fingerprint`) and the prompts ``body``: chunks sampled under
    another record are removed first (``tag`` starts the log line), ``job.json`` and ``prompts.jsonl`` written."""
    path = out / JOB
    old = json.loads(path.read_text()) if path.is_file() else None
    if old != record:
        stale = [d for d in FOLDERS if (out / d).exists()]
        if stale and old is not None:
            log(f"[{tag}] model, prompts or sampler changed: removing old {', '.join(stale)}")
        for d in stale:
            shutil.rmtree(out / d)
        (out / "tokens.npy").unlink(missing_ok=True)
        write_text_atomic(path, json.dumps(record, indent=2))
    for d in FOLDERS:
        (out / d).mkdir(exist_ok=True)
    if not (out / PROMPTS).is_file() or (out / PROMPTS).read_text() != body:
        write_text_atomic(out / PROMPTS, body)
