"""Helpers shared by the trainer tests: tiny token shards, a tiny frozen text encoder, configs, jobs."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import pytest
import torch
import yaml

from tests import threads
from tokenization.shards import write_token_shard

L, K, VOCAB = 16, 32, 50  # 4x4 token grid, 32 codes, 50 text ids
TESTS_DIR = str(Path(__file__).resolve().parent)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models gain nothing from threads, and OpenMP spin-waits crawl on a busy 2-core machine."""
    with threads.one_thread():
        yield


@pytest.fixture(scope="module")
def loader_shards(tmp_path_factory) -> list[str]:
    """The loader tests' shards: 4 of 12 samples."""
    return make_shards(tmp_path_factory.mktemp("shards"), n_shards=4, per_shard=12)


def loader_spec(shards, shuffle_buffer: int = 5, **kw):
    """A ``LoaderSpec`` over ``shards`` with the loader tests' defaults (micro-batch 3, seed 7)."""
    from training.data import LoaderSpec

    return LoaderSpec(
        list(shards),
        **{"seq_len": L, "codebook_size": K, "micro_batch": 3, "seed": 7, "shuffle_buffer": shuffle_buffer, **kw},
    )


def make_shards(
    folder: Path, n_shards: int = 4, per_shard: int = 12, seq_len: int = L, codebook: int = K, seed: int = 0
) -> list[str]:
    """Learnable toy data: the caption's first id picks a class; the image tokens are a noisy function of it."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for s in range(n_shards):
        samples = []
        for i in range(per_shard):
            cls = int(rng.integers(4))
            base = (np.arange(seq_len) * (cls + 1)) % codebook
            noise = rng.random(seq_len) < 0.1
            tokens = np.where(noise, rng.integers(codebook, size=seq_len), base)
            text = np.concatenate([[cls + 1], rng.integers(5, VOCAB, size=int(rng.integers(2, 6)))])
            samples.append(
                {
                    "key": f"s{s:03d}_{i:04d}",
                    "tokens": tokens,
                    "qerr": rng.random(seq_len),
                    "text_ids": text,
                    "txt": f"class {cls}",
                    "grid": [4, seq_len // 4],
                }
            )
        p = folder / f"{s:05d}.tar"
        write_token_shard(p, samples)
        paths.append(str(p))
    return paths


def text_width() -> int:
    """Width of the default ``text_encoder`` section (what ``model.text_dim`` must equal)."""
    from tokenization.text import TextEncoderConfig
    from training.model.config import _TEXT_WIDTH_NAMES

    cfg = TextEncoderConfig()
    for name in _TEXT_WIDTH_NAMES:
        w = getattr(cfg, name, None)
        if isinstance(w, int) and not isinstance(w, bool):
            return w
    return 16


class TinyTextEncoder(torch.nn.Module):
    """Frozen stand-in with the ``encode(ids, mask)`` API of ``tokenization.text`` (fixed random table)."""

    def __init__(self, dim: int, vocab: int = VOCAB, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.emb = torch.nn.Embedding(vocab, dim)
        with torch.no_grad():
            self.emb.weight.copy_(torch.randn(vocab, dim, generator=g))
        self.requires_grad_(False)

    @torch.no_grad()
    def encode(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.emb(ids) * mask[..., None]


def tiny_text_encoder(cfg) -> TinyTextEncoder:
    """``TrainJob.text_encoder_factory`` target: ``tests.trainer_utils:tiny_text_encoder``."""
    return TinyTextEncoder(cfg.model.text_dim)


def tiny_model_dict(**kw) -> dict:
    d = dict(
        codebook_size=K,
        grid_h=4,
        grid_w=L // 4,
        text_dim=text_width(),
        dim=32,
        layers=2,
        heads=2,
        ffn_dim=64,
        dropout=0.0,
        cond_dropout=0.1,
    )
    d.update(kw)
    return d


def write_config(root: Path, train: dict, model: Optional[dict] = None, cluster: Optional[dict] = None) -> Path:
    """An experiment YAML for the tiny setup (tokenizer section matching K and the 4x4 grid)."""
    t = {
        "steps": 6,
        "batch_size": 8,
        "lr": 3e-3,
        "warmup_steps": 2,
        "stages": 4,
        "log_every": 1,
        "checkpoint_every": 3,
        "keep_last": 2,
        "num_workers": 0,
        "zero_stage": 2,
        "threads": 1,
    }
    t.update(train)
    cfg = {
        "name": "trainer-test",
        "run_dir": str(root / "run"),
        "tokenizer": {"n_embed": K, "resolution": 16},
        "model": tiny_model_dict(**(model or {})),
        "train": t,
    }
    if cluster:
        cfg["cluster"] = cluster
    root.mkdir(parents=True, exist_ok=True)
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def make_job(
    root: Path,
    shards: list[str],
    engine: str = "local",
    model: Optional[dict] = None,
    heldout_shards: Optional[list[str]] = None,
    **train,
):
    from pipeline.experiment import load_config
    from training.trainer import TrainJob, trainer_sections

    cfg = load_config(write_config(root, train, model))
    out = root / "train"
    out.mkdir(parents=True, exist_ok=True)
    return TrainJob(
        sections=trainer_sections(cfg),
        out_dir=str(out),
        shards=shards,
        engine=engine,
        text_encoder_factory="tests.trainer_utils:tiny_text_encoder",
        heldout_shards=list(heldout_shards or []),
    )


def train_stage_inputs(cfg, shards: list[str]):
    """The registered train stage, with what its inputs write in ``cfg.run_dir``: tokenize/train/*.tar (copies
    of ``shards``), the text stage's tiny T5 and the tokenizer stage's random toy VQ tokenizer."""
    import json

    import training.train_stage  # noqa: F401  (registers "train")
    from core.stage import registered
    from tokenization.text import build_tiny_t5, tiny_t5_kwargs
    from tokenization.vqgan import VQModel, save_tokenizer

    run = Path(cfg.run_dir)
    tok = run / "tokenize" / "train"
    tok.mkdir(parents=True)
    for s in shards:
        (tok / Path(s).name).write_bytes(Path(s).read_bytes())
    (run / "tokenize" / "manifest.json").write_text(json.dumps({"splits": {"train": str(tok)}, "fingerprint": "t"}))
    build_tiny_t5(
        [f"class {i} caption" for i in range(4)], run / "text" / "encoder", **tiny_t5_kwargs(cfg.text_encoder)
    )
    (run / "text" / "manifest.json").write_text(json.dumps({"fingerprint": "x"}))
    torch.manual_seed(0)
    save_tokenizer(VQModel(cfg.tokenizer), cfg.tokenizer, run / "tokenizer")
    (run / "tokenizer" / "manifest.json").write_text(json.dumps({"fingerprint": "v"}))
    return registered()["train"]  # (registry() would import every stage module of the project)


class Crash(RuntimeError):
    pass


def crash_at(step: int):
    """Trainer hooks that raise ``Crash`` when the trainer reaches ``step`` (after its forward and backward)."""
    from training.trainer import TrainHooks

    def update(s, model, batch):
        if s == step:
            raise Crash(f"simulated crash at step {s}")
        return {}

    return TrainHooks(policy_update=update)


def nan_loss_forward(step: int):
    """A ``TrainModule.forward`` whose loss is nan from the ``step``-th call (micro-batch) on."""
    import math

    from training.model.train_module import TrainModule

    forward, calls = TrainModule.forward, []

    def poisoned(self, batch):
        loss, metrics = forward(self, batch)
        calls.append(1)
        return (loss * math.nan, metrics) if len(calls) >= step else (loss, metrics)

    return poisoned


def run_job_with_nan_loss_from(job: dict, step: int = 3) -> dict:
    """``training.trainer.run_job`` whose loss is nan from micro-batch ``step`` on: module-level, so Ray Train's
    workers can run it (by reference, in their own process)."""
    from training.model.train_module import TrainModule
    from training.trainer import run_job

    forward = TrainModule.forward
    TrainModule.forward = nan_loss_forward(step)
    try:
        return run_job(job)
    finally:
        TrainModule.forward = forward


def heldout_score(job, weights: str | Path, shards: list[str], n: int) -> float:
    """The held-out loss of the exported ``weights`` of ``job`` on the first ``n`` samples of ``shards``, scored as
    the trainer scores (one rank; the mean over ranks equals it: tests/test_heldout_loss.py)."""
    from training.checkpoint import load_export
    from training.engine import micro_batch
    from training.heldout import HeldOut
    from training.model import build_model
    from training.model.train_module import StepSettings, TrainModule

    cfg = job.trainer_config()
    model = build_model(cfg.model, "progressive")
    model.load_state_dict(load_export(weights)[0])
    module = TrainModule(model, StepSettings.from_config(cfg.train)).eval()
    enc = tiny_text_encoder(cfg)
    held = HeldOut(shards, L, K, n, micro_batch(cfg.train, 1), seed=cfg.train.seed)
    return held(lambda b: module(b)[1], lambda b: {**b, "text": enc.encode(b["text_ids"], b["text_mask"])})["val/loss"]


def losses(out_dir: str | Path) -> dict[int, float]:
    from training.metrics_log import read_metrics

    return {s: r["loss"] for s, r in read_metrics(Path(out_dir) / "metrics.jsonl").items() if "loss" in r}


def assert_same_exports(a: str | Path, b: str | Path) -> None:
    """Two train outputs' exports are the same: every file byte for byte, except the time in lineage.json."""
    import json

    names = sorted(p.name for p in (Path(a) / "export").iterdir())
    assert names == ["config.yaml", "lineage.json", "model.safetensors", "model_ema.safetensors"], names
    assert names == sorted(p.name for p in (Path(b) / "export").iterdir())
    for name in names:
        x, y = ((Path(d) / "export" / name).read_bytes() for d in (a, b))
        if name == "lineage.json":  # records when it was written
            x, y = ({k: v for k, v in json.loads(t).items() if k != "time"} for t in (x, y))
        assert x == y, name
