"""The shared step (tuples -> model -> loss), its hooks, the engine config builder and the schedule."""

from __future__ import annotations

import math

import pytest
import torch

from tests.trainer_utils import K, L, TinyTextEncoder, one_thread, tiny_model_dict  # noqa: F401 (autouse)
from training.engine import LocalEngine, build_ds_config, lr_lambda, param_groups, resolve_precision
from training.model import build_model
from training.model.config import model_config
from training.model.train_module import StepContext, StepSettings, TrainModule
from training.train_config import TrainConfig
from training.trainer import encode_text


def batch(B=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, K, (B, L), generator=g)
    ids = torch.randint(1, 40, (B, 5), generator=g)
    mask = torch.ones(B, 5, dtype=torch.bool)
    mask[0, 3:] = False
    b = {
        "tokens": tokens,
        "qerr": torch.rand(B, L, generator=g),
        "text_ids": ids,
        "text_mask": mask,
        "seeds": torch.arange(B) * 7919 + seed,
    }
    b["text"] = encode_text(TinyTextEncoder(tiny_model_dict()["text_dim"]), b)
    return b


def sub(b, idx):
    return {k: v[idx] for k, v in b.items()}


def capture():
    seen = []

    def hook(ctx: StepContext):
        seen.append(ctx.tuples)
        return ctx.output.token_logits.sum() * 0.0, {"seen": torch.tensor(1.0)}

    return seen, hook


@pytest.mark.parametrize("order,p_error", [("random", 0.5), ("const_error", 0.0), ("halton", 0.3)])
def test_per_sample_tuples_do_not_depend_on_the_batch_split(order, p_error):
    """Same sample seed -> same stage, order, injected errors and condition dropout, whatever the batch."""
    torch.manual_seed(0)
    model = build_model(model_config(tiny_model_dict(cond_dropout=0.5)), "progressive")
    seen, hook = capture()
    mod = TrainModule(
        model, StepSettings(order=order, stages=4, p_error=p_error, rng="per_sample"), extra_losses=[hook]
    )
    b = batch()
    mod(b)
    mod(sub(b, slice(0, 2)))
    mod(sub(b, slice(2, 6)))
    whole, a, c = seen
    for f in ("inputs", "state_targets", "stage", "token_loss_mask", "injected"):
        assert torch.equal(getattr(whole, f), torch.cat([getattr(a, f), getattr(c, f)])), f
    assert len(set(whole.stage.tolist())) > 1
    if p_error:
        assert whole.injected.any()


def test_modes_and_hooks():
    b = batch()
    torch.manual_seed(0)
    pdm = build_model(model_config(tiny_model_dict()), "progressive")
    aux = torch.nn.Linear(3, 1)
    extra = lambda ctx: (ctx.aux["policy"].weight.pow(2).sum(), {"reg": torch.tensor(2.0)})  # noqa: E731
    mod = TrainModule(pdm, StepSettings(stages=4), extra_losses=[extra], aux={"policy": aux})
    loss, m = mod(b)
    assert m["extra0/reg"] == 2.0 and math.isfinite(loss.item())
    for k in ("token_loss", "state_loss", "token_acc", "codebook_usage", "loss"):
        assert k in m
    assert 0 < m["codebook_usage"] <= 1
    loss.backward()
    assert aux.weight.grad is not None and aux.weight.grad.abs().sum() > 0  # hook terms are trained
    groups = param_groups(mod, 0.1)
    assert any(aux.weight is p for g in groups for p in g["params"])
    decayed = {id(p) for g in groups if g["weight_decay"] > 0 for p in g["params"]}
    assert id(pdm.text.null_text) not in decayed and id(pdm.text.proj.weight) in decayed  # a vector, a matrix

    emage = TrainModule(build_model(model_config(tiny_model_dict()), "emage"), StepSettings(mode="emage"))
    loss, m = emage(b)
    assert math.isfinite(loss.item()) and "first_pass_acc" in m
    ar = TrainModule(
        build_model(model_config(tiny_model_dict()), "autoregressive"), StepSettings(mode="autoregressive")
    )
    loss, m = ar(b)
    assert type(ar.model).__name__ == "ARModel" and abs(loss.item() - math.log(K)) < 1.0


def test_an_fp16_step_skipped_on_overflow_moves_neither_the_schedule_nor_the_ema():
    """GradScaler skips an optimizer step whose gradients overflowed; the learning-rate schedule and the EMA
    wait for the next real step (DeepSpeed's fp16 does the same)."""
    torch.manual_seed(0)
    t = TrainConfig(steps=10, batch_size=6, lr=1e-3, warmup_steps=4, ema_decay=0.9)
    eng = LocalEngine(
        TrainModule(build_model(model_config(tiny_model_dict()), "progressive"), StepSettings.from_config(t)),
        t,
        log=lambda m: None,
    )
    eng.scaler = torch.amp.GradScaler("cpu", enabled=True, init_scale=2.0**10)  # fp16's scaler, on the CPU
    b = batch()
    eng.forward_backward(b)
    assert eng.step()["skipped"] == 0.0 and eng.scheduler.last_epoch == 1
    shadow = [s.clone() for s in eng.ema.shadow]
    eng.forward_backward(b)
    next(p for p in eng.module.parameters() if p.grad is not None).grad[0].fill_(float("inf"))  # an overflow
    info = eng.step()
    assert info.get("skipped") == 1.0 and eng.scheduler.last_epoch == 1
    assert all(torch.equal(a, s) for a, s in zip(shadow, eng.ema.shadow))
    eng.forward_backward(b)
    assert eng.step()["skipped"] == 0.0 and eng.scheduler.last_epoch == 2


def test_local_engine_learns_a_fixed_batch():
    torch.manual_seed(0)
    t = TrainConfig(
        steps=60,
        batch_size=6,
        lr=3e-3,
        warmup_steps=5,
        grad_clip=1.0,
        stages=4,
        p_error=0.2,
        ema_decay=0.9,
        precision="fp16",
    )
    eng = LocalEngine(
        TrainModule(build_model(model_config(tiny_model_dict()), "progressive"), StepSettings.from_config(t)),
        t,
        log=lambda m: None,
    )
    assert eng.precision in ("fp32", "bf16")  # fp16 is never used on a CPU
    b = batch()
    first = eng.forward_backward(b)["loss"].item()
    info = eng.step()
    for _ in range(59):
        last = eng.forward_backward(b)["loss"].item()
        eng.step()
    assert info["lr"] == pytest.approx(3e-3 / 5) and info["grad_norm"] > 0
    assert last < 0.6 * first, (first, last)
    ema = eng.ema.shadow[0]
    assert not torch.equal(ema, eng.ema.params[0][1].detach())


def test_lr_schedule_warmup_then_cosine_to_floor():
    t = TrainConfig(steps=110, warmup_steps=10, lr=1e-4, min_lr_ratio=0.1)
    f = lr_lambda(t)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0) and f(10) == pytest.approx(1.0)
    assert f(60) == pytest.approx(0.1 + 0.9 * 0.5) and f(110) == pytest.approx(0.1)
    assert TrainConfig().betas == [0.9, 0.96] and TrainConfig().lr == 1e-4  # PDM appendix A


def test_deepspeed_config_from_train_section():
    t = TrainConfig(
        batch_size=64,
        grad_accum=2,
        zero_stage=3,
        offload_optimizer="cpu",
        offload_params="cpu",
        grad_clip=0.5,
        precision="bf16",
    )
    ds = build_ds_config(t, world_size=4, precision="bf16", device_type="cuda")
    assert (ds["train_batch_size"], ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"]) == (
        64,
        8,
        2,
    )
    z = ds["zero_optimization"]
    assert z["stage"] == 3 and z["offload_optimizer"]["device"] == "cpu" and z["offload_param"]["device"] == "cpu"
    assert z["stage3_gather_16bit_weights_on_model_save"] and ds["bf16"]["enabled"] and ds["gradient_clipping"] == 0.5
    assert ds["bf16"]["check_grad_overflow"] is False  # the global norm tells a bad step (test_divergence.py)
    opt = ds["optimizer"]["params"]
    assert opt["betas"] == [0.9, 0.96] and opt["torch_adam"] is False  # DeepSpeedCPUAdam when offloaded
    cpu = build_ds_config(TrainConfig(batch_size=8, zero_stage=1), 2, "fp32", "cpu")
    assert cpu["optimizer"]["params"]["torch_adam"] is True and "bf16" not in cpu and "fp16" not in cpu
    assert "fused" not in cpu["optimizer"]["params"]
    gpu = build_ds_config(TrainConfig(batch_size=8, zero_stage=2), 2, "bf16", "cuda")["optimizer"]["params"]
    assert gpu["torch_adam"] is True and gpu["fused"] is True  # torch's fused AdamW: no DeepSpeed op to build
    with pytest.raises(ValueError, match="divisible"):
        build_ds_config(TrainConfig(batch_size=10), 4, "fp32")
    with pytest.raises(ValueError, match="zero_stage 3"):
        TrainConfig(offload_params="cpu", zero_stage=2)
    with pytest.raises(ValueError, match="ema_decay with offload_params: nvme"):
        TrainConfig(offload_params="nvme", zero_stage=3, nvme_path="/tmp", ema_decay=0.999)
    TrainConfig(offload_params="cpu", zero_stage=3, ema_decay=0.999)  # partitions in RAM: the EMA reads them


def test_precision_fallback_is_explicit():
    msgs = []
    assert resolve_precision("fp32", "cpu", msgs.append) == "fp32" and not msgs
    got = resolve_precision("fp16", "cpu", msgs.append)
    from deepspeed.accelerator import get_accelerator

    if not get_accelerator().is_fp16_supported():
        assert got == "fp32" and "fp16" in msgs[0] and "fp32 instead" in msgs[0]
    assert resolve_precision("bf16", "cpu", msgs.append) == (
        "bf16" if get_accelerator().is_bf16_supported() else "fp32"
    )


def test_bf16_on_a_cpu_without_bf16_kernels_is_kept_with_a_warning(monkeypatch):
    """bf16 is emulated on a CPU whose oneDNN has no bf16 kernels (AVX2 only): ~100x slower than fp32, said once."""
    import training.engine as engine

    for native in (True, False):
        monkeypatch.setattr(engine, "cpu_has_bf16_kernels", lambda native=native: native)
        msgs = []
        assert resolve_precision("bf16", "cpu", msgs.append) == "bf16"
        assert (len(msgs) == 1 and "no oneDNN bf16 kernels" in msgs[0] and "train.precision: fp32" in msgs[0]) == (
            not native
        ), msgs
        assert resolve_precision("fp32", "cpu", msgs.append) == "fp32" and len(msgs) == (0 if native else 1)


def test_state_dict_export_shapes_match_model():
    t = TrainConfig(stages=4)
    m = build_model(model_config(tiny_model_dict(tie_embeddings=True)), "progressive")
    eng = LocalEngine(TrainModule(m, StepSettings.from_config(t)), t, log=lambda s: None)
    sd = eng.full_state_dict()
    assert set(sd) == set(m.state_dict()) and sd["token_head.weight"].data_ptr() == sd["tok_emb.weight"].data_ptr()
