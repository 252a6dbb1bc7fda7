"""Order learner (PDM 3.2, Eq. 6-7): Plackett-Luce log-probabilities against brute-force enumeration,
Gumbel-top-k frequencies, eligibility, rollouts, rewards (token accuracy, L2, CLIP with a tiny random
open_clip model), returns, the policy-gradient direction, the ``learned`` order, the sampler adapter,
the schedule and the config section. The learning proof is in test_order_learner_learning.py."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from core.config import ConfigError, from_dict
from training.model.config import model_config
from training.model.order_learner import (
    ClipReward,
    L2Reward,
    Learned,
    OrderLearnerConfig,
    PolicyBatch,
    PositionPolicy,
    TokenAccuracyReward,
    build_order_learner,
    discounted_returns,
    first_draw_entropy,
    generator_stage_of,
    greedy_topk,
    gumbel_topk,
    make_optimizer,
    phase,
    pl_log_prob,
    pl_set_log_prob,
    policy_update,
    rollout,
    step_rewards,
)
from training.model.orders import get_order, stage_sizes
from training.model.pdm import PDM
from training.model.sampling import SampleConfig
from training.model.tuples import make_tuples

CFG = dict(grid_h=2, grid_w=4, codebook_size=16, text_dim=8, dim=32, layers=1, heads=2, ffn_dim=64, cond_dropout=0.0)


@pytest.fixture(scope="module")
def pdm():
    torch.manual_seed(0)
    return PDM(model_config("tiny", **CFG)).eval()


def _batch(B=3, L=8, S=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return PolicyBatch(
        torch.randint(0, 16, (B, L), generator=g), torch.randn(B, S, 8, generator=g), torch.ones(B, S, dtype=torch.bool)
    )


def _learner(cfg=None, reward=None, stages=4):
    cfg = cfg or OrderLearnerConfig(reward="token_acc", hidden=16)
    return build_order_learner(model_config("tiny", **CFG), cfg, stages=stages, reward_fn=reward)


# ---------------------------------------------------------------- Plackett-Luce
def test_pl_log_prob_matches_brute_force():
    """n=4, k=2: exp(log p) over all 12 ordered pairs sums to 1 and equals the product formula
    e^{s_i}/Z * e^{s_j}/(Z - e^{s_i}); with a 5th, ineligible position the result is unchanged."""
    s = torch.tensor([[0.3, -1.2, 2.0, 0.7]])
    e = s.exp()[0]
    Z = e.sum()
    total = 0.0
    for i, j in itertools.permutations(range(4), 2):
        lp = pl_log_prob(s, torch.tensor([[i, j]]), torch.ones(1, 4, dtype=torch.bool))
        expect = e[i] / Z * e[j] / (Z - e[i])
        assert math.isclose(lp.exp().item(), expect.item(), rel_tol=1e-5)
        s5 = torch.cat([s, torch.tensor([[9.0]])], 1)  # a large but ineligible score
        elig = torch.tensor([[True, True, True, True, False]])
        assert math.isclose(pl_log_prob(s5, torch.tensor([[i, j]]), elig).item(), lp.item(), rel_tol=1e-6)
        total += lp.exp().item()
    assert math.isclose(total, 1.0, rel_tol=1e-6)
    sets = sum(
        pl_set_log_prob(s, torch.tensor([list(c)]), torch.ones(1, 4, dtype=torch.bool)).exp().item()
        for c in itertools.combinations(range(4), 2)
    )
    assert math.isclose(sets, 1.0, rel_tol=1e-6)


def test_pl_log_prob_batched_k3_and_gradient():
    """Batched k=3 (n=5) against an explicit loop; the gradient is finite."""
    torch.manual_seed(1)
    s = torch.randn(4, 5, requires_grad=True)
    elig = torch.ones(4, 5, dtype=torch.bool)
    idx = torch.stack([torch.randperm(5)[:3] for _ in range(4)])
    lp = pl_log_prob(s, idx, elig)
    for b in range(4):
        rest, ref = list(range(5)), 0.0
        for i in idx[b].tolist():
            ref += s[b, i].item() - torch.logsumexp(s[b, rest], 0).item()
            rest.remove(i)
        assert math.isclose(lp[b].item(), ref, rel_tol=1e-5, abs_tol=1e-6)
    lp.sum().backward()
    assert torch.isfinite(s.grad).all()


def test_gumbel_topk_frequencies_and_eligibility():
    """Empirical frequencies of ordered pairs match the PL probabilities; ineligible never drawn."""
    s = torch.tensor([1.0, 0.0, -0.5, 0.5, 5.0])
    elig = torch.tensor([True, True, True, True, False])
    N = 20000
    g = torch.Generator().manual_seed(0)
    idx = gumbel_topk(s.expand(N, 5), 2, elig.expand(N, 5), g)
    assert not (idx == 4).any()
    counts = {}
    for i, j in idx.tolist():
        counts[(i, j)] = counts.get((i, j), 0) + 1
    for (i, j), c in counts.items():
        p = pl_log_prob(s[None], torch.tensor([[i, j]]), elig[None]).exp().item()
        assert abs(c / N - p) < 4 * math.sqrt(p * (1 - p) / N) + 1e-3
    top = greedy_topk(s[None], 2, elig[None])
    assert top.tolist() == [[0, 3]]
    ent = first_draw_entropy(s[None], elig[None])
    p = s[:4].softmax(0)
    assert math.isclose(ent.item(), -(p * p.log()).sum().item(), rel_tol=1e-5)


def test_pg_step_with_positive_reward_increases_set_log_prob():
    """PL level: -R * log p(sampled) with R > 0 and one SGD step raises log p of that draw (and of the set)."""
    torch.manual_seed(0)
    s = torch.nn.Parameter(torch.randn(2, 6))
    elig = torch.ones(2, 6, dtype=torch.bool)
    elig[0, 1] = False
    idx = gumbel_topk(s, 3, elig, torch.Generator().manual_seed(3))
    before, set_before = pl_log_prob(s, idx, elig).detach(), pl_set_log_prob(s, idx, elig).detach()
    (-(1.0 * pl_log_prob(s, idx, elig)).sum()).backward()
    with torch.no_grad():
        s -= 0.1 * s.grad
    assert (pl_log_prob(s, idx, elig) > before).all()
    assert (pl_set_log_prob(s, idx, elig) > set_before).all()


def test_policy_update_with_positive_reward_increases_rollout_log_prob(pdm):
    """Full pipeline: a rollout, a constant reward of 1 (no baseline), one policy_update; replaying
    the same sets under the updated policy gives a higher log pi(tau) for every sample."""
    cfg = OrderLearnerConfig(reward="token_acc", hidden=16, baseline="none", entropy_coef=0.0, lr=1e-2)
    learner = _learner(cfg, reward=lambda tokens, b: torch.ones(tokens.shape[0]))
    b = _batch()
    g = torch.Generator().manual_seed(0)
    for p in learner.policy.parameters():  # a non-trivial start (the out layer starts at zero)
        torch.nn.init.normal_(p, 0.0, 0.3)
    ro = rollout(learner.policy, pdm, b.text, b.text_mask, 4, generator=torch.Generator().manual_seed(5))
    before = ro.log_prob.detach().sum(1)
    opt = torch.optim.SGD(learner.parameters(), lr=0.05)
    learner_rollout = learner._rollout
    learner._rollout = lambda model, bb, greedy, generator: rollout(
        learner.policy, model, bb.text, bb.text_mask, 4, picks=ro.picks
    )
    m = policy_update(learner, pdm, b, opt, g)
    learner._rollout = learner_rollout
    after = rollout(learner.policy, pdm, b.text, b.text_mask, 4, picks=ro.picks).log_prob.detach().sum(1)
    assert (after > before).all(), (before, after)
    assert m["reward"].item() == 1.0 and m["grad_norm"].item() > 0


# ---------------------------------------------------------------- rollouts, rewards, returns
def test_rollout_writes_every_position_once_with_stage_sizes(pdm):
    learner = _learner()
    b = _batch()
    for greedy, mode in ((False, "argmax"), (True, "sample")):
        ro = rollout(
            learner.policy,
            pdm,
            b.text,
            b.text_mask,
            4,
            greedy=greedy,
            token_mode=mode,
            generator=torch.Generator().manual_seed(0),
            previews=True,
        )
        assert (ro.tokens != pdm.mask_id).all() and (ro.tokens < 16).all()
        sizes = stage_sizes(8, 4)
        for t in range(4):
            assert ((ro.stage_of == t).sum(1) == sizes[t]).all()
            assert (ro.stage_of.gather(1, ro.picks[t]) == t).all()
        assert ro.log_prob.shape == (3, 4) and ro.entropy.shape == (3, 4)
        assert len(ro.previews) == 5 and torch.equal(ro.previews[-1], ro.tokens)
        assert (ro.previews[0] != pdm.mask_id).all()


def test_rewards_and_returns(pdm):
    b = _batch()
    tok = b.tokens.clone()
    tok[:, :2] = (tok[:, :2] + 1) % 16
    assert torch.allclose(TokenAccuracyReward()(tok, b), torch.full((3,), 6 / 8))

    decode = lambda t: (t.float() / 8 - 1).view(-1, 1, 2, 4).expand(-1, 3, -1, -1)  # noqa: E731
    b.images = decode(b.tokens)
    r = L2Reward(decode)(tok, b)
    assert torch.allclose(r, -((decode(tok) - b.images) ** 2).flatten(1).mean(1))
    assert (L2Reward(decode)(b.tokens, b) == 0).all() and (r < 0).all()

    learner = _learner()
    ro = rollout(learner.policy, pdm, b.text, b.text_mask, 4, previews=True)
    acc = TokenAccuracyReward()
    per, final = step_rewards(acc, ro, b, "per_step")
    assert torch.allclose(per.sum(1), acc(ro.tokens, b) - acc(ro.previews[0], b), atol=1e-6)  # telescopes
    assert torch.allclose(final, acc(ro.tokens, b))
    term, final = step_rewards(acc, ro, b, "terminal")
    assert (term[:, :-1] == 0).all() and torch.allclose(term[:, -1], acc(ro.tokens, b))
    assert torch.equal(final, term[:, -1])
    G = discounted_returns(torch.tensor([[1.0, 0.0, 2.0]]), 0.5)
    assert torch.allclose(G, torch.tensor([[1.5, 1.0, 2.0]]))


@pytest.mark.parametrize(
    "dev", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA"))]
)
def test_clip_reward_tiny_random_open_clip(dev):
    """Cosine of the decoded images' and the captions' CLIP features; the CLIP model (built on the CPU, as
    ``order_learner_hooks`` builds it) follows the tokens to their device."""
    open_clip = pytest.importorskip("open_clip")
    from open_clip.model import CLIPTextCfg, CLIPVisionCfg

    torch.manual_seed(0)
    clip = open_clip.CLIP(
        embed_dim=16,
        vision_cfg=CLIPVisionCfg(layers=1, width=32, head_width=16, patch_size=8, image_size=32),
        text_cfg=CLIPTextCfg(context_length=16, vocab_size=49408, width=32, heads=2, layers=1),
    ).eval()
    tok = open_clip.get_tokenizer("ViT-B-32")
    tokenizer = lambda caps: tok(caps, context_length=16)  # noqa: E731
    decode = lambda t: (t.float() / 8 - 1).view(-1, 1, 2, 4).repeat(1, 3, 4, 4)  # noqa: E731  [B, 3, 8, 16]
    b = _batch()
    b.captions = ["a red cube", "two dogs", "a red cube"]
    img = torch.nn.functional.interpolate(
        (decode(b.tokens) + 1) / 2, size=(32, 32), mode="bicubic", align_corners=False
    ).clamp(0, 1)
    reward = ClipReward(decode, clip, tokenizer)
    img = (img - reward.mean) / reward.std
    fi = torch.nn.functional.normalize(clip.encode_image(img), dim=-1)  # the expected features, on the CPU
    ft = torch.nn.functional.normalize(clip.encode_text(tokenizer(b.captions)), dim=-1)
    b.tokens = b.tokens.to(dev)
    r = reward(b.tokens, b)
    assert r.shape == (3,) and r.device == b.tokens.device and (r.abs() <= 1 + 1e-5).all()
    assert len(reward.cache) == 2  # text features cached per caption
    assert torch.allclose(r.cpu(), (fi * ft).sum(-1), atol=1e-5)


# ---------------------------------------------------------------- estimator, learner, schedule
@pytest.mark.parametrize("baseline", ["moving_average", "self_critical", "none"])
def test_policy_update_metrics_and_buffers(pdm, baseline):
    cfg = OrderLearnerConfig(
        reward="token_acc",
        hidden=16,
        baseline=baseline,
        reward_mode="per_step",
        discount=0.9,
        normalize_advantage=True,
        token_mode="sample",
        temperature=0.7,
    )
    learner = _learner(cfg)
    opt = make_optimizer(learner, cfg)
    m = policy_update(learner, pdm, _batch(), opt, torch.Generator().manual_seed(0))
    for k in ("reward", "final_reward", "entropy", "baseline", "advantage_std", "log_prob", "grad_norm", "loss"):
        assert torch.isfinite(m[k]) and m[k].dim() == 0, k
    assert m["pos_stage"].shape == (8,) and math.isclose(m["pos_stage"].mean().item(), 1.5, rel_tol=1e-6)
    assert ("greedy_reward" in m) == (baseline == "self_critical")
    sd = learner.state_dict()
    assert {"baseline", "baseline_ready", "stage_ema"} <= set(sd) and any(k.startswith("policy.") for k in sd)
    assert bool(sd["baseline_ready"]) == (baseline == "moving_average")
    if baseline == "moving_average":  # the logged baseline is the one the advantages used, not the updated one
        used = learner.baseline.clone()
        m = policy_update(learner, pdm, _batch(seed=1), opt, torch.Generator().manual_seed(1))
        assert not torch.equal(learner.baseline, used)
        assert math.isclose(m["baseline"].item(), used.mean().item(), rel_tol=1e-6)


def test_grad_clip_bounds_the_update(pdm):
    cfg = OrderLearnerConfig(reward="token_acc", hidden=16, baseline="none", grad_clip=1e-3)
    learner = _learner(cfg, reward=lambda t, b: torch.full((t.shape[0],), 100.0))
    for p in learner.policy.parameters():
        torch.nn.init.normal_(p, 0.0, 0.3)
    policy_update(learner, pdm, _batch(), None)
    norm = torch.sqrt(sum((p.grad**2).sum() for p in learner.parameters() if p.grad is not None))
    assert norm.item() <= 1e-3 * 1.01


def test_reward_model_is_not_part_of_the_learner():
    clip_like = torch.nn.Linear(3, 3)
    learner = _learner(reward=clip_like)
    assert all(not k.startswith("reward") for k in learner.state_dict())
    assert learner.reward_fn is clip_like


def test_phase_schedule():
    """(policy updates after trainer step s, whether step s's tuples came from the policy); the PDM trains
    at every step. alternate: policy_steps updates after the warm-up and every generator_steps steps on;
    joint: one update after every step past the warm-up (on that step's rollout)."""
    c = OrderLearnerConfig(warmup_steps=2, policy_steps=2, generator_steps=3)
    got = [phase(s, c) for s in range(1, 10)]
    assert [u for u, _ in got] == [0, 2, 0, 0, 2, 0, 0, 2, 0]
    assert [learned for _, learned in got] == [False, False] + [True] * 7
    joint = OrderLearnerConfig(mode="joint", warmup_steps=2)
    assert [phase(s, joint) for s in (1, 2, 3, 9)] == [(0, False), (0, False), (1, True), (1, True)]
    assert [phase(s, OrderLearnerConfig())[0] for s in (1, 2, 3)] == [1, 1, 1]  # no warm-up: every step


def test_generator_stage_of_mixes_learned_and_random(pdm):
    learner = _learner(
        OrderLearnerConfig(reward="token_acc", hidden=16, learned_fraction=1.0, warmup_steps=1, tuple_order="greedy")
    )
    torch.nn.init.normal_(learner.policy.pos_bias, 0.0, 5.0)
    b = _batch(B=4)
    g = torch.Generator().manual_seed(0)
    learned = generator_stage_of(learner, pdm, b, step=1, generator=g)
    assert torch.equal(learned, learner.stage_of(pdm, b))  # greedy: deterministic
    warm = generator_stage_of(learner, pdm, b, step=0, generator=g)
    assert not torch.equal(warm, learned)
    for so in (learned, warm):
        assert sorted((so == 0).sum(1).tolist()) == [2] * 4
    tup = make_tuples(b.tokens, learned, 4, pdm.mask_id, 16, p_error=0.0)
    assert tup.generate.sum(1).eq(2).all()


# ---------------------------------------------------------------- learned order and sampler adapter
def test_learned_order_registered_and_follows_policy(pdm):
    learner = _learner()
    with torch.no_grad():
        learner.policy.pos_bias.copy_(torch.arange(8, 0, -1).float() * 10)  # position 0 first, 7 last
    order = get_order("learned", policy=learner.policy, model=pdm)
    assert isinstance(order, Learned) and order.needs_text
    b = _batch()
    so = order(3, 8, 4, text=b.text, text_mask=b.text_mask)
    assert torch.equal(so, torch.tensor([[0, 0, 1, 1, 2, 2, 3, 3]]).expand(3, 8))
    with pytest.raises(ValueError, match="text"):
        order(3, 8, 4)
    with pytest.raises(ValueError, match="policy"):
        get_order("learned")(3, 8, 4, text=b.text, text_mask=b.text_mask)


@pytest.mark.parametrize("guidance", [1.0, 3.0])
def test_learned_sample_uses_policy_each_step(pdm, guidance):
    learner = _learner()
    with torch.no_grad():
        learner.policy.pos_bias.copy_(torch.tensor([0, 50, 0, 50, 40, 0, 40, 0]).float())
    order = Learned(learner.policy, pdm)
    b = _batch()
    cfg = SampleConfig(steps=4, guidance_scale=guidance, revise=False, temperature=0.0)
    res = order.sample(b.text, b.text_mask, cfg, torch.Generator().manual_seed(0))
    assert (res.tokens != pdm.mask_id).all()
    assert (res.steps[0] != pdm.mask_id).sum(1).eq(2).all()
    assert (res.steps[0][:, [1, 3]] != pdm.mask_id).all()
    assert (res.steps[1][:, [4, 6]] != pdm.mask_id).all()


def test_rollout_and_sampler_give_the_policy_the_same_input(pdm):
    """One seed, the same settings (guidance 2, revision on, sampled tokens): the policy's input at every
    step (hidden states, [mask] map, t, T, token and state logits) is identical in a training rollout and
    in the sampler with sample.order learned, and so are the tokens (revisions included)."""
    from training.model.states import REVISE

    learner = _learner()
    torch.manual_seed(3)
    for p in learner.policy.parameters():
        torch.nn.init.normal_(p, 0.0, 0.3)
    seen: dict[str, list] = {"rollout": [], "sampler": []}
    where = ["rollout"]
    learner.policy.register_forward_pre_hook(
        lambda m, args: seen[where[0]].append([a.clone() if torch.is_tensor(a) else a for a in args])
    )
    b = _batch(B=4, seed=2)
    kw = dict(guidance_scale=2.0, revise=True, revise_threshold=0.2)
    ro = rollout(
        learner.policy, pdm, b.text, b.text_mask, 4, greedy=True, token_mode="sample", temperature=1.0,
        generator=torch.Generator().manual_seed(7), **kw,
    )  # fmt: skip
    where[0] = "sampler"
    res = Learned(learner.policy, pdm).sample(
        b.text, b.text_mask, SampleConfig(steps=4, temperature=1.0, **kw), torch.Generator().manual_seed(7)
    )
    assert len(seen["rollout"]) == len(seen["sampler"]) == 4
    for a, s in zip(seen["rollout"], seen["sampler"]):
        assert all(torch.equal(x, y) if torch.is_tensor(x) else x == y for x, y in zip(a, s))
    assert torch.equal(ro.tokens, res.tokens)
    assert any((st == REVISE).any() for st in res.states)  # revisions happened, in both


def test_config_section_loads_and_validates():
    c = from_dict(OrderLearnerConfig, {"reward": "clip", "baseline": "self_critical", "discount": 0.95})
    assert c.reward == "clip" and c.discount == 0.95
    with pytest.raises(ConfigError, match="discount"):
        from_dict(OrderLearnerConfig, {"discount": 1.5})
    with pytest.raises(ConfigError, match="baseline"):
        from_dict(OrderLearnerConfig, {"baseline": "critic"})
    with pytest.raises((ConfigError, ValueError), match="temperature"):
        from_dict(OrderLearnerConfig, {"token_mode": "sample", "temperature": 0.0})


def test_policy_shapes_and_initial_uniformity():
    pol = PositionPolicy(32, 8, hidden=16)
    s = pol(
        torch.randn(2, 8, 32), torch.ones(2, 8, dtype=torch.bool), 0, 4, torch.randn(2, 8, 16), torch.randn(2, 8, 3)
    )
    assert s.shape == (2, 8) and torch.allclose(s, torch.zeros_like(s))  # zero-initialised output: random order
    with pytest.raises(ValueError, match="token_logits"):
        pol(torch.randn(2, 8, 32), torch.ones(2, 8, dtype=torch.bool), 0, 4)
