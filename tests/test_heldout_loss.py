"""The held-out loss during training (``train.eval_every``, ``training.heldout``): which samples each rank
scores, with which draws; the values logged; a run's weights the same with and without it; the loss falling as
the model learns; the train stage's errors when there is nothing to score."""

from __future__ import annotations

import json

import pytest
import torch

from core.stage import StageError
from tests.trainer_utils import assert_same_exports, heldout_score, make_job, make_shards, one_thread  # noqa: F401
from training.heldout import HeldOut, read_heldout
from training.metrics_log import read_metrics
from training.trainer import run_training

L, K = 16, 32


@pytest.fixture(scope="module")
def heldout(tmp_path_factory) -> list[str]:
    return make_shards(tmp_path_factory.mktemp("heldout"), n_shards=2, per_shard=6, seed=1)


@pytest.fixture(scope="module")
def train_shards(tmp_path_factory) -> list[str]:
    return make_shards(tmp_path_factory.mktemp("train"), n_shards=4, per_shard=12)


def test_each_rank_scores_its_share_of_the_first_samples_with_fixed_draws(heldout):
    first = read_heldout(heldout, L, K, 10, seed=3)
    assert [s["key"] for s in first] == [f"s000_{i:04d}" for i in range(6)] + [f"s001_{i:04d}" for i in range(4)]
    assert [s["seed"] for s in first] == [s["seed"] for s in read_heldout(heldout, L, K, 10, seed=3)]
    assert (
        len({s["seed"] for s in first}) == 10 and first[0]["seed"] != read_heldout(heldout, L, K, 1, seed=4)[0]["seed"]
    )
    ranks = [HeldOut(heldout, L, K, 10, micro_batch=2, seed=3, rank=r, world=3) for r in range(3)]
    assert all(h.samples == 9 for h in ranks)  # cut to a multiple of the ranks: the same passes on every rank
    assert [len(h.batches) for h in ranks] == [2, 2, 2]
    keys = [[k for b in h.batches for k in b["keys"]] for h in ranks]
    assert keys[1] == [first[i]["key"] for i in (1, 4, 7)]
    assert sorted(k for ks in keys for k in ks) == sorted(s["key"] for s in first[:9])
    seeds = {k: int(s) for h in ranks for b in h.batches for k, s in zip(b["keys"], b["seeds"])}
    assert seeds == {s["key"]: s["seed"] for s in first[:9]}  # a sample's draws do not depend on its rank
    with pytest.raises(ValueError, match="fewer than the 13 ranks"):
        HeldOut(heldout, L, K, 256, micro_batch=1, seed=3, rank=0, world=13)


def test_the_mean_over_ranks_equals_one_rank_s(heldout):
    """Scoring is the objective in eval mode; split over 2 ranks (summed as the trainer's all-reduce does) it gives
    the 1-rank figure: every sample has L/T scored tokens (p_error 0, uniform schedule)."""
    from tests.trainer_utils import TinyTextEncoder, tiny_model_dict
    from training.metrics_log import MetricsAccumulator
    from training.model import build_model
    from training.model.config import ModelConfig
    from training.model.train_module import StepSettings, TrainModule
    from training.train_config import TrainConfig

    torch.manual_seed(0)
    mcfg = ModelConfig(**tiny_model_dict())
    module = TrainModule(build_model(mcfg, "progressive"), StepSettings.from_config(TrainConfig(p_error=0.0)))
    module.eval()
    enc = TinyTextEncoder(mcfg.text_dim)

    def prepare(b):
        return {**b, "text": enc.encode(b["text_ids"], b["text_mask"])}

    one = HeldOut(heldout, L, K, 8, micro_batch=4, seed=0)(lambda b: module(b)[1], prepare)
    acc = MetricsAccumulator()
    for r in range(2):  # what two ranks' accumulators sum
        for b in HeldOut(heldout, L, K, 8, micro_batch=2, seed=0, rank=r, world=2).batches:
            acc.add(module(prepare(b))[1])
    two = acc.mean()
    assert one["val/loss"] == pytest.approx(two["loss"], abs=1e-5)
    assert one["val/token_acc"] == pytest.approx(two["token_acc"], abs=1e-6)


def test_a_run_logs_the_held_out_loss_and_trains_the_same_weights(tmp_path, train_shards, heldout):
    common = dict(steps=30, log_every=4, checkpoint_every=30, p_error=0.2, ema_decay=0.9, lr=1e-2)
    with_eval = make_job(tmp_path / "a", train_shards, heldout_shards=heldout, eval_every=6, eval_samples=12, **common)
    logs = []
    run_training(with_eval, log=logs.append)
    records = read_metrics(f"{with_eval.out_dir}/metrics.jsonl")
    val = {s: r["val/loss"] for s, r in records.items() if "val/loss" in r}
    assert sorted(val) == [6, 12, 18, 24, 30]
    assert "loss" not in records[6] and "loss" in records[12] and "val/token_acc" in records[12]  # 12: a log step
    # it learns what the held-out samples share with the training ones: a drop of 0.36-0.57 over train.seed 0-3
    assert val[30] < val[6] - 0.25, val
    assert any("held-out loss every 6 steps on 12 eval samples" in m for m in logs)
    assert any(m.startswith("[train] step 12/30") and "held-out loss" in m for m in logs), logs
    summary = json.loads((tmp_path / "a" / "train" / "summary.json").read_text())
    assert summary["last_metrics"]["val/loss"] == val[30]
    # train.ema_decay: the same samples scored with the EMA weights, which lag the trained ones
    ema = {s: r["val_ema/loss"] for s, r in records.items() if "val_ema/loss" in r}
    assert sorted(ema) == sorted(val) and all(ema[s] != val[s] for s in val) and ema[30] < ema[6], (val, ema)
    assert any(m.startswith("[train] step 6/30 | held-out loss") and "(EMA " in m for m in logs), logs
    # they are the exports' losses: each export scored again here gives its figure of the last step
    export = tmp_path / "a" / "train" / "export"
    for name, key in (("model.safetensors", "val/loss"), ("model_ema.safetensors", "val_ema/loss")):
        assert heldout_score(with_eval, export / name, heldout, 12) == pytest.approx(records[30][key], abs=1e-5), name

    without = make_job(tmp_path / "b", train_shards, **common)
    run_training(without, log=lambda m: None)
    for name in ("model.safetensors", "model_ema.safetensors"):  # the config.yaml differs by eval_every
        a, b = ((tmp_path / d / "train" / "export" / name).read_bytes() for d in ("a", "b"))
        assert a == b, name
    assert {s: r["loss"] for s, r in records.items() if "loss" in r} == {
        s: r["loss"] for s, r in read_metrics(f"{without.out_dir}/metrics.jsonl").items()
    }


def test_the_train_stage_needs_an_eval_split(tmp_path):
    from training.train_config import TrainConfig
    from training.train_stage import heldout_shards

    with pytest.raises(StageError, match="holds no token shards.*eval_split"):
        heldout_shards({"splits": {"train": str(tmp_path)}}, TrainConfig(eval_every=5))
    with pytest.raises(StageError, match="train.train_split trains on"):
        heldout_shards({"splits": {"eval": str(tmp_path)}}, TrainConfig(eval_every=5, train_split="eval"))
    make_shards(tmp_path / "eval", n_shards=1, per_shard=2)
    assert len(heldout_shards({"splits": {"eval": str(tmp_path / "eval")}}, TrainConfig(eval_every=5))) == 1


def test_the_run_table_shows_the_held_out_loss():
    from pipeline.summary import headline

    m = {"counts": {"steps": 30}, "metrics": {"loss": 3.2, "token_acc": 0.41, "val/loss": 3.5}}
    assert headline("train", m) == "step 30: loss 3.2, token_acc 0.41, held-out loss 3.5"


def test_a_job_without_held_out_shards_says_so_and_trains(tmp_path, train_shards):
    job = make_job(tmp_path, train_shards, steps=2, log_every=1, checkpoint_every=2, eval_every=1)
    logs = []
    run_training(job, log=logs.append)
    assert any("eval_every is set but the job has no held-out token shards" in m for m in logs), logs
    assert not any("val/loss" in r for r in read_metrics(f"{job.out_dir}/metrics.jsonl").values())


def test_the_ema_is_applied_for_the_block_and_the_trained_weights_come_back_bit_for_bit():
    from training.engine import EMA

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2)).bfloat16()
    net[1].bias.requires_grad_(False)  # not averaged: left alone
    ema = EMA(net, 0.5)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p))
    ema.update()
    trained = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(KeyError):
        with ema.applied():
            for s, (name, p) in zip(ema.shadow, ema.params):
                assert torch.equal(p, s.to(torch.bfloat16)) and not torch.equal(p, trained[name]), name
            assert torch.equal(net[1].bias, trained["1.bias"])
            raise KeyError  # an error inside still puts the trained weights back
    assert all(torch.equal(v, trained[k]) for k, v in net.state_dict().items())
    ema.zero3 = True  # ZeRO-3 partitions are swapped through DeepSpeed's optimizer (tests/test_trainer_deepspeed.py)
    with pytest.raises(RuntimeError, match="ZeRO-3 partitions and no ZeRO-3 optimizer"):
        with ema.applied():
            pass
