"""Held-out token NLL (``evaluation.token_nll``): the progressive chain is the training objective's token
term summed over the stages of the run's order, the AR one is teacher forcing, the learned order follows
the policy on the true tokens, and the evaluate stage reports it (``eval.metrics: [token_nll]``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from evaluation.token_nll import token_nll
from tests.trainer_utils import one_thread  # noqa: F401 (autouse fixture)
from training.model import build_model
from training.model.config import model_config
from training.model.orders import get_order
from training.model.tuples import make_tuples
from training.train_config import TrainConfig

CFG = dict(grid_h=2, grid_w=4, codebook_size=16, text_dim=8, dim=32, layers=1, heads=2, ffn_dim=64, cond_dropout=0.0)
B, L, T = 3, 8, 4


def _data(seed=0):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randint(0, 16, (B, L), generator=g),
        torch.rand(B, L, generator=g),
        torch.randn(B, 2, 8, generator=g),
        torch.ones(B, 2, dtype=torch.bool),
    )


@pytest.mark.parametrize("order", ["const_error", "raster", "random"])
def test_progressive_nll_is_the_training_token_loss_summed_over_the_stages(order):
    torch.manual_seed(0)
    pdm = build_model(model_config("tiny", **CFG), "progressive").eval()
    tokens, qerr, text, mask = _data()
    got = token_nll(pdm, "pdm", TrainConfig(order=order, stages=T, p_error=0.3), tokens, qerr, text, mask)
    g = torch.Generator().manual_seed(0)  # the metric's fixed seed
    stage_of = get_order(order)(B, L, T, quant_error=qerr, grid=pdm.grid, generator=g)
    total = torch.zeros(B)
    with torch.no_grad():
        for t in range(T):  # the training tuples at stage t, without injected errors
            tup = make_tuples(tokens, stage_of, T, pdm.mask_id, 16, p_error=0.0, stage=torch.full((B,), t))
            out = pdm(tup.inputs, text, mask)
            ce = F.cross_entropy(out.token_logits.transpose(1, 2), tokens, reduction="none")
            total += (ce * tup.generate).sum(1)
    assert torch.allclose(got, total / L, atol=1e-5)
    assert (got > 0).all() and got.shape == (B,)


def test_autoregressive_nll_is_teacher_forcing():
    from training.model.ar_model import ar_loss

    torch.manual_seed(0)
    ar = build_model(model_config("tiny", **CFG), "autoregressive").eval()
    tokens, qerr, text, mask = _data()
    got = token_nll(ar, "ar", TrainConfig(mode="autoregressive"), tokens, qerr, text, mask)
    with torch.no_grad():
        expect = ar_loss(ar(tokens, text, mask), tokens)[0]
    assert torch.allclose(got.mean(), expect, atol=1e-5)


def test_learned_order_nll_follows_the_policy_on_the_true_tokens():
    """A policy whose scores are its position bias, falling from position 0: greedy teacher-forced picks
    are the raster order, so the NLL equals the raster chain's; reversed, it differs."""
    from training.model.order_learner import OrderLearnerConfig, PositionPolicy

    torch.manual_seed(0)
    mcfg = model_config("tiny", **CFG)
    pdm = build_model(mcfg, "progressive").eval()
    tokens, qerr, text, mask = _data()
    policy = PositionPolicy.for_model(mcfg, OrderLearnerConfig(hidden=8))
    with torch.no_grad():
        policy.pos_bias.copy_(torch.arange(L, 0, -1).float() * 10)
    learned = TrainConfig(order="learned", stages=T)
    raster = token_nll(pdm, "pdm", TrainConfig(order="raster", stages=T), tokens, qerr, text, mask)
    assert torch.allclose(token_nll(pdm, "pdm", learned, tokens, qerr, text, mask, policy), raster, atol=1e-6)
    with torch.no_grad():
        policy.pos_bias.neg_()
    assert not torch.allclose(token_nll(pdm, "pdm", learned, tokens, qerr, text, mask, policy), raster)


def test_the_evaluate_stage_reports_the_held_out_token_nll(tmp_path):
    """... and adding it to eval.metrics (which adds the tokenize stage to the stage's inputs) reuses the other
    metrics' results; new token shards compute it again, and only it."""
    from evaluation.token_nll import eval_token_nll, read_token_shards
    from tests.eval_utils import load, make_run, manifest, run
    from tokenization.shards import write_token_shard
    from tokenization.text import load_text_encoder
    from training.export_loader import load_exported_model

    cfg = make_run(tmp_path, ["eval.metrics=[attributes]"])
    rd = Path(cfg.run_dir)
    text = load_text_encoder(cfg.text_encoder, rd / "text")
    caps = ["a small red circle at the top left", "a large blue square at the bottom right"] * 3
    ids, m = text.tokenize(caps)
    g = torch.Generator().manual_seed(1)
    L_run, K = cfg.model.seq_len, cfg.model.codebook_size
    samples = [
        {
            "key": f"e{i:03d}",
            "tokens": torch.randint(0, K, (L_run,), generator=g).numpy(),
            "qerr": torch.rand(L_run, generator=g).numpy(),
            "text_ids": ids[i][m[i]].numpy(),
            "txt": caps[i],
            "grid": [cfg.model.grid_h, cfg.model.grid_w],
        }
        for i in range(len(caps))
    ]
    (rd / "tokenize" / "eval").mkdir(parents=True)
    write_token_shard(rd / "tokenize" / "eval" / "00000.tar", samples)
    manifest(rd / "tokenize", "tokenize", splits={"eval": str(rd / "tokenize" / "eval")})
    run(cfg, "sample")
    run(cfg, "evaluate")
    logs = []
    with_nll = load(rd, ["eval.metrics=[attributes,token_nll]"])
    m = run(with_nll, "evaluate", log=logs.append)
    model, _, meta = load_exported_model(rd / "train" / "export")
    direct = eval_token_nll(model, meta["kind"], cfg.train, read_token_shards(rd / "tokenize" / "eval"), text, "cpu")
    assert direct["samples"] == len(caps) and m["metrics"]["token_nll"] == pytest.approx(direct["token_nll"])
    assert "## Held-out token NLL" in (rd / "evaluate" / "report.md").read_text()
    assert json.loads((rd / "evaluate" / "report.json").read_text())["runs"]["PDM (this run)"]["token_nll"]
    reused = [x.split(":")[0] for x in logs if ": reused" in x]
    assert len(reused) == 3 and all(x.startswith("[evaluate] attributes of") for x in reused), logs

    logs.clear()  # new token shards (another tokenize fingerprint): the NLL computed again, the rest reused
    manifest(rd / "tokenize", "tokenize", splits={"eval": str(rd / "tokenize" / "eval")}, fingerprint="other")
    run(load(rd, ["eval.metrics=[token_nll,attributes]"]), "evaluate", log=logs.append)
    assert "[evaluate] token_nll of held-out tokens" in logs and sum(": reused" in x for x in logs) == 3, logs
    logs.clear()
    run(load(rd, ["eval.metrics=[attributes,token_nll]"]), "evaluate", log=logs.append)
    assert sum(": reused" in x for x in logs) == 4 and any(x.startswith("[evaluate] token_nll of held") for x in logs)
