"""``train.order_learner.reward: clip`` through the trainer: the token shards' captions reach the reward
(the batch carries them), with a tiny randomly initialised open_clip model saved by the test as an
open_clip ``local-dir:`` folder (nothing downloaded) and a random VQ tokenizer as the decoder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.trainer_utils import K, L, make_job, make_shards, one_thread  # noqa: F401 (autouse fixture)
from training.trainer import run_training

TINY_CLIP = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 16, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


def tiny_clip_dir(folder: Path) -> str:
    """A random tiny CLIP as an open_clip local folder (config + weights); returns its model name."""
    open_clip = pytest.importorskip("open_clip")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_CLIP}))
    torch.manual_seed(0)
    model = open_clip.create_model(f"local-dir:{folder}", load_weights=False)
    torch.save(model.state_dict(), folder / "open_clip_pytorch_model.bin")
    return f"local-dir:{folder}"


def random_vq_dir(folder: Path) -> str:
    """A random VQ tokenizer decoding the 4x4 test grids (K codes) to 16x16 images."""
    from tokenization.vqgan import TokenizerConfig, VQModel, save_tokenizer

    torch.manual_seed(0)
    cfg = TokenizerConfig(n_embed=K, resolution=16)
    model = VQModel(cfg)
    assert model.encode(torch.zeros(1, 3, 16, 16))[0].shape[-1] == L
    save_tokenizer(model, cfg, folder)
    return str(folder)


def test_clip_reward_reads_the_shard_captions_in_the_trainer(tmp_path, monkeypatch):
    from training.model.order_learner import rewards

    shards = make_shards(tmp_path / "shards", n_shards=1, per_shard=8)  # captions "class 0" .. "class 3"
    seen: list[str] = []
    real = rewards.ClipReward.text_features
    monkeypatch.setattr(
        rewards.ClipReward, "text_features", lambda self, caps, dev: seen.extend(caps) or real(self, caps, dev)
    )
    ol = {"mode": "joint", "warmup_steps": 0, "hidden": 8, "reward": "clip"}
    ol["clip_model"] = tiny_clip_dir(tmp_path / "clip")
    job = make_job(tmp_path, shards, steps=2, batch_size=4, order="learned", order_learner=ol)
    job.tokenizer = random_vq_dir(tmp_path / "vq")
    run_training(job, log=lambda m: None)
    assert seen and set(seen) <= {f"class {c}" for c in range(4)}  # the captions of the shards
    recs = [json.loads(x) for x in (Path(job.out_dir) / "metrics.jsonl").read_text().splitlines()]
    for r in recs:  # a cosine similarity, one policy update per step
        assert -1.0 <= r["policy/final_reward"] <= 1.0 and r["policy/grad_norm"] >= 0
