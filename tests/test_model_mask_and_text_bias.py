"""PDM inputs the shape tests cannot see: the [mask] id has its own learnable embedding (not code 0's row),
and the CogView2 text bias c is added to the visible text keys only (key 0, the null text, stays at 0)."""

import torch

from training.model.config import model_config
from training.model.layers import text_attn_bias
from training.model.pdm import PDM

TINY = model_config(
    "tiny", layers=1, cond_dropout=0.0, dim=32, ffn_dim=64, heads=2, grid_h=2, grid_w=4, codebook_size=16, text_dim=8
)


def _model():
    torch.manual_seed(0)
    return PDM(TINY).eval()


def _text(B=2, S=3):
    g = torch.Generator().manual_seed(0)
    return torch.randn(B, S, TINY.text_dim, generator=g), torch.ones(B, S, dtype=torch.bool)


def test_mask_id_is_embedded_by_its_own_row():
    model = _model()
    M = model.mask_id
    tokens = torch.tensor([[M, 3, M, 0, 5, M, 1, 0]])
    emb = model.embed(tokens)
    is_mask = tokens == M
    assert torch.equal(emb[is_mask], model.mask_emb.detach().expand(int(is_mask.sum()), -1))
    assert torch.equal(emb[~is_mask], model.tok_emb.weight[tokens[~is_mask]])
    assert not torch.allclose(model.embed(torch.tensor([[M]])), model.embed(torch.tensor([[0]])))
    text, tmask = _text(1)
    # a fully masked map (the sampler's start) and a map of code 0 are different inputs
    a = model(torch.full((1, 8), M), text, tmask).token_logits
    b = model(torch.zeros(1, 8, dtype=torch.long), text, tmask).token_logits
    assert (a - b).abs().max() > 1e-3
    # the [mask] row is trained: it gets a gradient from a masked input, code 0's row does not
    model.zero_grad()
    model(torch.full((1, 8), M), text, tmask).token_logits.square().mean().backward()
    assert model.mask_emb.grad.abs().sum() > 0
    assert model.tok_emb.weight.grad is None or model.tok_emb.weight.grad[0].abs().sum() == 0


def test_text_attn_bias_values_per_key():
    valid = torch.tensor([[True, True, True, False], [True, False, False, False]])  # key 0 = the null text
    bias = text_attn_bias(valid, 2.5, torch.float32)
    assert bias.shape == (2, 1, 1, 4)
    b = bias[:, 0, 0]
    assert b[:, 0].tolist() == [0.0, 0.0]  # the null key is never biased
    assert b[0, 1:3].tolist() == [2.5, 2.5] and torch.isinf(b[0, 3]) and b[0, 3] < 0
    assert torch.isinf(b[1, 1:]).all() and (b[1, 1:] < 0).all()


def test_text_bias_moves_attention_between_text_and_null_key():
    """A constant c on every visible key would cancel in the softmax; here it must change the output
    substantially (it moves weight between the text keys and the null key)."""
    model = _model()
    text, tmask = _text()
    tokens = torch.randint(0, 16, (2, 8), generator=torch.Generator().manual_seed(1))
    base = model(tokens, text, tmask).token_logits
    up = model(tokens, text, tmask, attn_bias_text=3.0).token_logits
    assert (up - base).abs().max() > 1e-3
