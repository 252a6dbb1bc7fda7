"""Pins of ``training.superres`` that the stage test (shapes and resume counts only) cannot see: which tokenizer
reads which resolution, the per-step batch draw, the seeded start of the model, exact resume, the last
metrics and the export checks. Tiny models, stub tokenizers and a stub text encoder: no pretrained weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from training.model.super_resolution.config import SRModelConfig
from training.superres import KIND, _batch, load_sr_export, token_pairs, train_super_resolution
from training.superres_config import SRTrainConfig, SuperResConfig


class StubVQ:
    """``encode(x) -> (ids, ...)``: each image's ids are ``offset`` + its mean pixel (in [-1, 1]) mapped to 0..9,
    so the grids name both the tokenizer and the image; ``calls`` records batch sizes."""

    def __init__(self, offset: int, length: int):
        self.offset, self.length, self.calls = offset, length, []

    def encode(self, x):
        self.calls.append(len(x))
        level = ((x.mean(dim=(1, 2, 3)) + 1) * 4.5).round().long()
        return (self.offset + level[:, None].repeat(1, self.length), None)


def test_token_pairs_reads_each_resolution_with_its_own_tokenizer_in_order():
    """Pins: ``lo`` = lo_vq(lo_images), ``hi`` = hi_vq(hi_images), int16, batched without reordering."""
    levels = np.arange(5) * 50
    hi = np.repeat(levels, 8 * 8 * 3).reshape(5, 8, 8, 3).astype(np.uint8)
    lo = hi[:, ::2, ::2][::-1].copy()  # another order, so swapped inputs show too
    lo_vq, hi_vq = StubVQ(100, 4), StubVQ(200, 16)
    pairs = token_pairs(hi, lo, hi_vq, lo_vq, batch=2)
    expect = lambda imgs, off: off + np.round((imgs.reshape(5, -1).mean(1) / 255 * 2) * 4.5)  # noqa: E731
    assert pairs["lo"].dtype == np.int16 and pairs["hi"].dtype == np.int16
    assert pairs["lo"].shape == (5, 4) and pairs["hi"].shape == (5, 16)
    np.testing.assert_array_equal(pairs["lo"][:, 0], expect(lo, 100))
    np.testing.assert_array_equal(pairs["hi"][:, 0], expect(hi, 200))
    assert lo_vq.calls == [2, 2, 1] and hi_vq.calls == [2, 2, 1]


class StubEncoder:
    """Text states = the caption index (ids) as floats; mask all true."""

    text_dim = 8

    def tokenize(self, captions):
        n = len(captions)
        ids = torch.arange(n)[:, None].repeat(1, 3)
        return ids, torch.ones(n, 3, dtype=torch.bool)

    def encode(self, ids, mask):
        return ids.float()[..., None].repeat(1, 1, self.text_dim)


def _pairs(n: int = 5) -> dict:
    # row i holds i everywhere: a batch row names the pair it came from
    return {
        "lo": np.repeat(np.arange(n, dtype=np.int16)[:, None], 4, 1),
        "hi": np.repeat(np.arange(n, dtype=np.int16)[:, None], 16, 1),
    }


def test_batch_draw_depends_on_seed_and_step_only_and_keeps_pairs_with_their_text():
    """Pins ``_batch``: (seed, step) -> the same batch (indices and mask seeds); other steps draw other batches;
    every pair (the last one too) is drawn; lo, hi and text rows belong to the same pair."""
    enc, pairs = StubEncoder(), _pairs()
    text = enc.tokenize(["c"] * 5)
    a = _batch(pairs, text, 1, 7, 6, enc, "cpu")
    b = _batch(pairs, text, 1, 7, 6, enc, "cpu")
    for k in a:
        assert torch.equal(a[k], b[k]), k
    rows = [_batch(pairs, text, s, 7, 6, enc, "cpu") for s in range(1, 21)]
    assert len({tuple(r["hi"][:, 0].tolist()) for r in rows}) > 10  # each step its own draw
    assert len({tuple(r["seeds"].tolist()) for r in rows}) == 20
    drawn = torch.cat([r["hi"][:, 0] for r in rows])
    assert set(drawn.tolist()) == set(range(5))
    for r in rows:
        assert torch.equal(r["lo"][:, 0], r["hi"][:, 0])
        assert torch.equal(r["text"][:, 0, 0].long(), r["hi"][:, 0])
    other_seed = _batch(pairs, text, 1, 8, 6, enc, "cpu")
    assert not torch.equal(other_seed["seeds"], a["seeds"])


def _cfg(steps: int, lr: float = 1e-2, **train) -> SuperResConfig:
    """Constant lr: a run cut at step 2 and resumed to 5 saw the same lr as an uninterrupted 5-step run."""
    model = SRModelConfig(
        lo_grid=2,
        hi_grid=4,
        lo_codebook_size=5,
        hi_codebook_size=5,
        text_dim=8,
        dim=16,
        layers=1,
        heads=2,
        ffn_dim=16,
        window=3,
        cross_window=3,
    )
    t = SRTrainConfig(
        steps=steps, batch_size=3, lr=lr, warmup_steps=0, checkpoint_every=2, log_every=2, schedule="constant", **train
    )
    return SuperResConfig(enabled=True, model=model, train=t)


def _state(folder) -> dict:
    return load_sr_export(folder).state_dict()


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _codebooks():
    g = torch.Generator().manual_seed(5)
    return torch.randn(5, 3, generator=g), torch.randn(5, 3, generator=g)


def test_model_starts_from_train_seed_and_the_codebooks(tmp_path):
    """Pins the start of training: global RNG seeded with ``train.seed``, then ``init_from_codebooks(seed=train.seed)``
    (lr 0: the export is that start, whatever the global RNG held before)."""
    from training.model.super_resolution.model import SRTransformer

    cfg = _cfg(2, lr=0.0, seed=3)
    torch.manual_seed(999)
    train_super_resolution(
        cfg, _pairs(), ["c"] * 5, StubEncoder(), tmp_path / "a", log=lambda m: None, codebooks=_codebooks()
    )
    torch.manual_seed(3)
    want = SRTransformer(cfg.model)
    want.init_from_codebooks(*_codebooks(), seed=3)
    assert _same(_state(tmp_path / "a" / "export"), want.state_dict())


def test_resumed_training_equals_the_uninterrupted_one_and_reports_the_last_step(tmp_path):
    """Pins: a resume continues at step start+1 (no step repeated) and ``last_metrics`` is the final step's even
    when steps is no multiple of log_every."""
    quiet = lambda m: None  # noqa: E731
    full = train_super_resolution(_cfg(5), _pairs(), ["c"] * 5, StubEncoder(), tmp_path / "full", log=quiet)
    train_super_resolution(_cfg(2), _pairs(), ["c"] * 5, StubEncoder(), tmp_path / "cut", log=quiet)
    resumed = train_super_resolution(_cfg(5), _pairs(), ["c"] * 5, StubEncoder(), tmp_path / "cut", log=quiet)
    assert resumed["resumed_from"] == 2 and full["resumed_from"] == 0
    assert full["last_metrics"]["step"] == 5 and resumed["last_metrics"]["step"] == 5
    assert full["last_metrics"]["loss"] == pytest.approx(resumed["last_metrics"]["loss"], abs=1e-6)
    assert _same(_state(tmp_path / "full" / "export"), _state(tmp_path / "cut" / "export"))


def test_load_sr_export_checks_files_kind_and_keys(tmp_path):
    """Pins ``load_sr_export``: eval mode, missing files -> FileNotFoundError naming the stage, another kind ->
    ValueError, a weights file with other keys -> refused (strict)."""
    from safetensors.torch import load_file, save_file

    train_super_resolution(_cfg(2), _pairs(), ["c"] * 5, StubEncoder(), tmp_path / "r", log=lambda m: None)
    export = tmp_path / "r" / "export"
    model = load_sr_export(export)
    assert not model.training and model.cfg.dim == 16
    weights = export / "model.safetensors"
    from safetensors import safe_open

    with safe_open(str(weights), "pt") as f:
        meta = dict(f.metadata())
    assert meta["kind"] == KIND
    state = load_file(str(weights))
    save_file(state, str(weights), metadata={**meta, "kind": "pdm"})
    with pytest.raises(ValueError, match="metadata kind is 'pdm'"):
        load_sr_export(export)
    save_file({**state, "extra.weight": torch.zeros(2)}, str(weights), metadata=meta)
    with pytest.raises(RuntimeError, match="extra.weight"):
        load_sr_export(export)
    (export / "config.yaml").unlink()
    with pytest.raises(FileNotFoundError, match="config.yaml is missing: rerun the superres stage"):
        load_sr_export(export)


def test_fewer_steps_after_a_longer_run_gives_the_shorter_runs_model(tmp_path):
    """``sr.train.steps`` lowered below a finished run's checkpoints (``steps`` is out of the resume fingerprint, so
    that more steps resume): the shorter run is trained from scratch and gives the shorter run's model (it used to
    resume past its end, train nothing, then fail on ``checkpoints/step_<steps>``, which ``keep_last`` had removed)."""
    quiet = lambda m: None  # noqa: E731
    train_super_resolution(_cfg(2), _pairs(), ["c"] * 5, StubEncoder(), tmp_path / "short", log=quiet)
    train_super_resolution(_cfg(6), _pairs(), ["c"] * 5, StubEncoder(), tmp_path / "run", log=quiet)  # keeps 4, 6
    summary = train_super_resolution(_cfg(2), _pairs(), ["c"] * 5, StubEncoder(), tmp_path / "run", log=quiet)
    assert summary["steps"] == 2
    assert _same(_state(tmp_path / "run" / "export"), _state(tmp_path / "short" / "export"))


def test_a_shortened_run_keeps_the_stages_record_so_a_longer_one_resumes_from_it(tmp_path):
    """The stage's record of what the checkpoints were made from (``checkpoints/made_from.json``) outlives a
    shortened run's fresh start: raising the steps again resumes from the shorter run's checkpoint."""
    from training.superres_stage import STATE, _reset_checkpoints

    made_from, logs = {"pairs": "p", "model": "m", "train": "t"}, []

    def stage(steps: int) -> dict:  # what superres_stage does around the trainer
        _reset_checkpoints(tmp_path, made_from, logs.append)
        return train_super_resolution(_cfg(steps), _pairs(), ["c"] * 5, StubEncoder(), tmp_path, log=logs.append)

    stage(6)
    stage(2)
    assert (tmp_path / STATE).is_file()
    assert stage(4)["resumed_from"] == 2, logs
