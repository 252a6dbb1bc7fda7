"""The model library on every device this machine has, with the generators its callers pass: the trainer's
per-batch and per-sample generators are CPU ones (``generator_for``) whatever the model's device, the sample
worker's is on the model's device. Each draw must take the generator's device and put the result on the
model's. On a CPU-only machine the ``cuda`` cases skip; ``benchmarks/gpu_check.py`` runs them with the quick
suite on a GPU."""

from __future__ import annotations

import math

import pytest
import torch

from tests.trainer_utils import K, L, TinyTextEncoder, one_thread, tiny_model_dict  # noqa: F401 (autouse)
from training.model import build_model
from training.model.config import model_config
from training.model.order_learner import OrderLearnerConfig, PolicyBatch, build_order_learner, policy_update
from training.model.sampling import SampleConfig, generate
from training.model.sampling.logits import gumbel_like
from training.model.seeded_random import generator_for
from training.model.train_module import StepSettings, TrainModule

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA"))]


def _text(B: int, dev: str, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 40, (B, 5), generator=g)
    mask = torch.ones(B, 5, dtype=torch.bool)
    mask[0, 3:] = False
    text = TinyTextEncoder(tiny_model_dict()["text_dim"]).encode(ids, mask)
    return text.to(dev), mask.to(dev)


def _batch(dev: str, B: int = 4, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    text, mask = _text(B, dev, seed)
    return {
        "tokens": torch.randint(0, K, (B, L), generator=g).to(dev),
        "qerr": torch.rand(B, L, generator=g).to(dev),
        "text": text,
        "text_mask": mask,
        "seeds": torch.arange(B) * 7919 + seed,
    }


@pytest.mark.parametrize("dev", DEVICES)
def test_gumbel_noise_is_drawn_on_the_generators_device(dev):
    """The same CPU stream whatever the tensor's device and dtype (a CUDA tensor's own draw would refuse a CPU
    generator); a generator on the device gives noise there."""
    for dtype in (torch.float32, torch.bfloat16):
        x = torch.zeros(6, 33, device=dev, dtype=dtype)
        noise = gumbel_like(x, torch.Generator().manual_seed(3))
        ref = gumbel_like(torch.zeros(6, 33, dtype=dtype), torch.Generator().manual_seed(3))
        assert noise.device == x.device and noise.dtype == dtype
        if dev == "cpu":
            assert torch.equal(noise, ref)
        else:  # one stream of uniforms; a GPU's log may round their transform's last bit otherwise
            torch.testing.assert_close(noise.cpu(), ref)
    own = gumbel_like(torch.zeros(6, 33, device=dev), torch.Generator(device=dev).manual_seed(3))
    assert own.device == x.device and torch.isfinite(own).all() and own.std() > 0.5


@pytest.mark.parametrize("dev", DEVICES)
@pytest.mark.parametrize(
    "kind,settings",
    [
        ("pdm", StepSettings(order="random", stages=4, p_error=0.5, rng="per_sample")),
        ("pdm", StepSettings(order="const_error", stages=4, p_error=0.3, rng="per_batch")),
        ("pdm", StepSettings(order="halton", stages=4, p_error=0.3)),
        ("pdm", StepSettings(mode="emage")),
        ("ar", StepSettings(mode="autoregressive")),
        ("vq_diffusion", StepSettings(mode="vq_diffusion")),
    ],
    ids=["random", "const_error", "halton", "emage", "autoregressive", "vq_diffusion"],
)
def test_a_training_step_runs_on_the_device(dev, kind, settings):
    """Forward, loss and backward of every training mode, with the trainer's CPU generators."""
    torch.manual_seed(0)
    mod = TrainModule(build_model(model_config(tiny_model_dict()), kind), settings).to(dev).train()
    loss, metrics = mod(_batch(dev))
    loss.backward()
    assert loss.device.type == torch.device(dev).type and math.isfinite(loss.item())
    grads = [p.grad for p in mod.parameters() if p.grad is not None]
    assert grads and all(g.device == loss.device for g in grads) and sum(g.abs().sum() for g in grads) > 0


@pytest.mark.parametrize("dev", DEVICES)
def test_a_policy_update_with_sampled_tokens_runs_on_the_device(dev):
    """The order learner's rollout samples tokens (temperature > 0: Gumbel-max) with the CPU generator the
    trainer's policy hook passes; the update moves the policy."""
    torch.manual_seed(0)
    mcfg = model_config(tiny_model_dict(cond_dropout=0.0))
    pdm = build_model(mcfg, "pdm").to(dev).eval()
    cfg = OrderLearnerConfig(reward="token_acc", hidden=16, baseline="moving_average", token_mode="sample")
    learner = build_order_learner(mcfg, cfg, stages=4).to(dev)
    for p in learner.policy.parameters():  # a non-trivial start (the out layer starts at zero)
        torch.nn.init.normal_(p, 0.0, 0.3)
    before = [p.detach().clone() for p in learner.policy.parameters()]
    b = _batch(dev)
    batch = PolicyBatch(b["tokens"], b["text"], b["text_mask"])
    opt = torch.optim.SGD(learner.parameters(), lr=0.05)
    m = policy_update(learner, pdm, batch, opt, generator_for(11))
    assert all(torch.isfinite(m[k]) for k in ("reward", "entropy", "log_prob", "grad_norm"))
    assert any(not torch.equal(a, p) for a, p in zip(before, learner.policy.parameters()))


@pytest.mark.parametrize("dev", DEVICES)
@pytest.mark.parametrize("gen_dev", ["cpu", "model"])
@pytest.mark.parametrize(
    "sampler,kind", [("progressive", "pdm"), ("autoregressive", "ar"), ("vq_diffusion", "vq_diffusion")]
)
def test_sampling_with_noise_runs_on_the_device(dev, gen_dev, sampler, kind):
    """Sampled tokens, sampled positions (Gumbel) and guidance, with a generator on the CPU or on the device."""
    torch.manual_seed(0)
    model = build_model(model_config(tiny_model_dict()), kind).to(dev).eval()
    text, mask = _text(3, dev)
    cfg = SampleConfig(sampler=sampler, steps=4, temperature=1.0, gumbel_scale=1.0, guidance_scale=2.0, batch_size=3)
    g = torch.Generator(device=dev if gen_dev == "model" else "cpu").manual_seed(5)
    res = generate(model, text, mask, cfg, generator=g)
    assert res.tokens.shape == (3, L) and res.tokens.device == text.device
    assert ((res.tokens >= 0) & (res.tokens < K)).all()


@pytest.mark.parametrize("dev", DEVICES)
@pytest.mark.parametrize("text_dtype", [torch.float16, torch.bfloat16])
def test_half_precision_text_states_condition_a_float32_model(dev, text_dtype):
    """A float16/bfloat16 text encoder's states (``text_encoder.dtype``) reach the fp32 export in the sample
    worker and the evaluate stage's metrics: the projection takes them in its own dtype."""
    torch.manual_seed(0)
    model = build_model(model_config(tiny_model_dict()), "pdm").to(dev).eval()
    text, mask = _text(2, dev)
    cfg = SampleConfig(steps=4, temperature=0.0, batch_size=2)
    half = generate(model, text.to(text_dtype), mask, cfg).tokens
    assert torch.equal(half, generate(model, text.to(text_dtype).float(), mask, cfg).tokens)
