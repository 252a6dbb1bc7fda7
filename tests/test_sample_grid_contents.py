"""``training.sample_grid.SampleGrid``: the first ``n`` captions of the batch, sampled with argmax tokens, the
``train.stages`` steps and the run's seed on every rank (the grid does not change with the rank count, and
successive steps are comparable), decoded from [-1, 1] to bytes and laid out in a near-square grid; only rank 0
writes it."""

from __future__ import annotations

import numpy as np
import torch

from tests.trainer_utils import one_thread, tiny_model_dict  # noqa: F401 (autouse)


def setup(tmp_path):
    from tokenization.vqgan import TokenizerConfig, VQModel, save_tokenizer
    from training.model import build_model
    from training.model.config import model_config

    torch.manual_seed(0)
    tok = TokenizerConfig(n_embed=32)
    save_tokenizer(VQModel(tok).eval(), tok, tmp_path / "tokenizer")
    grid_h, grid_w = tok.grid_size
    model = build_model(model_config(tiny_model_dict(grid_h=grid_h, grid_w=grid_w)), "pdm").eval()
    text = torch.randn(6, 5, tiny_model_dict()["text_dim"])
    batch = {"text": text, "text_mask": torch.ones(6, 5, dtype=torch.bool)}
    return model, batch, tok.pixels


def test_grid_holds_the_first_n_argmax_samples_decoded_on_rank_0_only(tmp_path, monkeypatch):
    from PIL import Image

    import training.model.sampling as sampling
    from tokenization.vqgan import load_tokenizer_dir
    from training.sample_grid import SampleGrid

    model, batch, px = setup(tmp_path)
    calls = []
    real = sampling.generate

    def spy(model, text, mask, cfg):
        res = real(model, text, mask, cfg)
        calls.append((text.shape[0], cfg, res.tokens.clone()))
        return res

    monkeypatch.setattr(sampling, "generate", spy)
    seen = []
    for rank in (1, 0, 0):
        grid = SampleGrid(str(tmp_path / "tokenizer"), tmp_path / f"samples{rank}", stages=4, n=4, rank=rank, seed=5)
        seen.append(grid(12, model, batch))
    assert seen[0] is None and not (tmp_path / "samples1").exists()  # rank 1 samples, writes nothing
    assert seen[1] == seen[2] == tmp_path / "samples0" / "step_00000012.png"
    for n, cfg, _ in calls:
        assert n == 4 and (cfg.seed, cfg.steps, cfg.temperature, cfg.batch_size) == (5, 4, 0.0, 4)
    assert torch.equal(calls[0][2], calls[1][2]) and torch.equal(calls[1][2], calls[2][2])  # same on every rank
    img = np.asarray(Image.open(seen[1]))
    assert img.shape == (2 * (px + 2) + 2, 2 * (px + 2) + 2, 3)  # 4 samples: 2 x 2, 2 px white padding
    with torch.no_grad():
        decoded = load_tokenizer_dir(tmp_path / "tokenizer").decode(calls[1][2])
    want = ((decoded + 1) * 127.5).round().clamp(0, 255).byte()
    first = img[2 : 2 + px, 2 : 2 + px]
    assert np.array_equal(first, want[0].permute(1, 2, 0).numpy())
    fourth = img[px + 4 : 2 * px + 4, px + 4 : 2 * px + 4]
    assert np.array_equal(fourth, want[3].permute(1, 2, 0).numpy())
