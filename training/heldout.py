"""The held-out loss during training (``train.eval_every``, ``train.eval_samples``).

Every ``eval_every`` steps (and at the last) the trainer scores the first ``eval_samples`` samples of the
tokenize stage's ``eval`` split with the training objective itself, in eval mode (no dropout, no condition
dropout) and without gradients: ``val/loss``, ``val/token_acc``, ... beside the training metrics in
``metrics.jsonl``, TensorBoard and the console line. Each sample keeps its own draws (its stage, its order noise,
the errors injected into it: seeded from (train.seed, its key), as the training's are from (seed, epoch, key)),
so two evaluations of one run differ only by the weights, and runs with the same seed see the same draws.
With ``train.ema_decay`` the same samples are scored again with the EMA weights (what the sample and evaluate
stages use by default, ``eval.use_ema``): ``val_ema/loss``, ... (under ZeRO-3 the averages are swapped into
each rank's parameter partitions: ``training.engine.EMA.applied``).

The samples are split over the ranks (rank r takes samples r, r + world, ...; the count is cut to a multiple
of the world size so that every rank runs the same number of forward passes: ZeRO-3 gathers parameters in
each, on every rank). The metrics are averaged over the micro-batches of every rank. Nothing here
touches the training's data stream or random state: a run gives the same weights with and without it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from training.data import LoaderSpec, _Reader, collate, sample_seed, seed_key
from training.metrics_log import MetricsAccumulator

PREFIX, EMA_PREFIX = "val/", "val_ema/"


def read_heldout(
    shards: list[str], seq_len: int, codebook_size: int, n: int, seed: int, on_bad_shard: str = "skip"
) -> list[dict]:
    """The first ``n`` good samples of ``shards`` in order, each with its fixed ``seed`` (``on_bad_shard`` as the
    training loader applies it)."""
    spec = LoaderSpec(
        list(shards), seq_len, codebook_size, micro_batch=1, seed=seed, split="sample", on_bad_shard=on_bad_shard
    )
    reader = _Reader(spec, 0)
    out: list[dict] = []
    for path in spec.shards:
        for _, sample in reader._shard_samples(path):
            sample["seed"] = sample_seed(seed, 0, f"heldout:{seed_key(sample)}")
            out.append(sample)
            if len(out) == n:
                return out
    return out


class HeldOut:
    """This rank's share of the held-out samples, as micro-batches; ``__call__`` scores them (every rank)."""

    def __init__(
        self,
        shards: list[str],
        seq_len: int,
        codebook_size: int,
        n: int,
        micro_batch: int,
        seed: int,
        rank: int = 0,
        world: int = 1,
        on_bad_shard: str = "skip",
    ):
        samples = read_heldout(shards, seq_len, codebook_size, n, seed, on_bad_shard)
        usable = len(samples) // world * world
        if usable == 0:
            raise ValueError(
                f"train.eval_every: the eval split ({len(shards)} shard(s)) holds {len(samples)} usable sample(s), "
                f"fewer than the {world} ranks"
            )
        mine = samples[rank:usable:world]
        self.samples = usable
        self.batches = [collate(mine[i : i + micro_batch]) for i in range(0, len(mine), micro_batch)]

    @torch.no_grad()
    def __call__(
        self,
        evaluate: Callable[[dict], dict],
        prepare: Callable[[dict], dict],
        distributed: bool = False,
        prefix: str = PREFIX,
    ) -> dict[str, float]:
        """``{prefix + "<metric>": mean}`` over the held-out micro-batches and ranks, as the training's metrics are
        averaged (``MetricsAccumulator``: revise precision / recall from the summed counts): ``prepare(batch)``
        moves a batch to the device and encodes its text, ``evaluate(batch)`` returns the objective's metrics
        (``engine.evaluate``)."""
        acc = MetricsAccumulator()
        for batch in self.batches:
            acc.add(evaluate(prepare(batch)))
        return {f"{prefix}{k}": v for k, v in acc.mean(distributed=distributed).items()}
