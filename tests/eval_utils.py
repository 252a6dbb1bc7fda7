"""A tiny run directory built by hand for the sample / evaluate / speed tests (no training).

``make_run(tmp_path, overrides)`` writes, under ``tmp_path/run``: a random tiny PDM export
(``training.checkpoint.write_export``), a random toy VQ tokenizer (``save_tokenizer``), a tiny T5
(``build_tiny_t5``), the synthetic ``eval`` (and small ``train``) split (``write_dataset``), and fake
manifests for those four stages and for the download stage (listing no shards). Returns the loaded
experiment config.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from core.config import to_dict, to_yaml

N_EVAL = 10
BASE = [
    "data.synthetic.n_eval=10",
    "data.synthetic.n_train=6",
    "model.dim=32",
    "model.layers=1",
    "model.heads=2",
    "model.ffn_dim=64",
    "text_encoder.dim=32",
    "model.text_dim=32",
    "text_encoder.tiny_layers=1",
    "text_encoder.tiny_heads=2",
    "tokenizer.ch=32",
    "tokenizer.z_channels=16",
    "tokenizer.embed_dim=8",
    "sample.steps=4",
    "sample.batch_size=4",
    "sample.temperature=1.0",
    "eval.metrics=[attributes]",
    "eval.speed_steps=[8,16]",
    "eval.speed_images=2",
    "eval.speed_warmup=0",
    "cluster.launcher=local",
]


from tests.trainer_utils import one_thread  # noqa: E402,F401  (the shared autouse fixture)


def manifest(folder: Path, name: str, **extra) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "manifest.json").write_text(json.dumps({"stage": name, "fingerprint": f"{name}-fp", **extra}))


def load(run: Path, overrides: list[str] | None = None):
    from pipeline.experiment import load_config

    return load_config(
        "configs/tiny.yaml",
        BASE + [f"run_dir={run}"] + list(overrides or []),
        base_dir=Path(__file__).resolve().parents[1],
    )


def write_model_export(folder: Path, cfg, kind: str = "pdm", seed: int = 0) -> None:
    """A random PDM (or ARModel, or VQDiffusionTransformer) of ``cfg.model`` exported like the trainer does."""
    from training.checkpoint import write_export
    from training.model import build_model

    torch.manual_seed(seed)
    model = build_model(cfg.model, kind)
    write_export(
        folder,
        model.state_dict(),
        None,
        to_yaml(cfg),
        {
            "model_config": json.dumps(to_dict(cfg.model)),
            "kind": kind,
            "mode": {"ar": "autoregressive", "vq_diffusion": "vq_diffusion"}.get(kind, "progressive"),
        },
    )


def make_run(tmp_path: Path, overrides: list[str] | None = None):
    from tokenization.synthetic import load_images, write_dataset
    from tokenization.text import build_tiny_t5, tiny_t5_kwargs
    from tokenization.vqgan import VQModel, save_tokenizer

    run = Path(tmp_path) / "run"
    cfg = load(run, overrides)
    syn = cfg.data.synthetic
    write_dataset(run / "synthetic" / "eval", syn.n_eval, syn.seed + 1, syn.image_size)
    write_dataset(run / "synthetic" / "train", syn.n_train, syn.seed, syn.image_size)
    manifest(run / "synthetic", "synthetic")
    manifest(run / "download", "download", splits={})  # no image shards: retrieval uses the synthetic split
    torch.manual_seed(0)
    save_tokenizer(VQModel(cfg.tokenizer).eval(), cfg.tokenizer, run / "tokenizer")
    manifest(run / "tokenizer", "tokenizer")
    _, captions = load_images(run / "synthetic" / "eval")
    build_tiny_t5(captions + ["a"], run / "text" / "encoder", **tiny_t5_kwargs(cfg.text_encoder))
    manifest(run / "text", "text")
    write_model_export(run / "train" / "export", cfg)
    manifest(run / "train", "train")
    return cfg


def stage(name: str):
    from pipeline.runner import registry

    return registry()[name]


def run(cfg, name: str, force: bool = False, log=lambda m: None) -> dict:
    from pipeline.runner import run_stage

    return run_stage(cfg, Path(cfg.run_dir), stage(name), force=force, log=log)
