"""The pipeline's own checkpoint files load with ``torch.load(weights_only=True)``; a file that would need full
unpickling is refused before anything in it runs, unless ``train.trust_checkpoint`` says to trust it."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.trainer_utils import make_job, make_shards, one_thread  # noqa: F401 (autouse fixture)
from training import checkpoint as ckpt
from training.safe_load import TRUST_KEY, UntrustedCheckpoint, check_deepspeed_files, load_state
from training.trainer import run_training

QUIET = dict(log=lambda m: None)


class Planted:
    """Unpickling this runs ``open(marker, "w")``: what a hostile checkpoint could do with any code."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A finished 4-step local run with EMA (checkpoints at steps 2 and 4), and its job."""
    root = tmp_path_factory.mktemp("ckpt_run")
    shards = make_shards(root / "shards", n_shards=2, per_shard=8)
    job = make_job(root / "run", shards, steps=4, checkpoint_every=2, ema_decay=0.5, order="random", keep_last=2)
    run_training(job, **QUIET)
    return job, Path(job.out_dir) / "checkpoints"


def test_every_own_checkpoint_file_loads_weights_only(run):
    _, d = run
    files = sorted((d / "step_00000004").glob("*.pt"))
    assert {f.name for f in files} == {"engine_state.pt", "rank_00000.pt", "ema.pt"}
    for f in files:
        torch.load(f, map_location="cpu", weights_only=True)  # raises for a pickled numpy RNG state


def test_rng_states_round_trip_as_tensors_and_plain_values(tmp_path):
    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    np.random.standard_normal()  # leaves a cached gaussian in numpy's state
    torch.save(ckpt.rng_state(), tmp_path / "rng.pt")
    expected = (torch.rand(3), np.random.standard_normal(3), random.random())
    torch.manual_seed(9), np.random.seed(9), random.seed(9)
    ckpt.set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    got = (torch.rand(3), np.random.standard_normal(3), random.random())
    assert torch.equal(got[0], expected[0]) and np.array_equal(got[1], expected[1]) and got[2] == expected[2]


def test_a_checkpoint_that_pickles_code_is_refused_unless_trusted(run, tmp_path):
    job, d = run
    marker = tmp_path / "code_ran"
    rank_file = d / "step_00000004" / "rank_00000.pt"
    extras = torch.load(rank_file, weights_only=True)
    torch.save({**extras, "planted": Planted(marker)}, rank_file)  # tampered after the run
    job.sections["train"]["steps"] = 6  # resume from step 4
    with pytest.raises(UntrustedCheckpoint, match=rf"rank_00000.pt: .*{TRUST_KEY}: true"):
        run_training(job, **QUIET)
    assert not marker.exists()  # refused before anything in the file ran
    assert load_state(rank_file, trust=True)["planted"] is not None and marker.exists()  # trusted: unpickled


def test_deepspeed_files_are_checked_before_deepspeed_unpickles_them(tmp_path):
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum

    tag = tmp_path / "step_00000002"
    tag.mkdir()
    torch.save({"loss_scaler": LossScaler(1.0), "zero_stage": ZeroStageEnum.gradients}, tag / "zero_pp_rank_0.pt")
    torch.save({"planted": Planted(tmp_path / "code_ran")}, tag / "rank_00000.pt")  # ours: loaded by load_state
    assert [p.name for p in check_deepspeed_files(tag)] == ["zero_pp_rank_0.pt"]
    torch.save({"planted": Planted(tmp_path / "code_ran")}, tag / "mp_rank_00_model_states.pt")
    with pytest.raises(UntrustedCheckpoint, match=r"mp_rank_00_model_states.pt: .*GLOBAL _?io.open"):
        check_deepspeed_files(tag)
    assert check_deepspeed_files(tag, trust=True) == [] and not (tmp_path / "code_ran").exists()
