"""Training tuples, error injection, PDM loss and the Emage two-pass mode, on hand-made tensors."""

import pytest
import torch

from training.model.config import model_config
from training.model.error_injection import inject_errors
from training.model.orders import get_order
from training.model.pdm import PDM, PDMOutput
from training.model.pdm_loss import pdm_loss
from training.model.states import GENERATE, KEEP, REVISE
from training.model.tuples import make_tuples
from training.model.two_pass_loss import emage_loss


def assert_close(a, b, atol=1e-5, rtol=1e-4):
    """torch.allclose with a message (torch.testing.assert_close imports torch.distributed: ~3 s)."""
    a, b = torch.as_tensor(a), torch.as_tensor(b, dtype=torch.as_tensor(a).dtype)
    assert torch.allclose(a, b, atol=atol, rtol=rtol), (a - b).abs().max()


K = 16
M = K  # mask id
STAGE_OF = torch.tensor([[0, 0, 1, 1, 2, 2, 3, 3], [3, 2, 1, 0, 3, 2, 1, 0]])
TOKENS = torch.tensor([[5, 6, 7, 8, 9, 10, 11, 12], [0, 1, 2, 3, 4, 5, 6, 7]])


def test_tuples_element_by_element():
    b = make_tuples(TOKENS, STAGE_OF, T=4, mask_id=M, codebook_size=K, p_error=0.0, stage=torch.tensor([2, 1]))
    # sample 0, t = 2: stages 0,1 visible (pos 0-3), stage 2 generated (pos 4,5), stage 3 masked, not now
    assert b.inputs[0].tolist() == [5, 6, 7, 8, M, M, M, M]
    assert b.token_loss_mask[0].tolist() == [0, 0, 0, 0, 1, 1, 0, 0]
    assert b.state_targets[0].tolist() == [KEEP] * 4 + [GENERATE] * 2 + [KEEP] * 2
    # sample 1, t = 1: stage 0 visible (pos 3, 7), stage 1 generated (pos 2, 6)
    assert b.inputs[1].tolist() == [M, M, M, 3, M, M, M, 7]
    assert b.token_loss_mask[1].tolist() == [0, 0, 1, 0, 0, 0, 1, 0]
    assert b.state_targets[1].tolist() == [KEEP, KEEP, GENERATE, KEEP, KEEP, KEEP, GENERATE, KEEP]
    assert torch.equal(b.token_targets, TOKENS)
    assert b.visible[1].tolist() == [0, 0, 0, 1, 0, 0, 0, 1]
    assert not b.injected.any() and b.stage.tolist() == [2, 1]


def test_tuples_first_stage_has_nothing_visible():
    b = make_tuples(TOKENS, STAGE_OF, 4, M, K, p_error=1.0, stage=torch.tensor([0, 0]))
    assert (b.inputs == M).all() and not b.injected.any()  # nothing to corrupt at t = 0
    assert b.token_loss_mask.tolist() == (STAGE_OF == 0).tolist()


def test_injection_with_p_error_one():
    g = torch.Generator().manual_seed(0)
    b = make_tuples(
        TOKENS,
        STAGE_OF,
        4,
        M,
        K,
        p_error=1.0,
        error_frac=1.0,
        cap_revise=False,
        stage=torch.tensor([3, 2]),
        generator=g,
    )
    # error_frac 1, no cap: every visible token is replaced
    assert b.injected.tolist() == b.visible.tolist()
    inj = b.injected
    assert (b.inputs[inj] != TOKENS[inj]).all() and (b.inputs[inj] < K).all()  # other codes, never [mask]
    assert (b.state_targets[inj] == REVISE).all() and b.token_loss_mask[inj].all()
    assert (b.inputs[~b.visible] == M).all() and (b.inputs[b.visible & ~inj] == TOKENS[b.visible & ~inj]).all()
    # the paper's bound (section 3.1): no more revisions than positions written at the previous stage
    b = make_tuples(TOKENS, STAGE_OF, 4, M, K, p_error=1.0, error_frac=1.0, stage=torch.tensor([3, 2]), generator=g)
    assert b.injected.sum(1).tolist() == [2, 2] and (b.injected <= b.visible).all()


def test_injection_statistics():
    B, L, T = 2000, 64, 8
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, K, (B, L), generator=g)
    stage_of = get_order("random")(B, L, T, generator=g)
    stage = torch.randint(1, T, (B,), generator=g)
    none = make_tuples(tokens, stage_of, T, M, K, p_error=0.0, stage=stage, generator=g)
    assert not none.injected.any() and not (none.state_targets == REVISE).any()
    always = make_tuples(tokens, stage_of, T, M, K, p_error=1.0, stage=stage, generator=g)
    assert (always.injected.sum(1) >= 1).all()  # every instance, at least one token
    inj = always.injected
    assert (always.inputs[inj] != tokens[inj]).all() and (always.inputs[inj] != M).all()
    assert (always.injected.sum(1) <= L // T).all()  # the previous-stage bound
    some = make_tuples(tokens, stage_of, T, M, K, p_error=0.3, stage=stage, generator=g)
    rate = some.injected.any(1).float().mean().item()
    assert 0.26 < rate < 0.34  # ~ Bernoulli(0.3) per instance
    frac = some.injected.sum(1)[some.injected.any(1)].float() / some.visible.sum(1)[some.injected.any(1)]
    assert frac.max() <= 0.2 + 1 / 8 + 1e-6  # ceil(U[0, 0.2] * n)


def test_inject_errors_contract():
    inputs = torch.tensor([[3, 3, M, M], [0, 15, 7, M]])
    cand = inputs != M
    for seed in range(20):
        out, inj = inject_errors(
            inputs, cand, K, p_error=1.0, error_frac=(0.0, 1.0), generator=torch.Generator().manual_seed(seed)
        )
        assert (inj <= cand).all() and (inj.sum(1) >= 1).all()
        assert (out[inj] != inputs[inj]).all() and (out < K)[inj].all() and (out[~inj] == inputs[~inj]).all()
    with pytest.raises(ValueError):
        inject_errors(inputs, cand, K, error_frac=(0.5, 0.1))


def _fake_output(token_logits, state_logits):
    return PDMOutput(token_logits, state_logits, torch.zeros(*token_logits.shape[:2], 1))


def test_pdm_loss_values_and_metrics():
    b = make_tuples(
        TOKENS,
        STAGE_OF,
        4,
        M,
        K,
        p_error=1.0,
        error_frac=1.0,
        stage=torch.tensor([2, 1]),
        generator=torch.Generator().manual_seed(0),
    )
    perfect = torch.nn.functional.one_hot(TOKENS, K).float() * 50
    state = torch.nn.functional.one_hot(b.state_targets, 3).float() * 50
    loss, m = pdm_loss(_fake_output(perfect, state), b)
    assert loss.item() < 1e-6 and m["token_acc"] == 1 and m["state_acc"] == 1
    assert m["revise_precision"] == 1 and m["revise_recall"] == 1 and m["revise_true"] == b.injected.sum()
    # uniform logits: CE = log K for tokens, log 3 for states
    loss, m = pdm_loss(_fake_output(torch.zeros(2, 8, K), torch.zeros(2, 8, 3)), b, state_weight=0.5)
    assert_close(m["token_loss"], torch.tensor(K).log())
    assert_close(loss, torch.tensor(K).log() + 0.5 * torch.tensor(3.0).log())
    # revise precision / recall: predict REVISE at one true and one false position
    state = torch.zeros(2, 8, 3)
    true_pos = b.injected.nonzero()[0]
    state[true_pos[0], true_pos[1], REVISE] = 9
    false_pos = (~b.injected).nonzero()[0]
    state[false_pos[0], false_pos[1], REVISE] = 9
    _, m = pdm_loss(_fake_output(perfect, state), b)
    assert m["revise_precision"] == 0.5
    assert_close(m["revise_recall"], 1 / b.injected.sum().float())


def test_pdm_learns_a_fixed_batch():
    torch.manual_seed(0)
    cfg = model_config(
        "tiny", layers=2, dim=64, ffn_dim=128, grid_h=4, grid_w=4, codebook_size=32, text_dim=16, cond_dropout=0.0
    )
    model = PDM(cfg).train()
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 32, (8, 16), generator=g)
    text, tmask = torch.randn(8, 3, 16, generator=g), torch.ones(8, 3, dtype=torch.bool)
    stage_of = get_order("random")(8, 16, 4, generator=g)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _step in range(60):
        b = make_tuples(tokens, stage_of, 4, model.mask_id, 32, p_error=0.3, generator=g)
        loss, m = pdm_loss(model(b.inputs, text, tmask), b)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    last = sum(losses[-10:]) / 10
    assert losses[0] > 3.0 and last < 0.7 * losses[0], (losses[0], last)  # log(32) + log(3) = 4.6 at init


def test_emage_two_passes():
    torch.manual_seed(0)
    cfg = model_config("tiny", layers=1, dim=32, ffn_dim=64, heads=2, grid_h=4, grid_w=4, codebook_size=32, text_dim=16)
    model = PDM(cfg).train()
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 32, (4, 16), generator=g)
    text, tmask = torch.randn(4, 3, 16, generator=g), torch.ones(4, 3, dtype=torch.bool)
    calls = []
    hook = model.register_forward_hook(
        lambda mod, args, kw_out: calls.append((args[0].clone(), torch.is_grad_enabled()))
    )
    loss, m = emage_loss(model, tokens, text, tmask, generator=g)
    hook.remove()
    assert len(calls) == 2
    (y_mask, grad1), (y_obs, grad2) = calls
    assert not grad1 and grad2  # Algorithm 2: loss only on the second pass
    assert ((y_mask == model.mask_id) | (y_mask == tokens)).all() and (y_mask == model.mask_id).any()
    assert (y_obs == model.mask_id).sum(1).min() >= 1
    loss.backward()
    assert torch.isfinite(loss) and model.token_head.weight.grad is not None
    assert_close(m["loss"], m["token_loss"])
    loss, m = emage_loss(
        model,
        tokens,
        text,
        tmask,
        remask="low_confidence",
        sample_first=True,
        first_pass_weight=0.5,
        state_weight=1.0,
        generator=g,
    )
    assert {"first_pass_loss", "state_loss"} <= set(m) and torch.isfinite(loss)
    loss.backward()
    assert model.state_head.weight.grad is not None
