"""The tokenizer trained on image shards: a killed training resumes to the same weights; the optional patch
discriminator (the adversarial term of a VQ-GAN) trains and changes the autoencoder's updates."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from tests.data_utils import make_dataset
from tests.image_shard_utils import write_split
from tokenization.vqgan import TokenizerConfig, load_tokenizer_dir
from tokenization.vqgan.discriminator import adaptive_weight, hinge_d_loss
from tokenization.vqgan.train import train_tokenizer_on_shards
from tokenization.vqgan.train_loop import STATE_FILE

CFG = TokenizerConfig(
    steps=6, batch_size=4, n_embed=16, checkpoint_every=2, restart_every=2, warmup_steps=1, shuffle_buffer=10
)


@pytest.fixture
def shards(tmp_path):
    images, captions = make_dataset(60, seed=0, size=32)
    split = write_split(tmp_path / "shards", images, captions, 20)
    return [f"{split['folder']}/{s['name']}" for s in split["shards"]]


def _weights(folder):
    return load_tokenizer_dir(folder).state_dict()


def _same(a, b) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_killed_training_resumes_from_its_state_to_the_same_weights(tmp_path, shards, monkeypatch):
    import tokenization.vqgan.train as train

    torch.set_num_threads(1)
    full = train_tokenizer_on_shards(CFG, shards, tmp_path / "a", progress=False)
    real, saved = train.save_state, []

    def save_then_die(path, state, extra):
        real(path, state, extra)
        saved.append(state.step)
        if state.step == 4:
            raise KeyboardInterrupt  # killed right after its second checkpoint

    monkeypatch.setattr(train, "save_state", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train_tokenizer_on_shards(CFG, shards, tmp_path / "b", progress=False)
    monkeypatch.undo()
    assert saved == [2, 4] and (tmp_path / "b" / STATE_FILE).is_file()
    logs = []
    resumed = train_tokenizer_on_shards(CFG, shards, tmp_path / "b", progress=False, log=logs.append)
    assert any("resumed from" in m and "at step 4" in m for m in logs)
    assert _same(_weights(tmp_path / "a"), _weights(tmp_path / "b"))
    assert {k: v for k, v in resumed.items() if k != "seconds"} == {k: v for k, v in full.items() if k != "seconds"}
    assert not (tmp_path / "b" / STATE_FILE).exists()  # done: the state is removed

    # a state made with another config is not resumed from
    monkeypatch.setattr(train, "save_state", save_then_die)
    saved.clear()
    with pytest.raises(KeyboardInterrupt):
        train_tokenizer_on_shards(CFG, shards, tmp_path / "c", progress=False)
    monkeypatch.undo()
    logs.clear()
    train_tokenizer_on_shards(replace(CFG, lr=1e-3), shards, tmp_path / "c", progress=False, log=logs.append)
    assert not any("resumed" in m for m in logs)


def test_hinge_loss_and_adaptive_weight():
    assert float(hinge_d_loss(torch.full((4,), 2.0), torch.full((4,), -2.0))) == 0.0  # both sides sure: no loss
    assert float(hinge_d_loss(torch.zeros(4), torch.zeros(4))) == 1.0  # undecided
    last = torch.tensor([1.0, 2.0], requires_grad=True)
    rec, g = (last * torch.tensor([3.0, 4.0])).sum(), (last * torch.tensor([0.3, 0.4])).sum()
    assert float(adaptive_weight(rec, g, last, 0.5)) == pytest.approx(0.5 * 5.0 / (0.5 + 1e-4))


def test_the_discriminator_trains_and_changes_the_autoencoder(tmp_path, shards):
    torch.set_num_threads(1)
    cfg = replace(CFG, steps=30, batch_size=8, checkpoint_every=100)
    plain = train_tokenizer_on_shards(cfg, shards, tmp_path / "plain", progress=False)
    late = train_tokenizer_on_shards(replace(cfg, disc_weight=0.8, disc_start=100), shards, tmp_path / "late", False)
    gan = train_tokenizer_on_shards(replace(cfg, disc_weight=0.8, disc_start=5), shards, tmp_path / "gan", False)
    assert "d_loss" not in plain and "d_loss" not in late
    assert _same(_weights(tmp_path / "plain"), _weights(tmp_path / "late"))  # before disc_start: no effect
    assert not _same(_weights(tmp_path / "plain"), _weights(tmp_path / "gan"))  # after: the GAN gradient
    assert gan["d_loss"] < 0.95 and gan["disc_weight"] > 0  # it tells reconstructions from images (chance: 1)


def test_checkpoint_cadence_neither_retrains_the_tokenizer_nor_redoes_its_token_shards(tmp_path, shards):
    """``checkpoint_every`` (how often the resumable state is saved) cannot change the weights: a finished
    training is kept and the token shards' tokenizer identity stays; a key that trains otherwise changes both."""
    import yaml

    from tokenization.shard_encoder import tokenizer_identity
    from tokenization.vqgan.train import finished_metrics

    out = tmp_path / "tok"
    train_tokenizer_on_shards(CFG, shards, out, progress=False, log=lambda m: None)
    assert finished_metrics(out, replace(CFG, checkpoint_every=5), list(shards)) is not None
    assert finished_metrics(out, replace(CFG, lr=1e-3), list(shards)) is None

    def identity(**change):
        doc = yaml.safe_load((out / "tokenizer.yaml").read_text())
        other = tmp_path / "other"
        other.mkdir(exist_ok=True)
        (other / "tokenizer.yaml").write_text(yaml.safe_dump({**doc, **change}))
        (other / "vqgan.safetensors").write_bytes((out / "vqgan.safetensors").read_bytes())
        return tokenizer_identity(None, other)["config_hash"]

    first = tokenizer_identity(None, out)["config_hash"]
    assert identity() == first and identity(checkpoint_every=5) == first
    assert identity(lr=1e-3) != first
    assert tokenizer_identity(replace(CFG, checkpoint_every=5), None) == tokenizer_identity(CFG, None)


def test_a_resume_state_that_would_run_code_is_refused(tmp_path):
    """The resume state holds tensors and plain data only: a file with a pickled object is not unpickled."""
    import os

    from tokenization.vqgan.train_loop import load_state

    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (os.mkdir, (str(marker),))

    torch.save({"recipe": {"a": 1}, "x": Payload()}, tmp_path / STATE_FILE)
    with pytest.raises(ValueError, match="refused: unpickling it could run code"):
        load_state(tmp_path / STATE_FILE, {"a": 1})
    assert not marker.exists()


def test_a_tokenizer_folder_cannot_ask_for_its_pickle_to_be_trusted(tmp_path):
    """A copied or tampered tokenizer folder whose yaml says trust_checkpoint: true and points at a pickled
    checkpoint is refused before unpickling: the trust setting is the user's config's, never the folder's."""
    import os
    from dataclasses import asdict

    import yaml

    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (os.mkdir, (str(marker),))

    torch.save({"state_dict": {}, "x": Payload()}, tmp_path / "weights.ckpt")
    doc = {**asdict(TokenizerConfig()), "ckpt_path": str(tmp_path / "weights.ckpt"), "trust_checkpoint": True}
    (tmp_path / "tokenizer.yaml").write_text(yaml.safe_dump(doc))
    with pytest.raises(Exception, match="trust"):
        load_tokenizer_dir(tmp_path)
    assert not marker.exists()
