"""A train stage whose trainer had finished (the stage stopped after it, or a setting that leaves the weights
alone changed) publishes its final checkpoint again without launching a trainer that would load it on every
rank to train 0 steps; anything else still launches."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.trainer_utils import Crash, crash_at, make_job, make_shards, one_thread  # noqa: F401 (autouse)
from training import checkpoint as ckpt
from training.trainer import SUMMARY, finished_summary, run_training

QUIET = dict(log=lambda m: None)


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> list[str]:
    return make_shards(tmp_path_factory.mktemp("shards"), n_shards=2, per_shard=16)


class Launched(RuntimeError):
    pass


def test_a_finished_run_is_published_again_without_a_launch(tmp_path, shards, monkeypatch):
    import training.trainer as trainer
    from pipeline.experiment import load_config
    from pipeline.runner import MANIFEST, run_stage
    from tests.trainer_utils import train_stage_inputs, write_config

    train = {"steps": 4, "checkpoint_every": 2, "train_split": "train"}
    cfg = load_config(write_config(tmp_path, train))
    stage = train_stage_inputs(cfg, shards)
    run = Path(cfg.run_dir)
    first = run_stage(cfg, run, stage, log=lambda m: None)
    export = (run / "train" / "export" / "model.safetensors").read_bytes()

    def launch(*a, **k):
        raise Launched("the trainer was launched")

    monkeypatch.setattr(trainer, "run_training", launch)
    (run / "train" / "export" / "model.safetensors").unlink()  # the stage was stopped while it published
    (run / "train" / MANIFEST).unlink()
    lines: list[str] = []
    again = run_stage(cfg, run, stage, log=lines.append)
    assert any("nothing to train" in line for line in lines), lines
    assert (run / "train" / "export" / "model.safetensors").read_bytes() == export
    assert again["identity"] == first["identity"] and again["metrics"] == first["metrics"]
    assert again["counts"] == first["counts"] and again["resumed_from"] == 4

    cfg = load_config(write_config(tmp_path, {**train, "log_every": 2}))  # out of the lineage: the weights stay
    assert run_stage(cfg, run, stage, log=lambda m: None)["identity"] == first["identity"]

    cfg = load_config(write_config(tmp_path, {**train, "steps": 6}))  # a longer run trains
    with pytest.raises(Launched):
        run_stage(cfg, run, stage, log=lambda m: None)
    cfg = load_config(write_config(tmp_path, train))
    (run / "train" / SUMMARY).unlink()  # the trainer was stopped after its final checkpoint, before its summary
    with pytest.raises(Launched):
        run_stage(cfg, run, stage, log=lambda m: None)


def test_a_summary_never_outlives_a_newer_checkpoint(tmp_path, shards):
    """Every trainer run removes the summary before its first checkpoint: a run stopped after it wrote a
    checkpoint at the old final step leaves no summary that would vouch for that checkpoint's metrics."""
    job = make_job(tmp_path, shards, steps=4, checkpoint_every=2, log_every=1)
    out = Path(job.out_dir)
    run_training(job, **QUIET)
    tag = ckpt.tag_for(4)
    assert finished_summary(out, 4, tag)["checkpoint"] == str(out / "checkpoints" / tag)
    assert finished_summary(out, 4, ckpt.tag_for(2)) is None and finished_summary(out, 6, tag) is None
    assert finished_summary(out, 4, None) is None

    longer = make_job(tmp_path, shards, steps=8, checkpoint_every=2, log_every=1)
    with pytest.raises(Crash):
        run_training(longer, hooks=crash_at(7), **QUIET)
    assert not (out / SUMMARY).exists()
    assert finished_summary(out, 4, tag) is None


def test_a_run_shortened_below_its_checkpoints_is_refused_before_any_launch(tmp_path, shards, monkeypatch):
    """train.steps lowered below the newest checkpoint: neither its weights nor its metrics are the shorter
    run's, so the stage fails at once saying what to set (it used to launch the ranks, then fail on a missing
    checkpoint); train.resume: never trains the shorter run from scratch."""
    import training.trainer as trainer
    from core.stage import StageError
    from pipeline.experiment import load_config
    from pipeline.runner import run_stage
    from tests.trainer_utils import train_stage_inputs, write_config

    train = {"steps": 4, "checkpoint_every": 2, "keep_last": 1, "train_split": "train"}
    cfg = load_config(write_config(tmp_path, train))
    stage = train_stage_inputs(cfg, shards)
    run = Path(cfg.run_dir)
    run_stage(cfg, run, stage, log=lambda m: None)
    real = trainer.run_training
    monkeypatch.setattr(trainer, "run_training", lambda *a, **k: (_ for _ in ()).throw(Launched("launched")))
    cfg = load_config(write_config(tmp_path, {**train, "steps": 2}))
    with pytest.raises(StageError, match=r"step_00000004 is past train.steps \(2\): set train.steps to 4 or more"):
        run_stage(cfg, run, stage, log=lambda m: None)
    with pytest.raises(ckpt.ResumeRefused, match="past train.steps"):  # the ranks apply the same rule
        real(make_job(tmp_path / "run", shards, steps=2, checkpoint_every=2, resume="force"), **QUIET)
    monkeypatch.setattr(trainer, "run_training", real)
    cfg = load_config(write_config(tmp_path, {**train, "steps": 2, "resume": "never"}))
    assert run_stage(cfg, run, stage, log=lambda m: None)["counts"]["steps"] == 2


def test_a_summary_vouches_only_for_the_checkpoint_it_was_written_after(tmp_path, shards):
    """A summary names its checkpoint by path and by the time in its COMPLETE record: a checkpoint made again at
    that path later (by a run before summaries were removed at the start) is not taken for it."""
    import json

    job = make_job(tmp_path, shards, steps=2, checkpoint_every=2, log_every=1)
    out = Path(job.out_dir)
    run_training(job, **QUIET)
    tag = ckpt.tag_for(2)
    assert finished_summary(out, 2, tag) is not None
    done = out / "checkpoints" / tag / ckpt.COMPLETE
    record = json.loads(done.read_text())
    done.write_text(json.dumps({**record, "time": record["time"] + 1}))
    assert finished_summary(out, 2, tag) is None
