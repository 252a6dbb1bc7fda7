"""The PDM objective position by position: which logits the token and state losses read (gradients), label
smoothing, the metrics' positions, and how many pseudo errors are injected (section 3.1 bound, error_frac)."""

import math

import torch
import torch.nn.functional as F

from training.model.error_injection import inject_errors
from training.model.pdm import PDMOutput
from training.model.pdm_loss import pdm_loss
from training.model.tuples import make_tuples

K = 16
M = K  # mask id
STAGE_OF = torch.tensor([[0, 0, 1, 1, 2, 2, 3, 3], [3, 2, 1, 0, 3, 2, 1, 0]])
TOKENS = torch.tensor([[5, 6, 7, 8, 9, 10, 11, 12], [0, 1, 2, 3, 4, 5, 6, 7]])


def _tuples(seed=0):
    """t = 3 / 2 with every visible token of the previous stage corrupted: generate AND injected positions."""
    g = torch.Generator().manual_seed(seed)
    b = make_tuples(TOKENS, STAGE_OF, 4, M, K, p_error=1.0, error_frac=1.0, stage=torch.tensor([3, 2]), generator=g)
    assert b.injected.any(1).all() and b.generate.any(1).all()
    return b


def _leaf_output(seed=0):
    g = torch.Generator().manual_seed(seed)
    tok = torch.randn(2, 8, K, generator=g).requires_grad_()
    state = torch.randn(2, 8, 3, generator=g).requires_grad_()
    return tok, state, PDMOutput(tok, state, torch.zeros(2, 8, 1))


def _rows_with_grad(x):
    return x.grad.abs().sum(-1) > 0


def test_token_loss_reads_exactly_the_generated_and_injected_positions():
    b = _tuples()
    tok, state, out = _leaf_output()
    loss, m = pdm_loss(out, b, state_weight=0.0)
    loss.backward()
    expected = b.generate | b.injected
    assert torch.equal(_rows_with_grad(tok), expected)  # not the kept visible tokens, not the later [mask]s
    assert torch.equal(expected, b.token_loss_mask)
    # the value: a mean over the scored positions (not over all L, not over the samples)
    ref = F.cross_entropy(tok[expected].detach(), TOKENS[expected])
    assert math.isclose(m["token_loss"].item(), ref.item(), rel_tol=1e-5)


def test_state_loss_reads_every_position_with_its_label():
    b = _tuples()
    tok, state, out = _leaf_output()
    loss, m = pdm_loss(out, b, state_weight=2.0)
    # the state loss is the CE over every position (KEEP labels included), mean over B * L
    ref = F.cross_entropy(state.detach().reshape(-1, 3), b.state_targets.reshape(-1))
    assert math.isclose(m["state_loss"].item(), ref.item(), rel_tol=1e-5)
    assert math.isclose(loss.item(), m["token_loss"].item() + 2.0 * ref.item(), rel_tol=1e-5)
    loss.backward()
    assert _rows_with_grad(state).all()


def test_label_smoothing_reaches_the_token_loss():
    b = _tuples()
    perfect = F.one_hot(TOKENS, K).float() * 50
    states = F.one_hot(b.state_targets, 3).float() * 50
    out = PDMOutput(perfect, states, torch.zeros(2, 8, 1))
    _, plain = pdm_loss(out, b)
    _, smooth = pdm_loss(out, b, label_smoothing=0.1)
    m = b.token_loss_mask
    ref = F.cross_entropy(perfect[m], TOKENS[m], label_smoothing=0.1)
    assert plain["token_loss"].item() < 1e-6 and smooth["token_loss"].item() > 1.0
    assert math.isclose(smooth["token_loss"].item(), ref.item(), rel_tol=1e-5)
    assert smooth["state_loss"].item() < 1e-6  # the state CE is never smoothed


def test_token_acc_is_on_generated_and_revise_acc_on_injected_positions():
    b = _tuples()
    logits = F.one_hot(TOKENS, K).float() * 50
    logits[b.injected] = -logits[b.injected]  # wrong everywhere an error was injected, right elsewhere
    out = PDMOutput(logits, torch.zeros(2, 8, 3), torch.zeros(2, 8, 1))
    _, m = pdm_loss(out, b)
    assert m["token_acc"].item() == 1.0 and m["revise_acc"].item() == 0.0
    assert m["revise_correct"].item() == 0 and m["revise_injected"].item() == b.injected.sum().item()
    logits = F.one_hot(TOKENS, K).float() * 50
    logits[b.generate] = -logits[b.generate]  # wrong at the generated positions only
    _, m = pdm_loss(PDMOutput(logits, torch.zeros(2, 8, 3), torch.zeros(2, 8, 1)), b)
    assert m["token_acc"].item() == 0.0 and m["revise_acc"].item() == 1.0
    logits = F.one_hot(TOKENS, K).float() * 50
    wrong = b.generate & (torch.arange(8) % 2 == 0)  # some of the generated positions only
    logits[wrong] = -logits[wrong]
    _, m = pdm_loss(PDMOutput(logits, torch.zeros(2, 8, 3), torch.zeros(2, 8, 1)), b)
    assert m["token_acc"].item() == (1 - wrong.sum() / b.generate.sum()).item() and m["revise_acc"].item() == 1.0
    none = make_tuples(TOKENS, STAGE_OF, 4, M, K, p_error=0.0, stage=torch.tensor([3, 2]))
    _, m = pdm_loss(PDMOutput(logits, torch.zeros(2, 8, 3), torch.zeros(2, 8, 1)), none)
    assert not none.injected.any() and m["revise_acc"].item() == 0.0 and m["revise_injected"].item() == 0


# ---------------------------------------------------------------- how many errors (section 3.3)
def test_cap_is_the_previous_stage_size_not_the_current_one():
    """sum_i I[z^t = -1] <= sum_i I[z^{t-1} = 1] (section 3.1) with unequal stages: stage 0 has 1 position,
    stage 1 has 2, stage 2 has 5. At t = 2 six tokens are visible; the cap is 2 (stage 1), not 5 (stage 2)."""
    stage_of = torch.tensor([[0, 1, 1, 2, 2, 2, 2, 2]]).expand(64, 8)
    tokens = torch.arange(8).expand(64, 8)
    g = torch.Generator().manual_seed(0)
    b = make_tuples(tokens, stage_of, 3, M, K, p_error=1.0, error_frac=1.0, stage=torch.full((64,), 2), generator=g)
    assert (b.injected.sum(1) == 2).all()
    b = make_tuples(tokens, stage_of, 3, M, K, p_error=1.0, error_frac=1.0, stage=torch.full((64,), 1), generator=g)
    assert (b.injected.sum(1) == 1).all()  # t = 1: one visible token, stage 0 had one position


def test_a_chosen_instance_gets_at_least_one_error_even_with_a_zero_fraction():
    inputs = torch.arange(8).expand(32, 8)
    out, inj = inject_errors(inputs, torch.ones(32, 8, dtype=torch.bool), K, p_error=1.0, error_frac=0.0)
    assert (inj.sum(1) == 1).all() and (out[inj] != inputs[inj]).all()


def test_error_count_is_ceil_of_the_fraction():
    inputs = torch.arange(8).expand(64, 8)
    cand = torch.zeros(64, 8, dtype=torch.bool)
    cand[:, :3] = True  # n = 3 candidates
    _, inj = inject_errors(inputs, cand, K, p_error=1.0, error_frac=0.5)  # ceil(1.5) = 2
    assert (inj.sum(1) == 2).all() and (inj <= cand).all()


def test_error_fraction_is_drawn_uniformly_in_its_range():
    B, n = 4000, 10
    g = torch.Generator().manual_seed(0)
    inputs = torch.randint(0, K, (B, n), generator=g)
    _, inj = inject_errors(inputs, torch.ones(B, n, dtype=torch.bool), K, 1.0, (0.3, 0.8), generator=g)
    counts = torch.bincount(inj.sum(1), minlength=n + 1)
    # f ~ U[0.3, 0.8], k = ceil(10 f): k = 3 (f = 0.3 exactly) never; k in 4..8, each with probability 0.2
    assert counts[:3].sum() == 0 and counts[9:].sum() == 0 and counts[3] <= 1
    freq = counts[4:9].float() / B
    assert (freq - 0.2).abs().max() < 0.03, freq


def test_the_random_stage_is_uniform_over_all_T_stages():
    """t ~ U{0..T-1}: stage 0 (everything [mask], the sampler's first step) is trained as often as the others."""
    B, T = 4000, 4
    tokens = torch.randint(0, K, (B, 8), generator=torch.Generator().manual_seed(0))
    stage_of = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3]).expand(B, 8)
    b = make_tuples(tokens, stage_of, T, M, K, p_error=0.0, generator=torch.Generator().manual_seed(1))
    freq = torch.bincount(b.stage, minlength=T).float() / B
    assert freq.shape == (T,) and (freq - 1 / T).abs().max() < 0.03, freq
    first = b.stage == 0
    assert (b.inputs[first] == M).all() and (b.visible.sum(1)[first] == 0).all()
