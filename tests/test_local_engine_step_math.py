"""The local engine's step arithmetic: gradient accumulation averages the micro-batches, clipping bounds the
gradient the optimizer sees, the EMA moves by (1 - decay), weight decay skips vectors and positional
embeddings, and the constant schedule stays flat after its warmup."""

from __future__ import annotations

import pytest
import torch

from tests.test_trainer_step import batch
from tests.trainer_utils import one_thread, tiny_model_dict  # noqa: F401 (autouse fixture)
from training.engine import LocalEngine, lr_lambda, param_groups
from training.model import build_model
from training.model.config import model_config
from training.model.train_module import StepSettings, TrainModule
from training.train_config import TrainConfig


def _engine(**kw) -> LocalEngine:
    torch.manual_seed(0)
    t = TrainConfig(**{"steps": 10, "batch_size": 6, "lr": 1e-3, "warmup_steps": 0, **kw})
    module = TrainModule(build_model(model_config(tiny_model_dict()), "progressive"), StepSettings.from_config(t))
    return LocalEngine(module, t, log=lambda m: None)


def _grads(eng: LocalEngine) -> list[torch.Tensor]:
    return [p.grad.clone() for p in eng.module.parameters() if p.grad is not None]


def test_accumulated_gradients_are_the_mean_over_the_micro_batches():
    """Two micro-batches of one batch with grad_accum=2 give the gradient of that batch with grad_accum=1."""
    b = batch()
    one = _engine(grad_accum=1)
    one.forward_backward(b)
    two = _engine(grad_accum=2, batch_size=12)
    two.forward_backward(b)
    two.forward_backward(b)
    g1, g2 = _grads(one), _grads(two)
    assert len(g1) == len(g2) > 0
    assert all(torch.allclose(a, c, rtol=1e-5, atol=1e-7) for a, c in zip(g1, g2))


def test_clipping_bounds_the_gradient_the_optimizer_steps_with():
    eng = _engine(grad_clip=1e-3)
    seen = []

    def before_step(opt, args, kwargs):
        grads = [p.grad for g in opt.param_groups for p in g["params"] if p.grad is not None]
        seen.append(float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))))

    eng.optimizer.register_step_pre_hook(before_step)
    eng.forward_backward(batch())
    info = eng.step()
    assert info["grad_norm"] > 1e-2  # the norm before clipping is logged
    assert seen and seen[0] == pytest.approx(1e-3, rel=1e-3)
    free = _engine(grad_clip=0.0)  # 0 disables clipping
    free.forward_backward(batch())
    norm = free.step()["grad_norm"]
    assert norm == pytest.approx(info["grad_norm"], rel=1e-5)


def test_the_ema_moves_one_minus_decay_of_the_way_each_step():
    eng = _engine(ema_decay=0.9)
    before = [p.detach().clone() for _, p in eng.ema.params]
    assert all(torch.equal(s, p) for s, p in zip(eng.ema.shadow, before))  # starts at the weights
    eng.forward_backward(batch())
    eng.step()
    after = [p.detach() for _, p in eng.ema.params]
    assert any(not torch.equal(a, b) for a, b in zip(after, before))
    for s, b, a in zip(eng.ema.shadow, before, after):
        assert torch.allclose(s, 0.9 * b + 0.1 * a, atol=1e-7)


def test_weight_decay_applies_to_matrices_only():
    model = build_model(model_config(tiny_model_dict()), "progressive")
    groups = param_groups(model, 0.05)
    decayed = {id(p) for p in groups[0]["params"]}
    assert groups[0]["weight_decay"] == 0.05 and groups[1]["weight_decay"] == 0.0
    names = {n: id(p) in decayed for n, p in model.named_parameters()}
    assert names["tok_emb.weight"] and names["blocks.0.attn.qkv.weight"]
    assert not names["pos_emb.row"] and not names["pos_emb.col"]  # positional embeddings: no decay
    assert not names["text.null_text"]  # one learned vector [1, 1, dim]
    assert not names["mask_emb"] and not names["blocks.0.attn.qkv.bias"] and not names["text.norm.weight"]


def test_constant_schedule_is_flat_after_the_warmup():
    f = lr_lambda(TrainConfig(steps=10, warmup_steps=2, schedule="constant"))
    assert [f(s) for s in (0, 1, 2, 5, 9, 10)] == pytest.approx([0.5, 1.0, 1.0, 1.0, 1.0, 1.0])
    g = lr_lambda(TrainConfig(steps=10, warmup_steps=0, min_lr_ratio=0.1))
    assert g(10) == pytest.approx(0.1) and g(15) == pytest.approx(0.1)  # past the end: stays at the floor
