"""The model library: plain PyTorch, no files, no Ray, no DeepSpeed (tests/test_architecture.py checks).

config.py          ModelConfig and the named sizes (presets)
pdm.py             the PDM decoder: token and state heads (Eq. 4)
ar_model.py        the same-size autoregressive baseline (Eq. 3)
layers.py          transformer blocks, positions, text conditioning
states.py          the state alphabet KEEP / GENERATE / REVISE (z = 0, 1, -1)
orders/            generation orders, one file each (Eq. 5 in const_error.py)
tuples.py          a training instance cut at a stage (section 3.1-3.2)
error_injection.py pseudo errors for revision training (section 3.3)
pdm_loss.py        Eq. 4 as two cross-entropies
two_pass_loss.py   Emage's two-pass loss
train_module.py    one micro-batch: order -> tuples -> model -> loss; the trainer's hook contracts
seeded_random.py   randomness from seeds only
sampling/          progressive (Eq. 4 at inference, with the revision step), autoregressive, logit tools
order_learner/     the position policy and its policy-gradient training (section 3.2, Eq. 6-7)
vq_diffusion/      the VQ-Diffusion baseline: mask-and-replace schedule, posterior, loss, timestep-conditioned decoder
super_resolution/  CogView2's hierarchical super-resolution: local attention windows, LoPAR, the SR model
"""

from __future__ import annotations

import torch.nn as nn

# train.mode -> the model kind it trains (the export's ``kind`` metadata) -> the sampler that draws from it
MODE_KINDS = {"progressive": "pdm", "emage": "pdm", "autoregressive": "ar", "vq_diffusion": "vq_diffusion"}
KIND_SAMPLERS = {"pdm": "progressive", "ar": "autoregressive", "vq_diffusion": "vq_diffusion"}
MODEL_KINDS = tuple(KIND_SAMPLERS)


def model_kind(mode_or_kind: str) -> str:
    """The model kind of a ``train.mode`` (or of a kind name, returned as it is)."""
    if mode_or_kind in KIND_SAMPLERS:
        return mode_or_kind
    if mode_or_kind not in MODE_KINDS:
        raise ValueError(f"unknown train.mode or model kind {mode_or_kind!r}; known: {', '.join(MODE_KINDS)}")
    return MODE_KINDS[mode_or_kind]


def build_model(model_cfg, kind: str = "pdm") -> nn.Module:
    """A freshly initialised ``PDM`` (kind "pdm"; train modes progressive and emage), ``ARModel`` (kind "ar";
    train mode autoregressive) or ``VQDiffusionTransformer`` (kind / train mode "vq_diffusion") of ``model_cfg``."""
    kind = model_kind(kind)
    if kind == "ar":
        from training.model.ar_model import ARModel

        return ARModel(model_cfg)
    if kind == "vq_diffusion":
        from training.model.vq_diffusion.model import VQDiffusionTransformer

        return VQDiffusionTransformer(model_cfg)
    from training.model.pdm import PDM

    return PDM(model_cfg)
