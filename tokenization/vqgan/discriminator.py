"""The VQ-GAN's adversarial term (Esser et al. 2021; taming-transformers' ``VQLPIPSWithDiscriminator``
without LPIPS): a PatchGAN discriminator, hinge losses, and the adaptive weight that balances the
generator's adversarial gradient against the reconstruction gradient at the decoder's last layer.

    lambda = ||grad_last L_rec|| / (||grad_last L_gan|| + 1e-4), clamped to [0, 1e4], times disc_weight

LPIPS (the perceptual term) is left out: it needs VGG weights that cannot be downloaded here.
"""

from __future__ import annotations

import torch
from torch import nn


class PatchDiscriminator(nn.Module):
    """taming's ``NLayerDiscriminator`` (pix2pix PatchGAN): ``layers`` stride-2 4x4 convolutions, one
    stride-1, then a 1-channel map of real/fake logits, one per patch."""

    def __init__(self, in_channels: int = 3, channels: int = 64, layers: int = 3):
        super().__init__()
        seq: list[nn.Module] = [nn.Conv2d(in_channels, channels, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, layers + 1):
            prev, mult = mult, min(2**n, 8)
            stride = 2 if n < layers else 1
            seq += [
                nn.Conv2d(channels * prev, channels * mult, 4, stride, 1, bias=False),
                nn.BatchNorm2d(channels * mult),
                nn.LeakyReLU(0.2, True),
            ]
        seq.append(nn.Conv2d(channels * mult, 1, 4, 1, 1))
        self.main = nn.Sequential(*seq)
        for m in self.modules():  # taming's weights_init
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x)


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    return 0.5 * (torch.relu(1.0 - logits_real).mean() + torch.relu(1.0 + logits_fake).mean())


def adaptive_weight(rec_loss: torch.Tensor, g_loss: torch.Tensor, last: torch.Tensor, scale: float) -> torch.Tensor:
    """taming's ``calculate_adaptive_weight``: the gradient-norm ratio at ``last`` (the decoder's last weight)."""
    rec_grad = torch.autograd.grad(rec_loss, last, retain_graph=True)[0]
    g_grad = torch.autograd.grad(g_loss, last, retain_graph=True)[0]
    return (rec_grad.norm() / (g_grad.norm() + 1e-4)).clamp(0.0, 1e4).detach() * scale


class Adversary:
    """The discriminator, its optimiser and one training step of each side."""

    def __init__(self, cfg, in_channels: int = 3):
        self.cfg = cfg
        self.disc = PatchDiscriminator(in_channels, cfg.disc_channels, cfg.disc_layers)
        self.opt = torch.optim.Adam(self.disc.parameters(), lr=cfg.lr, betas=(0.5, 0.9))

    def active(self, step: int) -> bool:
        return self.cfg.disc_weight > 0 and step >= self.cfg.disc_start

    def generator_loss(self, rec: torch.Tensor, rec_loss: torch.Tensor, last: torch.Tensor) -> tuple:
        """(weighted adversarial loss for the autoencoder, the adaptive weight)."""
        g_loss = -self.disc(rec).mean()
        w = adaptive_weight(rec_loss, g_loss, last, self.cfg.disc_weight)
        return w * g_loss, w

    def discriminator_step(self, real: torch.Tensor, fake: torch.Tensor) -> float:
        loss = hinge_d_loss(self.disc(real), self.disc(fake.detach()))
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return float(loss.detach())

    def state_dict(self) -> dict:
        return {"disc": self.disc.state_dict(), "opt": self.opt.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.disc.load_state_dict(state["disc"])
        self.opt.load_state_dict(state["opt"])
