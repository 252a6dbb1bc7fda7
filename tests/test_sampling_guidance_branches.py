"""Classifier-free guidance in the progressive sampler: of the two branches run in one forward, the state
logits and the hidden states handed on (to the state order, revision and the learned order's policy) are
those of the CONDITIONAL branch; only the token logits are mixed."""

import torch

from training.model.config import model_config
from training.model.pdm import PDM
from training.model.sampling import GuidedForward, SampleConfig, cfg_mix

CFG = model_config(
    "tiny", layers=1, cond_dropout=0.0, dim=32, ffn_dim=64, heads=2, grid_h=2, grid_w=4, codebook_size=16, text_dim=8
)


def test_guided_forward_hands_on_the_conditional_branch():
    torch.manual_seed(0)
    pdm = PDM(CFG).eval()
    g = torch.Generator().manual_seed(0)
    B = 3
    text, tmask = torch.randn(B, 2, 8, generator=g), torch.ones(B, 2, dtype=torch.bool)
    tokens = torch.randint(0, 17, (B, 8), generator=g)  # codes and [mask] (16)
    with torch.no_grad():
        cond = pdm(tokens, text, tmask, drop_text=torch.zeros(B, dtype=torch.bool))
        uncond = pdm(tokens, text, tmask, drop_text=torch.ones(B, dtype=torch.bool))
        fwd = GuidedForward(pdm, text, tmask, SampleConfig(guidance_scale=3.0))
        tok, state = fwd(tokens)
    assert (cond.hidden - uncond.hidden).abs().max() > 1e-3  # the branches differ
    assert torch.allclose(fwd.hidden, cond.hidden, atol=1e-5)
    assert torch.allclose(state, cond.state_logits, atol=1e-5)
    guided = uncond.token_logits + 3.0 * (cond.token_logits - uncond.token_logits)  # s = 3 extrapolates past cond
    assert torch.allclose(tok, guided, atol=1e-4)
    assert torch.allclose(cfg_mix(cond.token_logits, uncond.token_logits, 3.0), guided, atol=1e-4)
