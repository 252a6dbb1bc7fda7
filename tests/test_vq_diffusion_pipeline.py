"""VQ-Diffusion as a trained baseline of the pipeline: ``train.mode: vq_diffusion`` through the trainer and its
export, the sample and evaluate stages with ``sample.sampler: vq_diffusion``, and the config checks that tie
the two together."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from tests.eval_utils import make_run, manifest, run, write_model_export
from tests.trainer_utils import make_shards, one_thread, write_config  # noqa: F401  (one_thread: autouse)

VQD = ["train.mode=vq_diffusion", "sample.sampler=vq_diffusion"]


def test_trainer_trains_exports_and_reloads_a_vq_diffusion_model(tmp_path):
    from pipeline.experiment import load_config
    from training.export_loader import load_exported_model
    from training.model.sampling import SampleConfig, generate
    from training.trainer import TrainJob, run_training, trainer_sections

    shards = make_shards(tmp_path / "shards", n_shards=2, per_shard=8)
    train = {"mode": "vq_diffusion", "diffusion_aux_weight": 0.1}
    path = write_config(tmp_path, train, {"diffusion": {"timesteps": 8}})
    raw = yaml.safe_load(path.read_text())
    path.write_text(yaml.safe_dump({**raw, "sample": {"sampler": "vq_diffusion", "steps": 4}}))
    cfg = load_config(path)
    job = TrainJob(
        sections=trainer_sections(cfg),
        out_dir=str(tmp_path / "train"),
        shards=shards,
        text_encoder_factory="tests.trainer_utils:tiny_text_encoder",
    )
    summary = run_training(job, log=lambda m: None)
    last = summary["last_metrics"]
    assert {"vb_loss", "aux_loss", "token_acc", "mask_frac"} <= set(last) and last["loss"] > 0
    model, model_cfg, meta = load_exported_model(tmp_path / "train" / "export")
    assert meta["kind"] == "vq_diffusion" and type(model).__name__ == "VQDiffusionTransformer"
    assert model.schedule.T == 8 and model.time_emb.weight.shape[0] == 8 and model.state_head is None
    text, mask = torch.randn(3, 5, model_cfg.text_dim), torch.ones(3, 5, dtype=torch.bool)
    res = generate(model, text, mask, cfg.sample)
    assert res.tokens.shape == (3, model_cfg.seq_len) and int(res.tokens.max()) < model_cfg.codebook_size
    with pytest.raises(TypeError):  # a PDM-style call without the timestep is refused
        model(res.tokens, text, mask)
    assert SampleConfig(sampler="vq_diffusion").diffusion_strategy == "purity"


def test_sample_and_evaluate_stages_with_a_vq_diffusion_export(tmp_path):
    cfg = make_run(
        tmp_path,
        VQD
        + ["sample.diffusion_strategy=fewer_tokens", "model.diffusion.timesteps=16", "eval.metrics=[fid,token_nll]"],
    )
    export = tmp_path / "run" / "train" / "export"
    write_model_export(export, cfg, "pdm")  # a progressive model where a diffusion one is expected
    with pytest.raises(Exception, match="holds a pdm model .*set sample.sampler: progressive"):
        run(cfg, "sample")
    write_model_export(export, cfg, "vq_diffusion")
    m = run(cfg, "sample")
    assert m["counts"]["prompts"] == 10 and m["counts"]["step_map_chunks"] == 1
    import numpy as np

    from evaluation.sample_files import steps_path

    with np.load(steps_path(tmp_path / "run" / "sample", 0)) as f:
        written = (f["tokens"][0] < cfg.model.codebook_size).sum(1)
    assert list(written) == [16, 32, 48, 64]  # L / T tokens per step, as in the progressive sampler
    manifest(tmp_path / "run" / "tokenize", "tokenize")  # token_nll's input (never read for a diffusion model)
    run(cfg, "evaluate")
    report = json.loads((tmp_path / "run" / "evaluate" / "report.json").read_text())
    assert "vq_diffusion" in report["evaluation_set"]["sampler"]
    assert "(train.mode vq_diffusion)" in report["evaluation_set"]["model"]  # not labelled as a PDM run
    # a sweep's token_nll column: no number for a diffusion model (its likelihood is a bound), and the report says why
    assert "token_nll" not in report["runs"]["PDM (this run)"]
    assert any("not computed for a VQ-Diffusion model" in n for n in report["notes"])
    assert (tmp_path / "run" / "evaluate" / "progression.png").is_file()


@pytest.mark.parametrize(
    "overrides, match",
    [
        (["train.mode=vq_diffusion"], "sample.sampler: 'progressive' cannot sample .*set sample.sampler: vq_diffusion"),
        (["sample.sampler=vq_diffusion"], "cannot sample a model trained with train.mode 'progressive'"),
        (VQD + ["train.order=learned"], "train.order: learned"),
        (VQD + ["eval.metrics=[fid,speed]"], "eval.metrics: 'speed'"),
        (VQD + ["model.diffusion.alpha_cum_end=0.999999"], "alpha_cum_end"),
    ],
)
def test_config_ties_the_sampler_to_what_is_trained(overrides, match):
    from core.config import ConfigError
    from pipeline.experiment import load_config

    with pytest.raises(ConfigError, match=match):
        load_config("configs/tiny.yaml", overrides)
    load_config("configs/tiny.yaml", VQD)  # the pair is valid
