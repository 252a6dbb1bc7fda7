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
"""

from __future__ import annotations

import torch.nn as nn


def build_model(model_cfg, kind: str = "pdm") -> nn.Module:
    """A freshly initialised ``PDM`` (kind "pdm"; train modes progressive and emage) or ``ARModel``
    (kind "ar"; train mode autoregressive) of ``model_cfg``."""
    if kind in ("ar", "autoregressive"):
        from training.model.ar_model import ARModel

        return ARModel(model_cfg)
    from training.model.pdm import PDM

    return PDM(model_cfg)
