"""Text encoders through the production loaders: a tiny T5 built from synthetic captions, a tiny open_clip tower."""

import json
import warnings

import pytest
import torch

from tests import threads
from tests.data_utils import make_dataset
from tokenization.text import (
    TextEncoderConfig,
    TextEncoderNotFound,
    TextTruncationWarning,
    build_tiny_t5,
    load_text_encoder,
    load_text_tokenizer,
)

CAPTIONS = make_dataset(200, seed=0)[1]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny matmuls: one intra-op thread (two threads spin 100x slower on a busy shared 2-core box)."""
    with threads.one_thread():
        yield


@pytest.fixture(scope="module")
def tiny_t5(tmp_path_factory):
    return build_tiny_t5(CAPTIONS, tmp_path_factory.mktemp("t5") / "tiny_t5", d_model=64, layers=2, heads=4)


@pytest.fixture(scope="module")
def t5(tiny_t5):
    return load_text_encoder(TextEncoderConfig(kind="t5", path=str(tiny_t5)))


def test_tiny_t5_loads_and_encodes(t5):
    texts = CAPTIONS[:3] + ["a tiny purple hexagon, unseen words!", ""]
    ids, mask = t5.tokenize(texts)
    assert ids.dtype == torch.long and mask.dtype == torch.bool and ids.shape == mask.shape
    assert ids.shape[0] == 5 and ids.shape[1] <= t5.max_length == 64
    lengths = mask.sum(1)
    assert lengths[4] == 1  # just </s>
    assert (ids[~mask] == t5.pad_id).all() and int(ids.max()) < t5.vocab_size
    # caption words are single tokens: 'a small red circle at the top left' -> 8 words + </s>
    one = t5.tokenize(["a small red circle at the top left"])[0]
    assert one.shape == (1, 9) and one[0, -1] == t5.tokenizer.eos_token_id
    unk = t5.tokenizer.unk_token_id
    assert unk not in ids[3, : lengths[3]].tolist()  # unseen words fall back to characters

    states = t5.encode(ids, mask)
    assert states.shape == (*ids.shape, 64) and states.dtype == torch.float32 and t5.dim == 64
    assert not states.requires_grad and torch.isfinite(states).all()
    assert (states[~mask] == 0).all() and states[mask].abs().sum() > 0
    # padding does not change the states of a caption
    alone = t5.encode(*t5.tokenize(texts[:1]))
    assert torch.allclose(alone[0], states[0, : alone.shape[1]], atol=1e-5)


def test_the_tokenizer_alone_cuts_the_same_ids_without_weights(tiny_t5):
    """What every tokenize actor loads (tokenization.shard_encoder.TextFactory): no weights, the same ids, masks
    and truncation as the encoder's own tokenize."""
    from tokenization.shard_encoder import TextFactory

    cfg = TextEncoderConfig(kind="t5", path=str(tiny_t5), max_length=6, truncation="silent")
    texts = CAPTIONS[:4] + ["a tiny purple hexagon, unseen words!", ""]
    alone = TextFactory(cfg)()
    assert not isinstance(alone, torch.nn.Module) and not hasattr(alone, "encode")
    want = load_text_encoder(cfg).tokenize(texts)
    got = alone.tokenize(texts)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1]) and got[1].sum(1).max() == 6


def test_frozen(t5):
    assert all(not p.requires_grad for p in t5.parameters())
    t5.train()
    assert not t5.training and not t5.model.training


def test_tiny_t5_deterministic_and_reused(tiny_t5, tmp_path):
    again = build_tiny_t5(CAPTIONS, tmp_path / "b", d_model=64, layers=2, heads=4)
    assert (again / "tokenizer.json").read_text() == (tiny_t5 / "tokenizer.json").read_text()
    assert (again / "model.safetensors").read_bytes() == (tiny_t5 / "model.safetensors").read_bytes()
    other = build_tiny_t5(CAPTIONS, tmp_path / "c", d_model=64, layers=2, heads=4, seed=1)
    assert (other / "model.safetensors").read_bytes() != (tiny_t5 / "model.safetensors").read_bytes()
    stamp = (again / "model.safetensors").stat().st_mtime_ns
    build_tiny_t5(CAPTIONS, tmp_path / "b", d_model=64, layers=2, heads=4)  # same recipe: kept
    assert (again / "model.safetensors").stat().st_mtime_ns == stamp
    assert not (tmp_path / "b.tmp").exists()


def test_truncation_policies(tiny_t5):
    long = " ".join(CAPTIONS[:4])
    cfg = dict(kind="t5", path=str(tiny_t5), max_length=8)
    enc = load_text_encoder(TextEncoderConfig(**cfg))
    with pytest.warns(TextTruncationWarning, match="max_length=8"):
        ids, mask = enc.tokenize([long, "a red circle"])
    assert ids.shape == (2, 8) and mask[0].all() and ids[0, -1] == enc.tokenizer.eos_token_id
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        enc.tokenize([long])  # warned once per encoder
        load_text_encoder(TextEncoderConfig(**cfg, truncation="silent")).tokenize([long])
    with pytest.raises(ValueError, match="exceed"):
        load_text_encoder(TextEncoderConfig(**cfg, truncation="error")).tokenize([long])


def test_missing_or_wrong_files(tmp_path, tiny_t5):
    with pytest.raises(TextEncoderNotFound) as e:
        load_text_encoder(TextEncoderConfig(kind="t5", path=str(tmp_path / "nowhere")))
    msg = str(e.value)
    assert str(tmp_path / "nowhere") in msg and "config.json" in msg and "spiece.model" in msg
    assert "google-t5/t5-base" in msg and "save_pretrained" in msg
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "config.json").write_text("{}")
    with pytest.raises(TextEncoderNotFound, match="lacks model.safetensors or pytorch_model.bin, tokenizer.json"):
        load_text_encoder(TextEncoderConfig(kind="t5", path=str(tmp_path / "half")))
    with pytest.raises(TextEncoderNotFound, match="''"):
        load_text_encoder(TextEncoderConfig(kind="t5"))
    with pytest.raises(ValueError, match="text_encoder.dim is 32"):
        load_text_encoder(TextEncoderConfig(kind="t5", path=str(tiny_t5), dim=32))


def test_folder_overrides_path(tiny_t5, tmp_path):
    """A text stage folder holding the encoder (itself or in encoder/) wins over text_encoder.path."""
    (tmp_path / "encoder").symlink_to(tiny_t5, target_is_directory=True)
    cfg = TextEncoderConfig(kind="t5", path=str(tmp_path / "unused"))
    assert load_text_encoder(cfg, tmp_path).dim == 64
    with pytest.raises(TextEncoderNotFound, match="unused"):
        load_text_encoder(cfg, tmp_path / "empty")


TINY_CLIP = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


def test_tiny_open_clip_text_tower(tmp_path):
    import open_clip

    arch = tmp_path / "tiny-text-clip.json"
    arch.write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(arch)
    torch.manual_seed(0)
    ckpt = tmp_path / "tiny_clip.pt"
    torch.save(open_clip.create_model("tiny-text-clip").state_dict(), ckpt)

    cfg = TextEncoderConfig(
        kind="clip", path=str(ckpt), clip_model="tiny-text-clip", clip_model_config=str(arch), dim=32, max_length=16
    )
    enc = load_text_encoder(cfg)
    assert enc.dim == 32 and enc.vocab_size == 49408 and enc.max_length == 16
    texts = ["a small red circle at the top left", "a blue square", ""]
    alone = load_text_tokenizer(cfg)  # no weights: the context length comes from the architecture
    assert alone.max_length == 16 and all(torch.equal(a, b) for a, b in zip(alone.tokenize(texts), enc.tokenize(texts)))
    assert all(not p.requires_grad for p in enc.parameters())
    ids, mask = enc.tokenize(["a small red circle at the top left", "a blue square"])
    assert ids.shape == mask.shape and ids.shape[1] <= 16 and mask.sum(1).tolist() == [10, 5]
    states = enc.encode(ids, mask)
    assert states.shape == (2, ids.shape[1], 32) and not states.requires_grad and torch.isfinite(states).all()

    # the same states as open_clip's own text forward (before pooling), on the full 77-token context
    model = open_clip.create_model("tiny-text-clip", pretrained=str(ckpt)).eval()
    full = open_clip.get_tokenizer("tiny-text-clip")(["a blue square"])
    with torch.no_grad():
        x = model.token_embedding(full) + model.positional_embedding
        ref = model.ln_final(model.transformer(x, attn_mask=model.attn_mask))
    assert torch.allclose(states[1, :5], ref[0, :5], atol=1e-5)

    with pytest.warns(TextTruncationWarning):
        ids, mask = enc.tokenize([" ".join(CAPTIONS[:3])])
    assert ids.shape == (1, 16) and ids[0, -1] == enc.tokenizer.eot_token_id
    with pytest.raises(TextEncoderNotFound, match="open_clip checkpoint"):
        load_text_encoder(
            TextEncoderConfig(kind="clip", path=str(tmp_path / "none.pt"), clip_model="tiny-text-clip", dim=32)
        )


def test_text_stage_depends_on_the_seed_only_when_it_builds_the_tiny_t5(tmp_path, tiny_t5):
    """The top-level ``seed`` initialises the tiny T5: changing it makes the text stage stale (and it builds
    another encoder); with ``text_encoder.path`` (loaded weights) the seed is no part of the stage."""
    from pathlib import Path

    import numpy as np

    import tokenization.text_stage  # noqa: F401  (registers "text")
    from core.stage import read_manifest, registered
    from pipeline.experiment import load_config
    from pipeline.runner import run_stages, stage_state
    from tests.image_shard_utils import write_download

    text = registered()["text"]
    tiny = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"
    quiet = dict(log=lambda *_: None)

    def cfg(run: Path, *sets: str):
        return load_config(tiny, [f"run_dir={run}", "text_encoder.tiny_pretrain_steps=0", *sets])

    built = tmp_path / "built"
    write_download(built, {"train": (np.zeros((12, 8, 8, 3), np.uint8), CAPTIONS[:12])}, per_shard=12)
    manifest = json.loads((built / "download" / "manifest.json").read_text())
    (built / "download" / "manifest.json").write_text(json.dumps({**manifest, "fingerprint": "dl"}))
    run_stages(cfg(built, "seed=0"), built, [text], **quiet)
    first = read_manifest(built / "text")
    state = stage_state(cfg(built, "seed=1"), built, text)
    assert state.state == "stale" and "seed: 0 -> 1" in state.why, state
    run_stages(cfg(built, "seed=1"), built, [text], **quiet)
    assert read_manifest(built / "text")["identity"] != first["identity"]  # another random encoder
    assert stage_state(cfg(built, "seed=1"), built, text).state == "current"

    loaded = tmp_path / "loaded"
    run_stages(cfg(loaded, "seed=0", f"text_encoder.path={tiny_t5}"), loaded, [text], **quiet)
    assert stage_state(cfg(loaded, "seed=1", f"text_encoder.path={tiny_t5}"), loaded, text).state == "current"
