"""Values a component section accepted at load although its stage refuses them, or silently misuses them, hours
later: each now fails at load naming its key, and the values next to it that work still load."""

from __future__ import annotations

import math

import pytest

from core.config import ConfigError, from_dict
from evaluation.config import EvalConfig
from tokenization.download_config import DownloadConfig
from tokenization.text import TextEncoderConfig
from tokenization.vqgan.config import TokenizerConfig
from training.model.sampling.config import SampleConfig
from training.superres_config import SuperResConfig
from training.train_config import TrainConfig

VQD = {"sampler": "vq_diffusion", "cluster_sampling": True}
CASES = [  # (section class, its key, a section refused, what the error says, the working values next to it)
    (SampleConfig, "sample", {**VQD, "diffusion_strategy": "reverse"}, "cluster_sampling needs a token-writing",
     [{**VQD, "diffusion_strategy": "purity"}, {**VQD, "cluster_sampling": False, "diffusion_strategy": "reverse"}]),
    (DownloadConfig, "data.download", {"encode_format": "png"}, r"encode_quality must be in \[0, 9\] with",
     [{"encode_format": "png", "encode_quality": 9}, {"encode_format": "webp", "encode_quality": 100}]),
    (DownloadConfig, "data.download", {"encode_format": "png", "encode_quality": 10}, r"png .*, got 10$",
     [{"encode_format": "png", "encode_quality": 0}]),
    (TokenizerConfig, "tokenizer", {"in_channels": 1}, "in_channels must be 3", [{"in_channels": 3}]),
    (TokenizerConfig, "tokenizer", {"out_ch": 4}, "out_ch must be 3", [{"out_ch": 3}]),
    (SuperResConfig, "sr", {"tokenizer": {"out_ch": 1}}, "sr.tokenizer.out_ch: out_ch must be 3", [{"tokenizer": {}}]),
    (TokenizerConfig, "tokenizer", {"ema_decay": 1.0}, "ema_decay must be < 1 with ema_codebook",
     [{"ema_decay": 0.99}, {"ema_decay": 1.0, "ema_codebook": False}]),  # unused without the EMA codebook
    (EvalConfig, "eval", {"metrics": ["fid"], "fid_modes": []}, "fid_modes must not be empty with fid",
     [{"metrics": ["fid"], "fid_modes": ["clean_fid"]}, {"metrics": ["clip_score"], "fid_modes": []}]),
    (EvalConfig, "eval", {"metrics": ["captioning"], "caption_metrics": []}, "caption_metrics must not be empty",
     [{"metrics": ["captioning"], "caption_metrics": ["CIDEr"]}, {"metrics": ["fid"], "caption_metrics": []}]),
    (TrainConfig, "train", {"betas": [0.9, 1.0]}, r"train.betas: must be in \[0.0, 1.0\), got 1.0",
     [{"betas": [0.0, 0.999]}]),
    (TrainConfig, "train", {"betas": [1.5, 0.96]}, r"train.betas: must be in \[0.0, 1.0\), got 1.5",
     [{"betas": [0.9, 0.96]}]),
    (SuperResConfig, "sr", {"train": {"betas": [0.9, 1.0]}}, r"sr.train.betas: must be in \[0.0, 1.0\)",
     [{"train": {"betas": [0.5, 0.9]}}]),
    (TrainConfig, "train", {"ema_decay": 1.0}, r"train.ema_decay: must be in \[0.0, 1.0\), got 1.0",
     [{"ema_decay": 0.9999}, {"ema_decay": 0.0}]),  # 0: no EMA (the engine skips a falsy decay)
    (TextEncoderConfig, "text_encoder", {"device": "gpu"}, "device must be a torch device",
     [{"device": d} for d in ("cpu", "cuda", "cuda:1", "meta")]),
    (TextEncoderConfig, "text_encoder", {"device": ""}, "device must be a torch device", [{"device": "cuda:0"}]),
]  # fmt: skip


@pytest.mark.parametrize("cls, path, bad, match, good", CASES, ids=[f"{c[1]}-{i}" for i, c in enumerate(CASES)])
def test_refused_at_load_next_to_values_that_load(cls, path, bad, match, good):
    with pytest.raises(ConfigError, match=match):
        from_dict(cls, bad, "x.yaml", path)
    for data in good:
        from_dict(cls, data, "x.yaml", path)


@pytest.mark.parametrize("factory", ["NotAnIndex", "", "IVF,PQ32", "flat"])
def test_a_retrieval_index_faiss_cannot_parse_fails_at_load(factory):
    pytest.importorskip("faiss")
    with pytest.raises(ConfigError, match="eval: retrieval_index .* is not a FAISS index-factory string"):
        from_dict(EvalConfig, {"metrics": ["retrieval"], "retrieval_index": factory}, "x.yaml", "eval")


def test_retrieval_indexes_faiss_parses_load_whatever_the_clip_width():
    pytest.importorskip("faiss")
    for factory in ("auto", "Flat", "IVF4096,PQ64", "IVF8,PQ16x6", "HNSW32", "OPQ16_64,IVF4096_HNSW32,PQ16x4fs"):
        from_dict(EvalConfig, {"metrics": ["retrieval"], "retrieval_index": factory})
    from_dict(EvalConfig, {"metrics": ["retrieval"], "retrieval_index": "PQ7"})  # d % 7: known with the CLIP model
    from_dict(EvalConfig, {"metrics": ["fid"], "retrieval_index": "NotAnIndex"})  # not used: not checked
    with pytest.raises(ConfigError, match="retrieval_index"):  # the failing half: old code accepted it
        from_dict(EvalConfig, {"metrics": ["retrieval"], "retrieval_index": "IVF4096;PQ64"})


def test_attn_bias_text_takes_minus_infinity_only():
    """-inf hides every text key (the null key is left: unconditional samples); +inf gives NaN attention."""
    import torch

    from training.model.layers import text_attn_bias

    assert from_dict(SampleConfig, {"attn_bias_text": -math.inf}, "x.yaml", "sample").attn_bias_text == float("-inf")
    weights = torch.softmax(
        torch.zeros(1, 1, 1, 3) + text_attn_bias(torch.ones(1, 3, dtype=bool), -math.inf, torch.float32), -1
    )
    assert weights.flatten().tolist() == [1.0, 0.0, 0.0]
    with pytest.raises(ConfigError, match=r"sample.attn_bias_text: \+inf makes the attention NaN"):
        from_dict(SampleConfig, {"attn_bias_text": float("inf")}, "x.yaml", "sample")
