"""Rewards r(s_t, a_t) of Eq. 6, from a score R(tokens, batch) -> Float[B] of a full token map.

  token_acc  R = mean_i [y_i == y_i^true]                      (cheap; tests)
  l2         R = -mean (decode(Y) - image)^2                   (PDM 3.2: "L2 loss for reconstructed pixels")
  clip       R = cos(CLIP_img(decode(Y)), CLIP_txt(caption))   (PDM 3.2: "CLIP embedding similarity")

``decode(tokens Long[B, L]) -> images [B, 3, H, W] in [-1, 1]`` is the VQ-GAN's decoder
(``tokenization.vqgan`` ``model.decode``). Per-step rewards (``reward_mode=per_step``) are potential
differences r_t = R(Yhat^{t+1}) - R(Yhat^t) over the PDM's full predictions (written tokens + argmax at
[mask]; Yhat^T = Y^T), so sum_t r_t = R(Y^T) - R(Yhat^0): the same optimum as the terminal reward, with
credit assigned to the step that changed the prediction. Terminal: r_{T-1} = R(Y^T), others 0.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from training.model.order_learner.rollout import PolicyBatch, Rollout

RewardFn = Callable[[Tensor, PolicyBatch], Tensor]
Decode = Callable[[Tensor], Tensor]


class TokenAccuracyReward:
    def __call__(self, tokens: Tensor, batch: PolicyBatch) -> Tensor:
        return (tokens == batch.tokens).float().mean(1)


class L2Reward:
    """Negative mean squared pixel error of the decoded tokens to ``batch.images``."""

    def __init__(self, decode: Decode):
        self.decode = decode

    @torch.no_grad()
    def __call__(self, tokens: Tensor, batch: PolicyBatch) -> Tensor:
        if batch.images is None:
            raise ValueError("reward=l2 needs the ground-truth images in the batch (images [B, 3, H, W], [-1, 1])")
        img = self.decode(tokens).float()
        ref = batch.images.to(img.device, torch.float32)
        if ref.shape[-2:] != img.shape[-2:]:
            ref = F.interpolate(ref, size=img.shape[-2:], mode="bilinear", align_corners=False)
        return -(img - ref).pow(2).flatten(1).mean(1)


class ClipReward:
    """Cosine similarity of open_clip image and text embeddings. ``model`` is an open_clip CLIP
    (encode_image / encode_text), ``tokenizer(list[str]) -> Long[B, ctx]``; images from ``decode`` in
    [-1, 1] are mapped to [0, 1], resized to the model's input size and normalised (``mean``/``std``,
    OpenAI CLIP's by default). Text embeddings are cached per caption."""

    def __init__(self, decode: Decode, model, tokenizer, mean=None, std=None, cache_size: int = 4096):
        import open_clip

        self.decode, self.model, self.tokenizer = decode, model, tokenizer
        size = getattr(getattr(model, "visual", None), "image_size", 224)
        self.size = tuple(size) if isinstance(size, (tuple, list)) else (size, size)
        self.mean = torch.tensor(mean or open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
        self.std = torch.tensor(std or open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)
        self.cache: dict[str, Tensor] = {}
        self.cache_size = cache_size

    @torch.no_grad()
    def text_features(self, captions: list, device) -> Tensor:
        todo = [c for c in dict.fromkeys(captions) if c not in self.cache]
        if todo:
            if len(self.cache) + len(todo) > self.cache_size:
                self.cache.clear()
            ids = self.tokenizer(todo).to(device)
            feats = F.normalize(self.model.encode_text(ids).float(), dim=-1)
            self.cache.update(zip(todo, feats))
        return torch.stack([self.cache[c].to(device) for c in captions])

    @torch.no_grad()
    def __call__(self, tokens: Tensor, batch: PolicyBatch) -> Tensor:
        if batch.captions is None:
            raise ValueError("reward=clip needs the captions in the batch (captions: list[str])")
        img = (self.decode(tokens).float() + 1.0) / 2.0
        img = F.interpolate(img, size=self.size, mode="bicubic", align_corners=False).clamp(0.0, 1.0)
        img = (img - self.mean.to(img.device)) / self.std.to(img.device)
        self.model.to(img.device)  # built on the CPU; the policy's rollouts run on the trainer's device
        dtype = next(self.model.parameters()).dtype
        feats = F.normalize(self.model.encode_image(img.to(dtype)).float(), dim=-1)
        return (feats * self.text_features(list(batch.captions), img.device)).sum(-1)


def make_reward(kind: str, decode: Optional[Decode] = None, clip_model=None, clip_tokenizer=None) -> RewardFn:
    """The reward named by ``OrderLearnerConfig.reward`` (a callable ``kind`` is returned as it is)."""
    if callable(kind):
        return kind
    if kind == "token_acc":
        return TokenAccuracyReward()
    if kind in ("l2", "clip") and decode is None:
        raise ValueError(f"reward={kind} needs decode(tokens) -> images (the VQ-GAN decoder)")
    if kind == "l2":
        return L2Reward(decode)
    if kind == "clip":
        if clip_model is None or clip_tokenizer is None:
            raise ValueError("reward=clip needs an open_clip model and its tokenizer")
        return ClipReward(decode, clip_model, clip_tokenizer)
    raise ValueError(f"unknown reward {kind!r}; valid: token_acc, l2, clip")


def step_rewards(reward_fn: RewardFn, ro: Rollout, batch: PolicyBatch, mode: str = "terminal") -> tuple[Tensor, Tensor]:
    """(r Float[B, T]: r(s_t, a_t) for each step (module doc), R(Y^T) Float[B]: the final score)."""
    T = ro.log_prob.shape[1]
    if mode == "terminal":
        final = reward_fn(ro.tokens, batch).float().to(ro.tokens.device)
        r = torch.zeros(ro.tokens.shape[0], T, device=ro.tokens.device)
        r[:, -1] = final
        return r, final
    if mode != "per_step":
        raise ValueError(f"reward_mode must be 'terminal' or 'per_step', got {mode!r}")
    if ro.previews is None or len(ro.previews) != T + 1:
        raise ValueError("per-step rewards need a rollout with previews=True")
    pot = torch.stack([reward_fn(p, batch).float() for p in ro.previews], 1)  # [B, T+1]
    return pot[:, 1:] - pot[:, :-1], pot[:, -1]


def discounted_returns(rewards: Tensor, gamma: float) -> Tensor:
    """G_t = sum_{t' >= t} gamma^{t'-t} r_{t'} (reward-to-go), Float[B, T]."""
    out = torch.zeros_like(rewards)
    acc = torch.zeros_like(rewards[:, 0])
    for t in range(rewards.shape[1] - 1, -1, -1):
        acc = rewards[:, t] + gamma * acc
        out[:, t] = acc
    return out
