"""Importing a published VQ-GAN: what taming's model yaml sets (every architecture field, the refusal of a
``double_z`` encoder), a taming *transformer* checkpoint whose VQ-GAN sits under ``first_stage_model.`` beside
the transformer's own tensors, and a tokenizer folder's yaml that cannot turn on pickle loading."""

from __future__ import annotations

import pytest
import torch
import yaml

from tests.test_vqgan import F16_TINY, _assert_same, _random_model, _save_taming_ckpt, _taming_yaml
from tokenization.vqgan import CheckpointError, TokenizerConfig, load_tokenizer_dir, load_vqgan
from tokenization.vqgan.checkpoint import CONFIG_FILE, read_taming_yaml, save_tokenizer

# every architecture field away from TokenizerConfig's defaults, so a field the yaml reader forgets shows
OTHER = dict(F16_TINY, embed_dim=16, n_embed=48, z_channels=64, ch=64, num_res_blocks=1, attn_resolutions=[8])


def test_the_taming_yaml_sets_every_architecture_field(tmp_path):
    _taming_yaml(tmp_path / "model.yaml", OTHER)
    got = read_taming_yaml(tmp_path / "model.yaml")
    want = {k: OTHER[k] for k in ("embed_dim", "n_embed", "z_channels", "ch", "num_res_blocks", "resolution")}
    assert {k: got[k] for k in want} == want
    assert got["ch_mult"] == OTHER["ch_mult"] and got["attn_resolutions"] == [8] and got["kind"] == "vq"
    model = _random_model(**OTHER)
    _save_taming_ckpt(model, tmp_path / "last.ckpt")
    loaded = load_vqgan(TokenizerConfig(ckpt_path=str(tmp_path / "last.ckpt"), yaml_path=str(tmp_path / "model.yaml")))
    assert (loaded.cfg.embed_dim, loaded.codebook_size) == (16, 48)
    _assert_same(model, loaded)


def test_a_double_z_encoder_is_refused_by_name(tmp_path):
    _taming_yaml(tmp_path / "model.yaml", F16_TINY)
    doc = yaml.safe_load((tmp_path / "model.yaml").read_text())
    doc["model"]["params"]["ddconfig"]["double_z"] = True  # a KL autoencoder's yaml, not a VQ-GAN's
    (tmp_path / "model.yaml").write_text(yaml.safe_dump(doc))
    with pytest.raises(CheckpointError, match="double_z"):
        read_taming_yaml(tmp_path / "model.yaml")


def test_the_vqgan_of_a_taming_transformer_checkpoint_loads(tmp_path):
    """A taming ``Net2NetTransformer`` checkpoint: ``first_stage_model.*`` (the VQ-GAN) beside
    ``transformer.*`` and ``cond_stage_model.*``; only the first are the tokenizer's."""
    model = _random_model(**F16_TINY)
    sd = {f"first_stage_model.{k}": v for k, v in model.state_dict().items()}
    sd["transformer.tok_emb.weight"] = torch.randn(64, 16)
    sd["cond_stage_model.embedding.weight"] = torch.randn(10, 16)
    torch.save({"state_dict": sd}, tmp_path / "transformer.ckpt")
    _assert_same(model, load_vqgan(TokenizerConfig(ckpt_path=str(tmp_path / "transformer.ckpt"), **F16_TINY)))


def test_a_tokenizer_folder_yaml_cannot_ask_for_pickle_loading(tmp_path):
    """``load_tokenizer_dir`` reads ``.ckpt`` files with ``weights_only=True`` whatever the folder's yaml says:
    a folder without its safetensors, whose yaml points at a pickled checkpoint with ``trust_checkpoint: true``,
    is refused (a copied or edited run folder must not run code on load)."""
    model = _random_model(**F16_TINY)
    _save_taming_ckpt(model, tmp_path / "last.ckpt", {"callbacks": {"x": torch.nn.Identity()}})  # pickles a class
    folder = tmp_path / "tok"
    save_tokenizer(model, TokenizerConfig(**F16_TINY), folder)
    (folder / "vqgan.safetensors").unlink()
    doc = yaml.safe_load((folder / CONFIG_FILE).read_text())
    doc.update(ckpt_path=str(tmp_path / "last.ckpt"), trust_checkpoint=True)
    (folder / CONFIG_FILE).write_text(yaml.safe_dump(doc))
    with pytest.raises(CheckpointError, match="weights_only=True"):
        load_tokenizer_dir(folder)
