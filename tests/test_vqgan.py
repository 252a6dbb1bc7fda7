"""Fast tests of the VQ-GAN tokenizer: taming layout, checkpoint loading and its errors, encode/decode,
quantization error, and a few steps of training."""

from __future__ import annotations

import json
import subprocess
import sys
import types
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from tokenization.vqgan import (
    CheckpointError,
    TokenizerConfig,
    VQModel,
    convert_checkpoint,
    load_tokenizer_dir,
    load_vqgan,
    taming_preset,
    train_tokenizer,
)
from tokenization.vqgan.train import to_model_range

ROOT = Path(__file__).resolve().parents[1]

# taming's f16 layout (5 levels, 2 res blocks, attention at 16) with tiny widths, 32x32 images
F16_TINY = dict(
    resolution=32,
    ch=32,
    ch_mult=[1, 1, 2, 2, 4],
    num_res_blocks=2,
    attn_resolutions=[16],
    z_channels=32,
    embed_dim=32,
    n_embed=64,
)
GUMBEL_TINY = dict(
    kind="gumbel",
    resolution=32,
    ch=32,
    ch_mult=[1, 1, 2, 4],
    num_res_blocks=2,
    attn_resolutions=[16],
    z_channels=32,
    embed_dim=32,
    n_embed=64,
)


def _random_model(**kw) -> VQModel:
    torch.manual_seed(0)
    model = VQModel(TokenizerConfig(**kw)).eval()
    with torch.no_grad():
        for p in model.parameters():  # move every tensor off its init, so a forgotten key shows
            p.add_(0.05 * torch.randn_like(p))
    return model


def _images(n=2, size=32, seed=1) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def _save_taming_ckpt(model: VQModel, path, extra: dict | None = None) -> None:
    sd = dict(model.state_dict())
    sd["loss.discriminator.main.0.weight"] = torch.randn(64, 3, 4, 4)
    sd["loss.perceptual_loss.net.slice1.0.weight"] = torch.randn(64, 3, 3, 3)
    sd["loss.logvar"] = torch.zeros(())
    torch.save({"state_dict": sd, "global_step": 7, "epoch": 1, **(extra or {})}, path)


def _taming_yaml(path, kw: dict) -> None:
    target = "taming.models.vqgan.GumbelVQ" if kw.get("kind") == "gumbel" else "taming.models.vqgan.VQModel"
    dd = {k: kw[k] for k in ("resolution", "ch", "ch_mult", "num_res_blocks", "attn_resolutions", "z_channels")}
    dd.update(double_z=False, in_channels=3, out_ch=3, dropout=0.0)
    doc = {
        "model": {
            "base_learning_rate": 4.5e-6,
            "target": target,
            "params": {
                "embed_dim": kw["embed_dim"],
                "n_embed": kw["n_embed"],
                "ddconfig": dd,
                "lossconfig": {"target": "taming.modules.losses.vqperceptual.DummyLoss"},
            },
        }
    }
    path.write_text(yaml.safe_dump(doc))


def _assert_same(a: VQModel, b: VQModel) -> None:
    x = _images()
    with torch.no_grad():
        ia, ea = a.encode(x)
        ib, eb = b.encode(x)
        assert torch.equal(ia, ib)
        assert torch.allclose(ea, eb)
        assert torch.allclose(a.decode(ia), b.decode(ib))


# ------------------------------------------------------------------ layout


def test_published_layouts_match_taming_names_and_shapes():
    with torch.device("meta"):
        f16 = VQModel(taming_preset("imagenet_f16_16384"))
        gum = VQModel(taming_preset("gumbel_f8_8192"))
    sd = {k: tuple(v.shape) for k, v in f16.state_dict().items()}
    assert sd["quantize.embedding.weight"] == (16384, 256)
    assert sd["quant_conv.weight"] == (256, 256, 1, 1)
    assert sd["encoder.conv_in.weight"] == (128, 3, 3, 3)
    assert sd["encoder.down.2.block.0.nin_shortcut.weight"] == (256, 128, 1, 1)
    assert sd["encoder.down.4.attn.1.proj_out.weight"] == (512, 512, 1, 1)
    assert sd["encoder.down.3.downsample.conv.weight"] == (256, 256, 3, 3)
    assert sd["encoder.mid.attn_1.q.weight"] == (512, 512, 1, 1)
    assert sd["decoder.conv_in.weight"] == (512, 256, 3, 3)
    assert sd["decoder.up.4.attn.2.k.bias"] == (512,)
    assert sd["decoder.up.3.block.0.nin_shortcut.weight"] == (256, 512, 1, 1)
    assert sd["decoder.up.1.upsample.conv.weight"] == (128, 128, 3, 3)
    assert sd["decoder.conv_out.weight"] == (3, 128, 3, 3)
    assert not any(k.startswith(("encoder.down.4.downsample", "decoder.up.0.upsample")) for k in sd)
    assert len(sd) == 343 and f16.grid_size == (16, 16) and f16.codebook_size == 16384
    gsd = {k: tuple(v.shape) for k, v in gum.state_dict().items()}
    assert gsd["quantize.proj.weight"] == (8192, 256, 1, 1)
    assert gsd["quantize.embed.weight"] == (8192, 256)
    assert "quantize.embedding.weight" not in gsd
    assert gsd["encoder.down.3.attn.1.q.weight"] == (512, 512, 1, 1)
    assert gum.grid_size == (32, 32)
    paper = taming_preset("imagenet_f16_16384", image_size=512)  # 512 px images -> 32x32 tokens
    assert paper.grid_size == (32, 32) and paper.resolution == 256
    with torch.device("meta"):
        assert {k: tuple(v.shape) for k, v in VQModel(paper).state_dict().items()} == sd


def test_config_validation():
    with pytest.raises(ValueError, match="multiples of 32"):
        TokenizerConfig(ch=48)
    with pytest.raises(ValueError, match="divisible"):
        TokenizerConfig(resolution=36, ch_mult=[1, 1, 2, 2])
    with pytest.raises(ValueError, match="image_size 34"):
        TokenizerConfig(image_size=34)
    with pytest.raises(ValueError, match="l1_weight"):
        TokenizerConfig(l1_weight=0.0, l2_weight=0.0)


# ------------------------------------------------------------------ encode / decode


@pytest.mark.parametrize("kw", [{}, GUMBEL_TINY], ids=["vq-tiny", "gumbel"])
def test_encode_decode_shapes_and_quant_error_brute_force(kw):
    model = _random_model(**kw)
    x = _images(3)
    with torch.no_grad():
        ids, err = model.encode(x)
        h, w = model.grid_size
        assert ids.shape == (3, h * w) and ids.dtype == torch.long
        assert err.shape == (3, h * w) and err.dtype == torch.float32
        feats = model.features(x).permute(0, 2, 3, 1).reshape(3, h * w, -1)  # row-major positions
        codes = model.codebook
        d = ((feats[:, :, None, :] - codes[None, None]) ** 2).sum(-1)  # [B, L, K] brute force
        if model.cfg.kind == "vq":
            assert torch.equal(ids, d.argmin(-1))
            assert torch.allclose(err, d.min(-1).values, rtol=1e-5, atol=1e-6)
        else:  # Gumbel: argmax of the logits, distance to that code's embedding
            logits = model.quantize.proj(model.features(x)).permute(0, 2, 3, 1).reshape(3, h * w, -1)
            assert torch.equal(ids, logits.argmax(-1))
            assert torch.allclose(err, d.gather(-1, ids[..., None])[..., 0], rtol=1e-5, atol=1e-6)
        out = model.decode(ids)
        assert out.shape == x.shape and out.min() >= -1 and out.max() <= 1
        assert torch.allclose(out, model.decode(ids, grid=(h, w)))


def test_bad_inputs_to_encode_decode():
    model = _random_model()
    with pytest.raises(ValueError, match="B, 3, H, W"):
        model.encode(torch.zeros(3, 32, 32))
    with pytest.raises(ValueError, match="divisible"):
        model.encode(torch.zeros(1, 3, 30, 30))
    with pytest.raises(ValueError, match=r"\[0, 256\)"):
        model.decode(torch.full((1, 64), 256))


# ------------------------------------------------------------------ checkpoints


@pytest.mark.parametrize("kw", [F16_TINY, GUMBEL_TINY], ids=["f16", "gumbel-f8"])
def test_taming_ckpt_roundtrip(tmp_path, kw):
    model = _random_model(**kw)
    ckpt = tmp_path / "last.ckpt"
    _save_taming_ckpt(model, ckpt)
    loaded = load_vqgan(TokenizerConfig(ckpt_path=str(ckpt), **kw))
    assert not loaded.training
    _assert_same(model, loaded)
    # architecture from taming's model yaml instead of the config fields (kind too, from target)
    _taming_yaml(tmp_path / "model.yaml", kw)
    via_yaml = load_vqgan(TokenizerConfig(ckpt_path=str(ckpt), yaml_path=str(tmp_path / "model.yaml")))
    assert via_yaml.cfg.kind == kw.get("kind", "vq")
    _assert_same(model, via_yaml)
    # safetensors conversion drops loss.* and loads the same
    st = tmp_path / "vq.safetensors"
    assert convert_checkpoint(ckpt, st) == len(model.state_dict())
    _assert_same(model, load_vqgan(TokenizerConfig(ckpt_path=str(st), **kw)))
    if kw is not F16_TINY:
        return
    # the converter's command line, as the README gives it (it warned that the package had imported it first)
    cli = subprocess.run(
        [sys.executable, "-m", "tokenization.vqgan.checkpoint", str(ckpt), str(tmp_path / "cli.safetensors")],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert cli.returncode == 0 and cli.stderr == "", cli.stderr
    assert cli.stdout == f"wrote {len(model.state_dict())} tensors to {tmp_path / 'cli.safetensors'}\n"
    _assert_same(model, load_vqgan(TokenizerConfig(ckpt_path=str(tmp_path / "cli.safetensors"), **kw)))


def test_pickled_objects_need_trust(tmp_path):
    # a class from a module that is not installed at load time, like Lightning's callbacks
    fake = types.ModuleType("fake_lightning_callbacks")

    class ModelCheckpoint:
        def __init__(self):
            self.best = 1.0

    ModelCheckpoint.__module__ = fake.__name__
    ModelCheckpoint.__qualname__ = "ModelCheckpoint"
    fake.ModelCheckpoint = ModelCheckpoint
    sys.modules[fake.__name__] = fake
    model = _random_model(**F16_TINY)
    ckpt = tmp_path / "last.ckpt"
    try:
        _save_taming_ckpt(model, ckpt, {"callbacks": {"ModelCheckpoint": ModelCheckpoint()}})
    finally:
        del sys.modules[fake.__name__]
    cfg = TokenizerConfig(ckpt_path=str(ckpt), **F16_TINY)
    with pytest.raises(CheckpointError) as e:
        load_vqgan(cfg)
    assert "tokenizer.trust_checkpoint: true" in str(e.value) and "safetensors" in str(e.value)
    _assert_same(model, load_vqgan(replace(cfg, trust_checkpoint=True)))
    st = tmp_path / "last.safetensors"
    convert_checkpoint(ckpt, st)
    _assert_same(model, load_vqgan(replace(cfg, ckpt_path=str(st))))


def test_missing_file_message(tmp_path):
    path = tmp_path / "nowhere" / "last.ckpt"
    with pytest.raises(CheckpointError) as e:
        load_vqgan(TokenizerConfig(ckpt_path=str(path)))
    msg = str(e.value)
    assert str(path) in msg and "taming-transformers" in msg
    assert "download on a machine with internet" in msg.lower() and "tokenizer.ckpt_path" in msg
    with pytest.raises(CheckpointError, match="yaml_path"):
        load_vqgan(TokenizerConfig(ckpt_path=str(path), yaml_path=str(tmp_path / "model.yaml")))


def test_wrong_keys_message(tmp_path):
    model = _random_model(**F16_TINY)
    sd = dict(model.state_dict())
    del sd["encoder.mid.attn_1.q.weight"]
    sd["encoder.extra_block.weight"] = torch.zeros(1)
    sd["loss.discriminator.main.0.weight"] = torch.zeros(1)  # ignored, never reported
    torch.save({"state_dict": sd}, tmp_path / "bad.ckpt")
    with pytest.raises(CheckpointError) as e:
        load_vqgan(TokenizerConfig(ckpt_path=str(tmp_path / "bad.ckpt"), **F16_TINY))
    msg = str(e.value)
    assert "1 missing keys: encoder.mid.attn_1.q.weight" in msg
    assert "1 unexpected keys: encoder.extra_block.weight" in msg
    assert "loss.discriminator" not in msg.split("Ignored prefixes")[0]
    # a checkpoint of another depth: counts and the first 10 names only
    with pytest.raises(CheckpointError) as e:
        load_vqgan(TokenizerConfig(ckpt_path=str(tmp_path / "bad.ckpt"), **{**F16_TINY, "num_res_blocks": 1}))
    assert "unexpected keys" in str(e.value) and "more)" in str(e.value)


def test_gumbel_checkpoint_as_vq_hint(tmp_path):
    model = _random_model(**GUMBEL_TINY)
    _save_taming_ckpt(model, tmp_path / "g.ckpt")
    with pytest.raises(CheckpointError, match="tokenizer.kind: gumbel"):
        load_vqgan(TokenizerConfig(ckpt_path=str(tmp_path / "g.ckpt"), **{**GUMBEL_TINY, "kind": "vq"}))


def test_wrong_shape_message(tmp_path):
    model = _random_model(**F16_TINY)
    _save_taming_ckpt(model, tmp_path / "m.ckpt")
    with pytest.raises(CheckpointError) as e:
        load_vqgan(TokenizerConfig(ckpt_path=str(tmp_path / "m.ckpt"), **{**F16_TINY, "n_embed": 128}))
    msg = str(e.value)
    assert "quantize.embedding.weight" in msg and "(64, 32)" in msg and "(128, 32)" in msg
    assert "n_embed" in msg


def test_unreadable_file_message(tmp_path):
    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="could not read"):
        load_vqgan(TokenizerConfig(ckpt_path=str(tmp_path / "junk.ckpt")))


# ------------------------------------------------------------------ training (a few steps)


def test_to_model_range():
    u8 = np.zeros((2, 4, 4, 3), np.uint8)
    u8[0, 0, 0] = 255
    x = to_model_range(u8)
    assert x.shape == (2, 3, 4, 4) and x.min() == -1 and x.max() == 1
    assert torch.equal(to_model_range(torch.from_numpy(u8).float() / 255), x)
    with pytest.raises(ValueError):
        to_model_range(np.zeros((2, 3, 4, 4), np.uint8))


def test_train_tokenizer_smoke(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (12, 32, 32, 3), dtype=np.uint8)
    cfg = TokenizerConfig(steps=4, batch_size=4, restart_every=2, n_embed=32, warmup_steps=1)
    metrics = train_tokenizer(cfg, images, tmp_path, progress=False)
    assert metrics["steps"] == 4 and metrics["n_holdout"] == 1 and metrics["restarted"] > 0
    assert 0 <= metrics["mae"] <= 1 and 0 < metrics["codebook_usage"] <= 1
    assert {"vqgan.safetensors", "tokenizer.yaml", "metrics.json"} <= {p.name for p in tmp_path.iterdir()}
    model = load_tokenizer_dir(tmp_path)
    assert model.codebook_size == 32
    saved = yaml.safe_load((tmp_path / "tokenizer.yaml").read_text())
    assert saved["steps"] == 4 and saved["ckpt_path"].endswith("vqgan.safetensors")
    _assert_same(model, load_vqgan(TokenizerConfig(**saved)))
    with pytest.raises(ValueError, match="kind: vq"):
        train_tokenizer(replace(cfg, kind="gumbel"), images, tmp_path, progress=False)
    # codebook loss instead of EMA, no restarts
    m2 = train_tokenizer(
        replace(cfg, ema_codebook=False, restart_dead_codes=False, steps=2), images, tmp_path / "b", progress=False
    )
    assert m2["restarted"] == 0 and m2["steps"] == 2


def test_a_kill_between_the_weights_and_their_record_leaves_no_record_vouching_for_them(tmp_path, monkeypatch):
    """Trained with config A, then B, killed after B's weights were saved but before B's metrics.json: A's record
    must not be left vouching for B's weights (switching back to A would reuse them as A's)."""
    import tokenization.vqgan.train as vt

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
    a = TokenizerConfig(steps=2, batch_size=4, n_embed=32, warmup_steps=1)
    train_tokenizer(a, images, tmp_path, progress=False)
    assert vt.finished_metrics(tmp_path, a) is not None

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(vt, "write_json_atomic", killed)
    with pytest.raises(KeyboardInterrupt):
        train_tokenizer(replace(a, steps=3), images, tmp_path, progress=False)
    assert vt.finished_metrics(tmp_path, a) is None


def test_train_tokenizer_fine_tunes_given_weights_at_another_image_size(tmp_path):
    """``init``: training starts from those weights and codes (0 steps saves them unchanged), here on 64 px
    images with the 32 px model, as the super-resolution test makes its high-resolution tokenizer."""
    rng = np.random.default_rng(0)
    cfg = TokenizerConfig(steps=2, batch_size=4, n_embed=32, warmup_steps=1)
    train_tokenizer(cfg, rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8), tmp_path / "lo", progress=False)
    lo = load_tokenizer_dir(tmp_path / "lo")
    big = rng.integers(0, 256, (8, 64, 64, 3), dtype=np.uint8)
    train_tokenizer(replace(cfg, image_size=64, steps=0), big, tmp_path / "same", progress=False, init=lo.state_dict())
    same = load_tokenizer_dir(tmp_path / "same").state_dict()
    assert all(torch.equal(v, same[k]) for k, v in lo.state_dict().items())
    train_tokenizer(replace(cfg, image_size=64, steps=0), big, tmp_path / "fresh", progress=False)
    assert not torch.equal(lo.codebook, load_tokenizer_dir(tmp_path / "fresh").codebook)
    train_tokenizer(replace(cfg, image_size=64, steps=2), big, tmp_path / "hi", progress=False, init=lo.state_dict())
    hi = load_tokenizer_dir(tmp_path / "hi")
    assert hi.cfg.pixels == 64 and hi.encode(torch.zeros(1, 3, 64, 64))[0].shape == (1, 256)
    assert not torch.equal(lo.encoder.conv_in.weight, hi.encoder.conv_in.weight)
    with pytest.raises(RuntimeError):  # another architecture
        train_tokenizer(replace(cfg, n_embed=16), big[:, :32, :32], tmp_path / "x", False, init=lo.state_dict())


def test_stage_trains_on_the_downloaded_image_shards(tmp_path):
    """Any source: the tokenizer trains on the download stage's train shards (not the eval ones), held out
    images measured; a finished training with the same config and shards is kept, other shards retrain."""
    stages = pytest.importorskip("pipeline.runner")
    from tests.data_utils import make_dataset
    from tests.image_shard_utils import write_download
    from tokenization.tokenizer_stage import tokenizer_stage

    run = tmp_path / "run"
    images, captions = make_dataset(40, seed=0, size=32)
    write_download(
        run,
        {
            "train/a": (images[:20], captions[:20]),
            "train/b": (images[20:30], captions[20:30]),
            "eval": (images[30:], captions[30:]),
        },
    )
    st = stages.Stage("tokenizer", tokenizer_stage, ("download",), ("tokenizer",))
    cfg = types.SimpleNamespace(tokenizer=TokenizerConfig(steps=2, batch_size=4, n_embed=16, holdout_fraction=0.3))
    out = run / "tokenizer"
    out.mkdir(parents=True)
    ctx = stages.StageContext(cfg, run, st, out, log=lambda *_: None)
    first = tokenizer_stage(ctx)
    m = json.loads((out / "metrics.json").read_text())
    assert [u.rsplit("/", 3)[-3] for u, _ in m["data"]] == ["a", "a", "b"]  # both sources' train shards only
    assert first["counts"]["holdout_images"] >= 3 and 0 < first["metrics"]["mae"] < 1  # held out from 30
    assert first["counts"]["train_images"] == 4 * 3  # the codebook's first batch and 2 steps of 4
    assert load_tokenizer_dir(out).codebook_size == 16
    stamp = (out / "vqgan.safetensors").stat().st_mtime_ns
    assert tokenizer_stage(ctx)["metrics"] == first["metrics"]  # finished: not retrained
    assert (out / "vqgan.safetensors").stat().st_mtime_ns == stamp
    write_download(run, {"train/a": (images[10:30], captions[10:30])})  # other images
    tokenizer_stage(ctx)
    assert (out / "vqgan.safetensors").stat().st_mtime_ns != stamp
