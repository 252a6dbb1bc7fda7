"""The training loop on the plain engine: learning, checkpoints, export, exact resume, crash safety, stage."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from tests.trainer_utils import Crash, crash_at, losses, make_job, make_shards, one_thread  # noqa: F401 (autouse)
from training import checkpoint as ckpt
from training.trainer import run_training

QUIET = dict(log=lambda m: None)


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> list[str]:
    return make_shards(tmp_path_factory.mktemp("shards"), n_shards=4, per_shard=16)


def test_local_run_learns_checkpoints_and_exports(tmp_path, shards):
    job = make_job(
        tmp_path,
        shards,
        steps=80,
        checkpoint_every=20,
        keep_last=2,
        log_every=5,
        ema_decay=0.9,
        p_error=0.3,
        num_workers=1,
        lr=5e-3,
    )
    summary = run_training(job, **QUIET)
    curve = losses(job.out_dir)
    assert sorted(curve) == list(range(5, 81, 5))
    assert curve[80] < 0.75 * curve[5], curve  # it learns (toy data is learnable)
    d = Path(job.out_dir) / "checkpoints"
    assert ckpt.complete_tags(d) == ["step_00000060", "step_00000080"]  # keep_last = 2
    assert (d / "latest").read_text() == "step_00000080"
    sd, meta = ckpt.load_export(Path(job.out_dir) / "export" / "model.safetensors")
    from training.model.config import model_config
    from training.model.pdm import PDM

    model = PDM(model_config(json.loads(meta["model_config"])))
    model.load_state_dict(sd)  # every weight, nothing else
    assert meta["step"] == "80" and meta["kind"] == "pdm"
    ema, _ = ckpt.load_export(Path(job.out_dir) / "export" / "model_ema.safetensors")
    assert set(ema) == set(sd) and not torch.equal(ema["tok_emb.weight"], sd["tok_emb.weight"])
    resolved = yaml.safe_load((Path(job.out_dir) / "export" / "config.yaml").read_text())
    assert resolved["model"]["codebook_size"] == model.codebook_size and resolved["train"]["steps"] == 80
    m = json.loads((Path(job.out_dir) / "metrics.jsonl").read_text().splitlines()[-1])
    for k in (
        "loss",
        "token_loss",
        "state_loss",
        "token_acc",
        "codebook_usage",
        "lr",
        "grad_norm",
        "tokens_per_s",
        "data/bad_shards",
    ):
        assert k in m, k
    assert summary["resumed_from"] == 0 and (Path(job.out_dir) / "tb").is_dir()
    # a second call finds the run finished and only republishes the export, with the run's last metrics (a run
    # stopped after its final checkpoint reported none: an empty metrics line in the stage table)
    again = run_training(job, text_encoder=None, **QUIET)
    assert again["resumed_from"] == 80 and again["last_metrics"] == summary["last_metrics"]
    assert summary["last_metrics"]["step"] == 80 and "loss" in summary["last_metrics"]


def test_crash_after_checkpoint_then_resume_repeats_the_uninterrupted_run(tmp_path, shards):
    kw = dict(steps=12, checkpoint_every=4, p_error=0.3, order="random", num_workers=2, ema_decay=0.5)
    ref = make_job(tmp_path / "ref", shards, **kw)
    run_training(ref, **QUIET)
    job = make_job(tmp_path / "crash", shards, **kw)
    with pytest.raises(Crash):
        run_training(job, hooks=crash_at(7), **QUIET)
    assert (Path(job.out_dir) / "checkpoints" / "latest").read_text() == "step_00000004"
    assert run_training(job, **QUIET)["resumed_from"] == 4
    a, b = losses(ref.out_dir), losses(job.out_dir)
    assert [a[s] for s in range(5, 13)] == [b[s] for s in range(5, 13)]  # bit-identical
    wa, _ = ckpt.load_export(Path(ref.out_dir) / "export" / "model_ema.safetensors")
    wb, _ = ckpt.load_export(Path(job.out_dir) / "export" / "model_ema.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_a_crash_mid_save_never_moves_latest(tmp_path, shards, monkeypatch):
    job = make_job(tmp_path, shards, steps=8, checkpoint_every=4)
    real = ckpt.write_export

    def failing(folder, *a, **k):
        if Path(folder).name == "step_00000008":
            raise Crash("disk full while exporting")
        return real(folder, *a, **k)

    monkeypatch.setattr(ckpt, "write_export", failing)
    with pytest.raises(Crash):
        run_training(job, **QUIET)
    d = Path(job.out_dir) / "checkpoints"
    assert (d / "latest").read_text() == "step_00000004"
    assert (d / "step_00000008").is_dir() and not ckpt.is_complete(d, "step_00000008")
    assert ckpt.find_resume(d) == "step_00000004"
    (d / "latest").write_text("step_00000008")  # even a bad pointer is not followed
    assert ckpt.find_resume(d, log=lambda m: None) == "step_00000004"
    monkeypatch.setattr(ckpt, "write_export", real)
    assert run_training(job, **QUIET)["resumed_from"] == 4
    assert ckpt.complete_tags(d)[-1] == "step_00000008" and (d / "latest").read_text() == "step_00000008"


def test_train_stage_runs_through_the_pipeline_runner(tmp_path, shards):
    """The registered stage with launcher local: tokenize/<split>/*.tar + the text stage's tiny T5."""
    from pipeline.experiment import load_config
    from pipeline.runner import run_stage
    from tests.trainer_utils import train_stage_inputs, write_config

    path = write_config(tmp_path, {"steps": 4, "checkpoint_every": 2, "train_split": "train", "sample_every": 2})
    cfg = load_config(path)
    run = Path(cfg.run_dir)
    stage = train_stage_inputs(cfg, shards[:2])
    assert stage.inputs == ("tokenize", "text", "tokenizer")
    manifest = run_stage(cfg, run, stage, log=lambda m: None)
    assert manifest["counts"]["steps"] == 4 and manifest["counts"]["shards"] == 2
    assert Path(manifest["outputs"]["export"]).is_file() and manifest["metrics"]["loss"] > 0
    from importlib.metadata import version

    for env in (manifest["environment"], manifest["trainer_environment"]):  # the stage's process, the rank 0's
        assert env["packages"]["torch"] == version("torch") and env["machine"]["cores"] > 0
    job = json.loads((run / "train" / "job.json").read_text())
    assert job["engine"] == "local" and job["text_encoder"] == str(run / "text")
    from PIL import Image

    grids = sorted((run / "train" / "samples").glob("step_*.png"))  # train.sample_every = 2
    assert [g.name for g in grids] == ["step_00000002.png", "step_00000004.png"]
    assert Image.open(grids[0]).size[0] > 2 * 16  # several decoded 16 px samples side by side


def test_sample_grids_leave_the_weights_alone(tmp_path, shards):
    """``train.sample_every`` is out of a checkpoint's lineage because the grids sample with their own generator:
    the same run with and without them ends with the same weights, byte for byte."""
    from pipeline.experiment import load_config
    from tests.trainer_utils import write_config
    from tokenization.vqgan import VQModel, save_tokenizer

    kw = dict(steps=4, checkpoint_every=4, log_every=2, num_workers=0, ema_decay=0.9)
    run_training(make_job(tmp_path / "plain", shards, sample_every=0, **kw), **QUIET)
    job = make_job(tmp_path / "grids", shards, sample_every=2, **kw)
    tokenizer = load_config(write_config(tmp_path / "grids", {"sample_every": 2, **kw})).tokenizer
    torch.manual_seed(0)
    save_tokenizer(VQModel(tokenizer), tokenizer, tmp_path / "tokenizer")
    job.tokenizer = str(tmp_path / "tokenizer")
    run_training(job, **QUIET)
    assert len(list((tmp_path / "grids" / "train" / "samples").glob("step_*.png"))) == 2
    for name in ("model.safetensors", "model_ema.safetensors"):
        a, b = (tmp_path / d / "train" / "export" / name for d in ("plain", "grids"))
        assert a.read_bytes() == b.read_bytes(), name


def _lr_at(out_dir, step: int) -> float:
    rows = [json.loads(line) for line in (Path(out_dir) / "metrics.jsonl").read_text().splitlines()]
    assert len({r["step"] for r in rows}) == len(rows), "a step was logged twice"
    return next(r["lr"] for r in rows if r["step"] == step)


def test_resume_policy_refuses_other_settings_and_the_schedule_follows_the_config(tmp_path, shards):
    """A checkpoint made from other token shards or optimiser settings is refused (naming the difference);
    ``never`` starts over with the old checkpoints moved aside; ``force`` continues, the learning rate then
    follows the config; a longer run resumes; metrics.jsonl never logs a step twice."""
    from training.engine import lr_lambda
    from training.trainer import TrainJob

    kw = dict(steps=4, checkpoint_every=2, warmup_steps=0, lr=3e-3, log_every=1, num_workers=0)
    job = make_job(tmp_path, shards, **kw)
    job.inputs = {"tokens": "tokens-a", "text": "text-a"}
    run_training(job, **QUIET)
    longer = make_job(tmp_path, shards, **{**kw, "steps": 6})
    longer.inputs = job.inputs
    assert run_training(longer, **QUIET)["resumed_from"] == 4  # the same lineage, a longer run
    assert sorted(losses(job.out_dir)) == [1, 2, 3, 4, 5, 6]

    other_tokens = TrainJob(**{**longer.__dict__, "inputs": {"tokens": "tokens-b", "text": "text-a"}})
    with pytest.raises(ckpt.ResumeRefused, match="inputs.tokens: 'tokens-a' -> 'tokens-b'"):
        run_training(other_tokens, **QUIET)
    lower = make_job(tmp_path, shards, **{**kw, "steps": 8, "lr": 1e-3})
    lower.inputs = job.inputs
    with pytest.raises(ckpt.ResumeRefused, match=r"train.lr: 0.003 -> 0.001.*train.resume: never"):
        run_training(lower, **QUIET)

    forced = make_job(tmp_path, shards, **{**kw, "steps": 8, "lr": 1e-3, "resume": "force"})
    forced.inputs = job.inputs
    assert run_training(forced, **QUIET)["resumed_from"] == 6
    t = forced.trainer_config().train
    assert _lr_at(job.out_dir, 7) == pytest.approx(1e-3 * lr_lambda(t)(6))  # the new lr, at step 6 of the new schedule

    fresh = make_job(tmp_path, shards, **{**kw, "lr": 1e-3, "resume": "never"})
    fresh.inputs = {"tokens": "tokens-b", "text": "text-a"}
    assert run_training(fresh, **QUIET)["resumed_from"] == 0
    assert len(list(Path(job.out_dir).glob("checkpoints.replaced-*"))) == 1
    assert sorted(losses(job.out_dir)) == [1, 2, 3, 4]  # the restarted run's records only
    again = make_job(tmp_path, shards, **{**kw, "lr": 1e-3, "resume": "never"})  # the same settings: still anew
    again.inputs = fresh.inputs
    assert run_training(again, **QUIET)["resumed_from"] == 0
    assert len(list(Path(job.out_dir).glob("checkpoints.replaced-*"))) == 2  # within the same second too
    steps = sorted(p.name for p in (Path(job.out_dir) / "checkpoints").glob("step_*"))
    assert steps == ["step_00000002", "step_00000004"]


def test_lineage_covers_every_setting_that_changes_the_weights(tmp_path, shards):
    """A checkpoint's lineage holds every train key but the few that cannot change the weights (cadence, logs,
    resume policy, ``steps``), the text encoder's dtype and the shard list (``data.mixing``, ``train_split``);
    a key that cannot change the weights leaves it alone."""
    from dataclasses import replace

    from training.trainer import train_lineage

    cfg = make_job(tmp_path, shards, steps=4).trainer_config()
    inputs = {"tokens": "t", "text": "x"}
    base = train_lineage(cfg, inputs, shards)

    def lineage(shards=shards, text=None, **train):
        c = replace(cfg, train=replace(cfg.train, **train), text_encoder=replace(cfg.text_encoder, **(text or {})))
        return train_lineage(c, inputs, shards)

    weights = dict(
        rng="per_batch",
        precision="bf16",
        ema_decay=0.99,
        diffusion_aux_weight=0.1,
        diffusion_adaptive_aux=False,
        seed=1,
        num_workers=2,
        shuffle_buffer=7,
        data_split="sample",
        train_split="other",
        threads=2,
        lr=1e-3,
    )
    for key, value in weights.items():
        assert lineage(**{key: value}) != base, key
    assert lineage(text={"dtype": "bfloat16"}) != base
    assert lineage(shards=shards[:2]) != base and lineage(shards=shards + shards[:1]) != base  # mixing repeats
    cadence = dict(
        log_every=3, checkpoint_every=7, keep_last=9, tensorboard=False, steps=99, resume="never", sample_every=5
    )
    for key, value in cadence.items():
        assert lineage(**{key: value}) == base, key
    assert lineage(text={"max_length": 8, "device": "cuda"}) == base  # through the token shards; moved by the trainer
    # an older checkpoint: a key the lineage now leaves out on purpose (sample_every) is not compared; a removed
    # setting keeps its last value in the lineage (max_text_len None: one made with 8 is refused); a key added
    # later counts as None in the old one
    from training.trainer import LINEAGE_IGNORED

    assert base["train"]["max_text_len"] is None and base["train"]["order_learner.enabled"] is False
    older = {**base, "train": {**base["train"], "sample_every": 500}}
    assert ckpt.lineage_changes(older, base, LINEAGE_IGNORED) == []
    assert ckpt.lineage_changes(older, base) == ["train.sample_every: 500 -> None"]
    cut = {**base, "train": {**base["train"], "max_text_len": 8}}
    assert ckpt.lineage_changes(cut, base, LINEAGE_IGNORED) == ["train.max_text_len: 8 -> None"]
    newer = {**base, "train": {k: v for k, v in base["train"].items() if k != "lr"}}
    assert ckpt.lineage_changes(newer, base) == [f"train.lr: None -> {base['train']['lr']!r}"]


def test_a_changed_rng_or_data_seed_is_refused_cleanly_never_a_crash(tmp_path, shards):
    """A finished run rerun with another ``train.rng`` or ``train.seed`` is refused naming the key (it used to
    resume silently, or crash in the data loader's state); ``force`` continues with a fresh data stream and
    ``never`` starts over."""
    kw = dict(steps=2, checkpoint_every=2, log_every=1, num_workers=0)
    job = make_job(tmp_path, shards, **kw)
    run_training(job, **QUIET)
    for key, value in (("rng", "per_batch"), ("seed", 1), ("shuffle_buffer", 5)):
        other = make_job(tmp_path, shards, **{**kw, key: value})
        with pytest.raises(ckpt.ResumeRefused, match=rf"train.{key}: .* -> {value!r}"):
            run_training(other, **QUIET)
    logs = []
    forced = make_job(tmp_path, shards, **{**kw, "steps": 3, "seed": 1, "resume": "force"})
    assert run_training(forced, log=logs.append)["resumed_from"] == 2
    assert any("data stream starts afresh" in m and "loader.seed: 0 -> 1" in m for m in logs), logs
    fresh = make_job(tmp_path, shards, **{**kw, "seed": 1, "resume": "never"})
    assert run_training(fresh, **QUIET)["resumed_from"] == 0


def test_the_last_step_is_logged_off_the_log_grid_and_the_seed_sets_the_initial_weights(tmp_path, shards):
    """steps = 5 with log_every = 2: the record of step 5 is written (the run's final metrics); train.seed decides
    the initial weights (read after one step at lr 0): two seeds, two models; the same seed, the same model."""
    runs = {}
    for name, seed, steps, lr in (("a", 0, 5, 1e-3), ("b", 1, 1, 0.0), ("c", 0, 1, 0.0), ("d", 0, 1, 0.0)):
        job = make_job(tmp_path / name, shards, steps=steps, log_every=2, checkpoint_every=100, seed=seed, lr=lr)
        runs[name] = (run_training(job, **QUIET), job)
    summary, job = runs["a"]
    assert sorted(losses(job.out_dir)) == [2, 4, 5] and summary["last_metrics"]["step"] == 5
    w = {n: ckpt.load_export(Path(j.out_dir) / "export" / "model.safetensors")[0] for n, (_, j) in runs.items()}
    assert not torch.equal(w["b"]["tok_emb.weight"], w["c"]["tok_emb.weight"])  # seeds 1 and 0
    assert all(torch.equal(w["c"][k], w["d"][k]) for k in w["c"])  # seed 0 twice
