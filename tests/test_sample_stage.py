"""The sample stage on a hand-built tiny run: files, resumability, worker-split independence, prompt sets,
bad inputs; ``sample.order: learned`` on the export of a tiny ``train.order: learned`` run; and
``training.export_loader.load_exported_model`` / ``load_exported_policy``."""

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from evaluation.sample_worker import ChunkWorker
from tests.eval_utils import N_EVAL, load, make_run, one_thread, run, write_model_export  # noqa: F401

COCO = {
    "images": [{"id": i, "file_name": f"COCO_val2014_{i:012d}.jpg"} for i in range(1, 7)],
    "annotations": [
        {"id": 10 * i + j, "image_id": i, "caption": f"a red bus number {i} view {j}"}
        for i in range(1, 7)
        for j in range(2)
    ],
}


def _files(folder):
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.suffix in (".png", ".npy", ".npz")
    }


def _mtimes(folder):
    return {p.name: p.stat().st_mtime_ns for p in folder.rglob("*.png")}


def test_sample_files_resume_and_redo_one_chunk(tmp_path):
    cfg = make_run(tmp_path)
    m = run(cfg, "sample")
    out = tmp_path / "run" / "sample"
    assert m["counts"]["prompts"] == N_EVAL and m["counts"]["chunks"] == 3 and m["counts"]["chunks_done_now"] == 3
    assert sorted(p.name for p in (out / "images").iterdir()) == [f"{i:08d}.png" for i in range(N_EVAL)]
    tokens = np.load(out / "tokens.npy")
    assert tokens.shape == (N_EVAL, 64) and tokens.dtype == np.int16 and 0 <= tokens.min() and tokens.max() < 256
    prompts = [json.loads(x) for x in (out / "prompts.jsonl").read_text().splitlines()]
    from tokenization.synthetic import load_images

    assert [p["prompt"] for p in prompts] == load_images(tmp_path / "run" / "synthetic" / "eval")[1]
    with np.load(out / "steps" / "chunk_00000.npz") as s:  # eval.save_step_maps: first
        assert s["tokens"].shape == (4, 4, 64) and s["states"].shape == (4, 4, 64)
        assert (s["tokens"][:, -1] == tokens[:4]).all() and (s["tokens"][:, 0] == 256).sum() == 4 * 48
    assert not (out / "steps" / "chunk_00001.npz").exists()
    assert m["metrics"]["seconds_sampling"] > 0 and m["metrics"]["images_per_second"] > 0

    before, times = _files(out), _mtimes(out)
    assert run(cfg, "sample")["run_id"] == m["run_id"]  # finished: the runner skips it
    (out / "manifest.json").unlink()  # as if killed before the end: every chunk is already done
    again = run(cfg, "sample")
    assert again["counts"]["chunks_done_now"] == 0 and _mtimes(out) == times

    (out / "images" / "00000005.png").unlink()  # chunk 1 = prompts 4..7
    (out / "manifest.json").unlink()
    redo = run(cfg, "sample")
    assert redo["counts"]["chunks_done_now"] == 1 and redo["counts"]["images_done_now"] == 4
    after = _mtimes(out)
    assert all(after[f"{i:08d}.png"] == times[f"{i:08d}.png"] for i in (0, 1, 2, 3, 8, 9))
    assert all(after[f"{i:08d}.png"] != times[f"{i:08d}.png"] for i in (4, 6, 7))
    assert _files(out) == before  # redone bit-identically
    forced = run(cfg, "sample", force=True)  # --force: from an empty folder, every chunk again
    assert forced["counts"]["chunks_done_now"] == 3 and _files(out) == before


def sampled_then_cleared(tmp_path, overrides: list[str] | None = None):
    """A tiny run (``make_run(tmp_path, overrides)``) sampled once: (config, sample folder, its files), with the
    outputs removed again."""
    cfg = make_run(tmp_path, overrides)
    run(cfg, "sample")
    out = tmp_path / "run" / "sample"
    reference = _files(out)
    for d in ("images", "tokens", "steps"):
        shutil.rmtree(out / d)
    return cfg, out, reference


def test_chunks_independent_of_order_and_workers(tmp_path, monkeypatch):
    import evaluation.sample_stage as ss
    from evaluation.sample_worker import ChunkWorker

    cfg, out, reference = sampled_then_cleared(tmp_path)
    (out / "tokens.npy").unlink()
    order = []

    def two_workers(job, chunks, log):  # two workers, each with its own models, chunks in reverse order
        w1, w2 = ChunkWorker(job), ChunkWorker(job)
        res = []
        for c in reversed(chunks):
            order.append(c)
            res.append((w1 if c % 2 else w2).run(c))
        return res

    monkeypatch.setattr(ss, "run_chunks_local", two_workers)
    m = run(cfg, "sample", force=True)
    assert order == [2, 1, 0] and m["counts"]["chunks_done_now"] == 3
    assert _files(out) == reference

    cfg2 = load(tmp_path / "run", ["sample.seed=1"])  # another seed: other samples, old ones removed
    logs = []
    run(cfg2, "sample", log=logs.append)
    assert any("removing old" in line for line in logs)
    assert _files(out)["tokens/chunk_00000.npy"] != reference["tokens/chunk_00000.npy"]


def test_per_prompt_rng_gives_the_same_images_at_any_batch_size(tmp_path):
    """``sample.rng: per_prompt``: the stage at batch size 4 (chunks of 4, 4, 2) and 3 (3, 3, 3, 1) writes the same
    tokens and PNGs (prompts of other lengths share a chunk: the text is padded the same either way)."""
    cfg = make_run(tmp_path, ["sample.rng=per_prompt"])
    out = tmp_path / "run" / "sample"
    assert run(cfg, "sample")["counts"]["chunks"] == 3
    tokens, images = np.load(out / "tokens.npy"), _files(out / "images")
    m = run(load(tmp_path / "run", ["sample.rng=per_prompt", "sample.batch_size=3"]), "sample")
    assert m["counts"]["chunks_done_now"] == 4
    assert np.array_equal(np.load(out / "tokens.npy"), tokens) and _files(out / "images") == images
    run(load(tmp_path / "run", ["sample.batch_size=3"]), "sample")  # per_chunk: other draws
    assert not np.array_equal(np.load(out / "tokens.npy"), tokens)


def test_chunk_seed_depends_on_seed_and_chunk_only():
    from evaluation.sample_worker import chunk_seed

    seeds = {chunk_seed(s, c) for s in range(3) for c in range(50)}
    assert len(seeds) == 150 and chunk_seed(0, 7) == chunk_seed(0, 7) and all(0 <= x < 2**63 for x in seeds)


def test_coco_prompts_saved_and_stable(tmp_path):
    path = tmp_path / "captions_val2014.json"
    path.write_text(json.dumps(COCO))
    over = [
        "data.download.source=laion",
        f"data.download.url_list={tmp_path}",
        f"eval.coco_captions={path}",
        "eval.num_prompts=5",
        "eval.prompt_seed=3",
        "eval.metrics=[fid]",
    ]
    cfg = make_run(tmp_path, over)
    m = run(cfg, "sample")
    recs = [json.loads(x) for x in (tmp_path / "run" / "sample" / "prompts.jsonl").read_text().splitlines()]
    from evaluation.coco import sample_prompts

    want = sample_prompts(path, 5, seed=3)
    assert [r["prompt"] for r in recs] == [p.prompt for p in want] and len({r["image_id"] for r in recs}) == 5
    assert all(len(r["refs"]) == 2 and r["file_name"].startswith("COCO_val2014_") for r in recs)
    assert m["counts"]["prompts"] == 5 and "MS COCO" in m["prompt_source"]


@pytest.mark.parametrize(
    "case, match",
    [
        ("coco_layout", "captions_val2014.json layout"),
        ("empty", "prompt set is empty"),
        ("no_weights", "model.safetensors is missing"),
        ("sampler_kind", "sample.sampler is 'autoregressive'"),
        ("no_policy", r"policy\.safetensors is missing: .*the train stage did not export the policy"),
    ],
)
def test_bad_inputs_fail_before_sampling(tmp_path, case, match):
    over = {
        "sampler_kind": ["sample.sampler=autoregressive", "train.mode=autoregressive"],  # a PDM export, though
        "no_policy": ["sample.order=learned", "train.order=learned", *ROLLOUT_AS_SAMPLED],
    }.get(case, [])
    if case.startswith("coco"):
        bad = tmp_path / "bad.json"
        bad.write_text(json.dumps([{"caption": "a list, not the COCO layout"}]))
        over = ["data.download.source=laion", f"data.download.url_list={tmp_path}", "eval.metrics=[fid]"] + (
            [f"eval.coco_captions={bad}"] if case == "coco_layout" else []
        )
    cfg = make_run(tmp_path, over)
    if case == "no_weights":
        (tmp_path / "run" / "train" / "export" / "model.safetensors").unlink()
    if case == "empty":  # an eval split that lost its rows (the config asks for n_eval >= 2)
        import pandas as pd

        pd.DataFrame({"URL": [], "TEXT": []}).to_parquet(tmp_path / "run" / "synthetic" / "eval" / "urls.parquet")
    with pytest.raises(Exception, match=match):
        run(cfg, "sample")
    assert not list((tmp_path / "run" / "sample").glob("images/*.png"))


@pytest.mark.parametrize(
    "over, match",
    [
        (
            ["data.download.source=laion", "data.download.url_list=/x", "eval.metrics=[fid]"],
            "data.download.eval_split: the evaluation prompts of a non-synthetic source come from its held-out",
        ),
        (["sample.sampler=autoregressive"], "sample.sampler: 'autoregressive' cannot sample a model trained with"),
        (["sample.order=learned"], "sample.order: learned samples with the position policy of a train.order"),
        (["sample.n_candidates=2"], "sample.n_candidates: 2: more than one candidate per prompt needs a reranking"),
        (["data.synthetic.n_eval=0"], "data.synthetic.n_eval: 0: the evaluation prompts are the synthetic eval"),
    ],
)
def test_combinations_that_cannot_sample_fail_when_the_config_loads(tmp_path, over, match):
    from core.config import ConfigError

    with pytest.raises(ConfigError, match=match):
        load(tmp_path / "run", over)


# --- sample.order: learned ---------------------------------------------------------------------------

# the policy's rollouts sample tokens as the sample section does (eval_utils: temperature 1.0)
ROLLOUT_AS_SAMPLED = ["train.order_learner.token_mode=sample", "train.order_learner.temperature=1.0"]
LEARNED = ROLLOUT_AS_SAMPLED + [
    "train.order=learned",
    "train.steps=2",
    "train.batch_size=4",
    "train.checkpoint_every=2",
    "train.warmup_steps=0",
    "train.log_every=1",
    "train.sample_every=0",
    "train.num_workers=0",
    "train.order_learner.hidden=8",
    "train.order_learner.lr=0.05",
    "sample.order=learned",
]


def _learned_run(tmp_path):
    """make_run's tiny run whose export is then replaced by a 2-step ``train.order: learned`` run (alternate
    mode, token_acc reward) of the same model: model.safetensors + policy.safetensors + config.yaml."""
    from tests.trainer_utils import make_shards
    from training.trainer import TrainJob, run_training, trainer_sections

    cfg = make_run(tmp_path, LEARNED)
    shards = make_shards(
        tmp_path / "shards", n_shards=1, per_shard=8, seq_len=cfg.model.seq_len, codebook=cfg.model.codebook_size
    )
    run_training(
        TrainJob(
            sections=trainer_sections(cfg),
            out_dir=str(tmp_path / "run" / "train"),
            shards=shards,
            text_encoder_factory="tests.trainer_utils:tiny_text_encoder",
        ),
        log=lambda m: None,
    )
    return cfg


def _first_step_picks(cfg, run_dir, n_prompts, policy=None):
    """Per prompt of chunk 0, the positions written at step 0 when ``policy`` (default: the exported one,
    loaded here) takes its greedy top-k on the loaded model's state; and the state head's top-k."""
    from core.config import to_dict
    from evaluation.sample_files import read_prompts
    from tokenization.text import TextEncoderConfig, load_text_encoder
    from training.export_loader import load_exported_model, load_exported_policy
    from training.model.order_learner import greedy_topk
    from training.model.sampling import plan_steps
    from training.model.states import GENERATE

    export = run_dir / "train" / "export"
    model, mcfg, meta = load_exported_model(export, prefer_ema=cfg.eval.use_ema)
    if policy is None:
        policy, _ = load_exported_policy(export, model_cfg=mcfg, model_meta=meta)
    text = load_text_encoder(TextEncoderConfig(**{**to_dict(cfg.text_encoder), "device": "cpu"}), run_dir / "text")
    prompts = [r["prompt"] for r in read_prompts(run_dir / "sample")][: min(n_prompts, cfg.sample.batch_size)]
    with torch.no_grad():
        ids, mask = text.tokenize(prompts)
        out = model(torch.full((len(prompts), mcfg.seq_len), model.mask_id), text.encode(ids, mask), mask)
        masked = torch.ones(len(prompts), mcfg.seq_len, dtype=torch.bool)
        n0 = plan_steps(mcfg.seq_len, cfg.sample.steps, cfg.sample.schedule)[0]
        scores = policy(out.hidden, masked, 0, cfg.sample.steps, out.token_logits, out.state_logits)
        learned = greedy_topk(scores, n0, masked)
        state = out.state_logits.log_softmax(-1)[..., GENERATE].topk(n0, dim=1).indices
    as_sets = lambda idx: [set(r) for r in idx.tolist()]  # noqa: E731
    return as_sets(learned), as_sets(state), policy


def test_learned_order_samples_with_the_exported_policy(tmp_path, monkeypatch):
    """``sample.order: learned`` end to end on a trained export: step 0 of every prompt writes exactly the
    positions the exported policy's greedy top-k picks (not the state head's, not another policy's), the
    images are complete, and they do not depend on which worker ran which chunk."""
    import evaluation.sample_stage as ss
    from evaluation.sample_worker import ChunkWorker

    cfg = _learned_run(tmp_path)
    export = tmp_path / "run" / "train" / "export"
    assert (export / "policy.safetensors").is_file()
    m = run(cfg, "sample")
    out = tmp_path / "run" / "sample"
    assert m["counts"]["prompts"] == N_EVAL and m["counts"]["chunks_done_now"] == 3
    K, L = cfg.model.codebook_size, cfg.model.seq_len
    tokens = np.load(out / "tokens.npy")
    assert tokens.shape == (N_EVAL, L) and (tokens < K).all()
    with np.load(out / "steps" / "chunk_00000.npz") as st:
        written = [set(np.flatnonzero(row != K).tolist()) for row in st["tokens"][:, 0]]  # [B, T, L]: step 0

    assert cfg.sample.guidance_scale == 1.0 and cfg.sample.gumbel_scale == 0.0  # what _first_step_picks assumes
    learned, state, policy = _first_step_picks(cfg, tmp_path / "run", N_EVAL)
    assert policy.out.weight.abs().sum() > 0  # trained: not the zero-initialised random order
    assert written == learned and all(len(w) == L // cfg.sample.steps for w in written)
    assert written != state  # the state head would have written others
    other = type(policy)(**policy.spec())  # another policy: a strong raster preference
    other.load_state_dict(policy.state_dict())
    with torch.no_grad():
        other.pos_bias.copy_(torch.linspace(100.0, 0.0, L))
    assert _first_step_picks(cfg, tmp_path / "run", N_EVAL, policy=other)[0] != written

    reference = _files(out)  # same files from two workers, chunks reversed
    for d in ("images", "tokens", "steps"):
        shutil.rmtree(out / d)
    (out / "tokens.npy").unlink()

    def two_workers(job, chunks, log):
        w1, w2 = ChunkWorker(job), ChunkWorker(job)
        return [(w1 if c % 2 else w2).run(c) for c in reversed(chunks)]

    monkeypatch.setattr(ss, "run_chunks_local", two_workers)
    assert run(cfg, "sample", force=True)["counts"]["chunks_done_now"] == 3
    assert _files(out) == reference


def test_learned_order_config_and_missing_policy_errors(tmp_path):
    """``sample.order: learned`` is a valid choice (progressive sampler only); the progressive sampler
    refuses the bare name (no policy); ``load_exported_policy`` names the missing file and what to do, and
    refuses a policy of another checkpoint."""
    from core.config import ConfigError
    from training.export_loader import ExportError, load_exported_model, load_exported_policy
    from training.model.sampling import SampleConfig, progressive_sample

    cfg = make_run(tmp_path, ["sample.order=learned", "train.order=learned", *ROLLOUT_AS_SAMPLED])
    assert cfg.sample.order == "learned"
    with pytest.raises((ConfigError, ValueError), match="progressive"):
        load(tmp_path / "run", ["sample.order=learned", "sample.sampler=autoregressive", "train.mode=autoregressive"])
    export = tmp_path / "run" / "train" / "export"
    model, mcfg, meta = load_exported_model(export)
    with pytest.raises(ValueError, match="load_exported_policy"):
        progressive_sample(
            model,
            torch.zeros(1, 2, 32),
            torch.ones(1, 2, dtype=torch.bool),
            SampleConfig(steps=4, order="learned"),
            torch.Generator(),
        )
    with pytest.raises(ExportError, match=r"policy\.safetensors is missing: .*did not export the policy"):
        load_exported_policy(export)

    from training.checkpoint import write_export
    from training.export_loader import POLICY_KIND
    from training.model.order_learner import PositionPolicy

    pol = PositionPolicy(mcfg.dim, mcfg.seq_len, hidden=4)
    write_export(
        tmp_path / "x",
        None,
        None,
        (export / "config.yaml").read_text(),
        {},
        {
            "policy.safetensors": (
                pol.state_dict(),
                {"kind": POLICY_KIND, "step": "7", "policy_config": json.dumps(pol.spec())},
            )
        },
    )
    loaded, pmeta = load_exported_policy(tmp_path / "x", model_cfg=mcfg)
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), pol.state_dict().values()))
    with pytest.raises(ExportError, match="step 7 but .* at step 9: the export folder mixes two checkpoints"):
        load_exported_policy(tmp_path / "x", model_meta={"step": "9", "weights": "model.safetensors"})
    for dim, seq_len in ((16, mcfg.seq_len), (mcfg.dim, 4 * mcfg.seq_len)):  # another width, another grid
        with pytest.raises(ExportError, match="belongs to another model"):
            load_exported_policy(tmp_path / "x", model_cfg=type("M", (), {"dim": dim, "seq_len": seq_len})())


# --- training.export_loader -----------------------------------------------------------------------------------


def test_load_exported_model_pdm_ar_and_errors(tmp_path):
    from tokenization.vqgan import TokenizerConfig, VQModel
    from training.export_loader import ExportError, load_exported_model
    from training.model.ar_model import ARModel
    from training.model.pdm import PDM

    cfg = load(tmp_path / "run")
    write_model_export(tmp_path / "pdm", cfg, "pdm", seed=3)
    write_model_export(tmp_path / "ar", cfg, "ar")
    model, mcfg, meta = load_exported_model(tmp_path / "pdm", tokenizer=VQModel(cfg.tokenizer), text_dim=32)
    assert isinstance(model, PDM) and not model.training and meta["kind"] == "pdm" and mcfg.dim == 32
    torch.manual_seed(3)
    fresh = PDM(cfg.model)
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), model.state_dict().values()))
    ar, _, meta = load_exported_model(tmp_path / "ar")
    assert isinstance(ar, ARModel) and meta["kind"] == "ar" and meta["train_mode"] == "progressive"

    small = VQModel(TokenizerConfig(n_embed=128))
    with pytest.raises(ValueError, match=r"codebook size 256 but the tokenizer has 128 codes"):
        load_exported_model(tmp_path / "pdm", tokenizer=small)
    with pytest.raises(ValueError, match="width 32 but the text encoder gives 64"):
        load_exported_model(tmp_path / "pdm", text_dim=64)
    with pytest.raises(ExportError, match="no exported model at"):
        load_exported_model(tmp_path / "nothing")
    doc = yaml.safe_load((tmp_path / "ar" / "config.yaml").read_text())
    doc["model"]["dim"] = 64
    (tmp_path / "ar" / "config.yaml").write_text(yaml.safe_dump(doc))
    with pytest.raises(ExportError, match="do not fit the architecture"):
        load_exported_model(tmp_path / "ar")
    (tmp_path / "ar" / "config.yaml").unlink()
    with pytest.raises(ExportError, match="config.yaml: the model config is missing"):
        load_exported_model(tmp_path / "ar")


class DyingChunkWorker(ChunkWorker):
    """Its process exits (as if killed) the first time any actor starts chunk 1 (a file in the run folder
    remembers it)."""

    def run(self, chunk: int) -> dict:
        mark = Path(self.job.out_dir).parent / "chunk1_died"
        if chunk == 1 and not mark.exists():
            mark.write_text("")
            os._exit(1)
        return super().run(chunk)


@pytest.mark.slow
def test_ray_actors_give_the_same_images(tmp_path, ray_local, monkeypatch):
    """Two embedded-Ray CPU actors (eval.sample_workers=2) write exactly what the in-process run writes,
    even when one dies mid-chunk (the work queue redoes its chunk on a replacement)."""
    import evaluation.sample_worker as sw

    cfg, out, reference = sampled_then_cleared(tmp_path)
    cfg2 = load(tmp_path / "run", ["eval.sample_workers=2"])
    monkeypatch.setattr(sw, "ChunkWorker", DyingChunkWorker)
    logs = []
    m = run(cfg2, "sample", log=logs.append)
    assert (tmp_path / "run" / "chunk1_died").exists()
    assert any("chunk 1: its worker was lost" in line and "requeued" in line for line in logs), logs
    assert m["workers"] == "ray" and m["counts"]["chunks_done_now"] == 3
    assert _files(out) == reference


def test_more_ray_workers_than_the_cluster_holds_fail_within_the_start_deadline(tmp_path, ray_local):
    """eval.sample_workers=3 on the session's 2-CPU Ray: a clear error within cluster.actor_start_timeout_s,
    before any chunk is sampled (the actors are killed, their CPUs free again)."""
    import time

    from core.stage import StageError

    make_run(tmp_path)
    cfg = load(tmp_path / "run", ["eval.sample_workers=3", "cluster.actor_start_timeout_s=3"])
    t0 = time.time()
    with pytest.raises(StageError) as err:
        run(cfg, "sample")
    took = time.time() - t0
    assert 3 <= took < 20, took
    msg = str(err.value)
    assert msg.startswith("sample: ") and "of 3 workers up within cluster.actor_start_timeout_s = 3 s" in msg, msg
    assert "each needs {CPU: 1} and the cluster's alive nodes can hold 2" in msg
    assert msg.endswith("set eval.sample_workers to at most 2, or add nodes"), msg
    assert not list((tmp_path / "run" / "sample" / "images").glob("*.png"))


def test_text_encoder_settings_that_change_the_prompts_states_redo_the_chunks(tmp_path):
    """``text_encoder.max_length`` cuts the prompts' ids: the sample stage goes stale naming it and resamples
    every chunk; a setting that cannot change a sample (the truncation policy) keeps it current."""
    from pipeline.runner import stage_state
    from tests.eval_utils import stage

    cfg = make_run(tmp_path)
    run(cfg, "sample")
    out = tmp_path / "run" / "sample"
    reference = _files(out)
    silent = load(tmp_path / "run", ["text_encoder.truncation=silent"])
    assert stage_state(silent, Path(cfg.run_dir), stage("sample")).state == "current"
    short = load(tmp_path / "run", ["text_encoder.max_length=3", "text_encoder.truncation=silent"])
    state = stage_state(short, Path(cfg.run_dir), stage("sample"))
    assert state.state == "stale" and "text_encoder.max_length" in state.why, state
    logs = []
    m = run(short, "sample", log=logs.append)
    assert any("removing old" in line for line in logs) and m["counts"]["chunks_done_now"] == m["counts"]["chunks"]
    assert json.loads((out / "job.json").read_text())["text_encoder"]["max_length"] == 3
    assert _files(out)["tokens/chunk_00000.npy"] != reference["tokens/chunk_00000.npy"]
