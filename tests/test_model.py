"""PDM / ARModel / ModelConfig: shapes, no causal mask, CFG null text, KV cache, parameter counts."""

from pathlib import Path

import pytest
import torch

from training.model.ar_model import ARModel, ar_loss
from training.model.config import PRESETS, ModelConfig, check_against, count_parameters, model_config
from training.model.pdm import PDM, PDMOutput
from training.model.states import NUM_STATES


def assert_close(a, b, atol=1e-5, rtol=1e-4):
    """torch.allclose with a message (torch.testing.assert_close imports torch.distributed: ~3 s)."""
    a, b = torch.as_tensor(a), torch.as_tensor(b, dtype=torch.as_tensor(a).dtype)
    assert torch.allclose(a, b, atol=atol, rtol=rtol), (a - b).abs().max()


ROOT = Path(__file__).resolve().parents[1]
TINY = model_config(
    "tiny", layers=2, cond_dropout=0.0, dim=64, ffn_dim=128, grid_h=4, grid_w=6, codebook_size=64, text_dim=32
)  # small enough for a loaded 2-core machine


def _inputs(cfg=TINY, B=2, S=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, cfg.codebook_size + 1, (B, cfg.seq_len), generator=g)  # includes [mask]
    text = torch.randn(B, S, cfg.text_dim, generator=g)
    mask = torch.ones(B, S, dtype=torch.bool)
    mask[-1, S - 2 :] = False
    return tokens, text, mask


@pytest.fixture(scope="module")
def pdm():
    torch.manual_seed(0)
    return PDM(TINY).eval()


def test_forward_shapes_and_attributes(pdm):
    tokens, text, mask = _inputs()
    out = pdm(tokens, text, mask)
    assert isinstance(out, PDMOutput)
    B, L, K = 2, TINY.seq_len, TINY.codebook_size
    assert out.token_logits.shape == (B, L, K)  # the head never scores [mask]
    assert out.state_logits.shape == (B, L, NUM_STATES)
    assert out.hidden.shape == (B, L, TINY.dim)
    assert (pdm.mask_id, pdm.codebook_size, pdm.seq_len) == (K, K, L)
    with pytest.raises(ValueError, match="image tokens"):
        pdm(tokens[:, :-1], text, mask)


def test_no_causal_mask(pdm):
    tokens, text, mask = _inputs()
    changed = tokens.clone()
    changed[:, -1] = (tokens[:, -1] + 1) % TINY.codebook_size  # change the LAST position only
    a, b = pdm(tokens, text, mask), pdm(changed, text, mask)
    assert not torch.allclose(a.token_logits[:, 0], b.token_logits[:, 0])  # the FIRST position sees it
    assert not torch.allclose(a.state_logits[:, 0], b.state_logits[:, 0])


def test_text_padding_is_ignored(pdm):
    tokens, text, mask = _inputs()
    other = text.clone()
    other[-1, -2:] = 100.0  # padded positions of the last sample
    a, b = pdm(tokens, text, mask), pdm(tokens, other, mask)
    assert_close(a.token_logits, b.token_logits)


def test_drop_text_uses_null_embedding(pdm):
    tokens, text, mask = _inputs()
    other_text = torch.randn_like(text)
    drop = torch.tensor([True, False])
    a = pdm(tokens, text, mask, drop_text=drop)
    b = pdm(tokens, other_text, mask, drop_text=drop)
    assert_close(a.token_logits[0], b.token_logits[0])  # dropped: text is unused
    assert not torch.allclose(a.token_logits[1], b.token_logits[1])  # kept: text matters
    # the dropped sample's output is a function of the learnable null embedding
    with torch.no_grad():
        pdm.text.null_text.add_(1.0)
        c = pdm(tokens, text, mask, drop_text=drop)
        pdm.text.null_text.sub_(1.0)
    assert not torch.allclose(a.token_logits[0], c.token_logits[0])
    # a sample dropped is the same as an empty caption
    empty = pdm(tokens, text, torch.zeros_like(mask))
    assert_close(a.token_logits[0], empty.token_logits[0])


def test_condition_dropout_only_in_training():
    torch.manual_seed(0)
    model = PDM(model_config(TINY, cond_dropout=1.0))
    tokens, text, mask = _inputs()
    model.train()
    a, b = model(tokens, text, mask), model(tokens, torch.randn_like(text), mask)
    assert_close(a.token_logits, b.token_logits)  # every sample dropped
    a.token_logits.sum().backward()
    assert model.text.null_text.grad is not None and model.text.null_text.grad.abs().sum() > 0
    model.eval()
    a, b = model(tokens, text, mask), model(tokens, torch.randn_like(text), mask)
    assert not torch.allclose(a.token_logits, b.token_logits)


def test_attn_bias_text(pdm):
    tokens, text, mask = _inputs()
    base = pdm(tokens, text, mask)
    assert_close(pdm(tokens, text, mask, attn_bias_text=0.0).token_logits, base.token_logits)
    up = pdm(tokens, text, mask, attn_bias_text=3.0)
    assert not torch.allclose(up.token_logits, base.token_logits)
    drop = torch.ones(2, dtype=torch.bool)  # no text keys visible: the bias has nothing to act on
    assert_close(
        pdm(tokens, text, mask, drop_text=drop, attn_bias_text=3.0).token_logits,
        pdm(tokens, text, mask, drop_text=drop).token_logits,
    )


def test_variants_tied_1d_and_checkpointing():
    torch.manual_seed(0)
    cfg = model_config(TINY, tie_embeddings=True, pos_emb="1d")
    model = PDM(cfg)
    assert model.token_head.weight is model.tok_emb.weight
    assert count_parameters(cfg) == count_parameters(model_config(TINY, pos_emb="1d")) - cfg.codebook_size * cfg.dim
    tokens, text, mask = _inputs()
    model.train()
    drop = torch.zeros(2, dtype=torch.bool)
    torch.manual_seed(1)
    model(tokens, text, mask, drop).token_logits.square().mean().backward()
    g1 = model.blocks[0].attn.qkv.weight.grad.clone()
    model.zero_grad()
    model.grad_checkpointing = True
    model(tokens, text, mask, drop).token_logits.square().mean().backward()
    assert_close(model.blocks[0].attn.qkv.weight.grad, g1)


def test_ar_kv_cache_matches_full_forward():
    torch.manual_seed(0)
    model = ARModel(TINY).eval()
    tokens, text, mask = _inputs()
    tokens = tokens.clamp(max=TINY.codebook_size - 1)
    full = model(tokens, text, mask)
    assert full.shape == (2, TINY.seq_len, TINY.codebook_size)
    text_kv = model.encode_text(text, mask)
    cache = model.init_cache(2)
    prev = torch.full((2,), model.bos_id)
    steps = []
    for i in range(TINY.seq_len):
        steps.append(model.step(prev, cache, text_kv))
        prev = tokens[:, i]
    assert_close(torch.stack(steps, 1), full, atol=1e-5, rtol=1e-4)
    with pytest.raises(IndexError):
        model.step(prev, cache, text_kv)
    # causal: logits at i depend on tokens < i only
    changed = tokens.clone()
    changed[:, 10] = (tokens[:, 10] + 1) % TINY.codebook_size
    other = model(changed, text, mask)
    assert_close(other[:, :11], full[:, :11])
    assert not torch.allclose(other[:, 11:], full[:, 11:])
    loss, metrics = ar_loss(full, tokens)
    assert torch.isfinite(loss) and 0 <= metrics["token_acc"] <= 1


def test_ar_same_size_as_pdm():
    for name in ("tiny", "pdm-1.2b"):
        pdm_n, ar_n = count_parameters(name), count_parameters(name, kind="ar")
        assert abs(pdm_n - ar_n) / pdm_n < 0.001  # differs only by the state head


def test_parameter_counts_on_meta_device():
    n = count_parameters("pdm-1.2b")
    assert abs(n - 1.2e9) / 1.2e9 <= 0.05, n
    appendix = count_parameters("pdm-paper-appendix")
    print(f"\npdm-paper-appendix: {appendix:,} trainable parameters; pdm-1.2b: {n:,}")
    assert 0.55e9 < appendix < 0.65e9
    assert count_parameters("tiny") < 3e6
    assert count_parameters("pdm-1.2b", trainable_only=False) == n  # nothing in PDM is frozen


def test_config_presets_and_yaml():
    for name in PRESETS:  # the preset files under configs/models: tests/test_configs.py
        cfg = model_config(name)
        assert cfg.preset == name and cfg.dim % cfg.heads == 0
    assert "how 1.2b is reached" in (ROOT / "configs/models/pdm-1.2b.yaml").read_text().lower()
    merged = model_config({"preset": "small", "layers": 2})
    assert (merged.dim, merged.layers) == (512, 2)
    with pytest.raises(ValueError, match="unknown preset"):
        model_config("huge")
    with pytest.raises(ValueError, match="divisible"):
        ModelConfig(dim=130, heads=4)


def test_check_against():
    class Tok:
        n_embed, grid_size = TINY.codebook_size, TINY.grid

    class Text:
        d_model = TINY.text_dim

    check_against(TINY, Tok(), Text())
    Tok.n_embed = 512
    with pytest.raises(ValueError, match="codebook_size"):
        check_against(TINY, Tok(), None)
    Tok.n_embed, Tok.grid_size = TINY.codebook_size, (16, 16)
    with pytest.raises(ValueError, match="grid"):
        check_against(TINY, Tok(), None)
    Text.d_model = 768
    with pytest.raises(ValueError, match="text_dim"):
        check_against(TINY, None, Text())
