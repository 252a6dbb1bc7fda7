"""The sample stage's ``eval.use_ema`` (in the chunks' fingerprint, and honoured by the worker) and
``eval.save_step_maps`` (a chunk lacking the step maps it asks for is not finished; the maps' ``index`` names the
prompts of the chunk), on the hand-built tiny run of ``tests.eval_utils``."""

from __future__ import annotations

import json

import numpy as np
import torch

from tests.eval_utils import N_EVAL, load, make_run, one_thread, run  # noqa: F401  (one_thread: autouse)


def _write_export_with_ema(folder, cfg) -> tuple[dict, dict]:
    """The export of ``make_run`` again, with a ``model_ema.safetensors`` of other (random) weights:
    (raw state dict, EMA state dict)."""
    from core.config import to_dict, to_yaml
    from training.checkpoint import write_export
    from training.model import build_model

    torch.manual_seed(0)
    raw = build_model(cfg.model, "pdm").state_dict()
    torch.manual_seed(1)
    ema = build_model(cfg.model, "pdm").state_dict()
    assert any(not torch.equal(a, b) for a, b in zip(raw.values(), ema.values()))
    meta = {"model_config": json.dumps(to_dict(cfg.model)), "kind": "pdm", "mode": "progressive"}
    write_export(folder, raw, ema, to_yaml(cfg), meta)
    return raw, ema


def _same_weights(model, sd: dict) -> bool:
    got = model.state_dict()
    return set(got) == set(sd) and all(torch.equal(got[k].cpu(), sd[k]) for k in sd)


def test_use_ema_is_in_the_fingerprint_and_picks_the_weights_sampled(tmp_path):
    """On an export whose EMA weights differ from the raw ones: ``eval.use_ema: true`` samples the EMA weights,
    ``false`` the raw ones; flipping it changes ``job.json`` (the old chunks are removed) and the samples."""
    from evaluation.sample_worker import ChunkWorker, job_for

    over = ["eval.num_prompts=4"]  # one chunk of 4
    cfg = make_run(tmp_path, over)
    rd = tmp_path / "run"
    raw, ema = _write_export_with_ema(rd / "train" / "export", cfg)
    out = rd / "sample"

    assert cfg.eval.use_ema is True  # the default
    run(cfg, "sample")
    job_ema = json.loads((out / "job.json").read_text())
    tokens_ema = np.load(out / "tokens.npy")

    cfg_raw = load(rd, over + ["eval.use_ema=false"])
    logs = []
    m = run(cfg_raw, "sample", log=logs.append)
    job_raw = json.loads((out / "job.json").read_text())
    tokens_raw = np.load(out / "tokens.npy")

    assert any("removing old" in line for line in logs), logs
    assert m["counts"]["chunks_done_now"] == 1  # resampled, not kept from the EMA run
    assert tokens_ema.shape == tokens_raw.shape == (4, cfg.model.seq_len)
    assert not np.array_equal(tokens_ema, tokens_raw)
    assert job_ema["use_ema"] is True and job_raw["use_ema"] is False
    assert {k: v for k, v in job_ema.items() if k != "use_ema"} == {k: v for k, v in job_raw.items() if k != "use_ema"}

    # the worker loads exactly the weights asked for
    for c, want in ((cfg, ema), (cfg_raw, raw)):
        worker = ChunkWorker(job_for(c.sample, c.text_encoder, c.eval, out, rd, 4), device="cpu")
        worker._load()
        assert _same_weights(worker.model, want)
    # ... and the raw run's samples are those of the raw weights: an export of the raw weights alone (nothing to
    # prefer) gives them with use_ema true as well
    (rd / "train" / "export" / "model_ema.safetensors").unlink()
    worker = ChunkWorker(job_for(cfg.sample, cfg.text_encoder, cfg.eval, out, rd, 4))  # the stage's device
    res, _ = worker.sample(0)
    assert np.array_equal(res.tokens.cpu().numpy(), tokens_raw)


def test_a_chunk_without_the_step_maps_asked_for_is_not_done(tmp_path):
    """``eval.save_step_maps: all``: a chunk whose tokens and images exist but whose step maps are missing is
    unfinished (``chunk_done``) and a rerun redoes it, maps included; with ``first`` only chunk 0 needs them."""
    from evaluation.sample_worker import chunk_done, job_for

    cfg = make_run(tmp_path, ["eval.save_step_maps=all"])
    rd = tmp_path / "run"
    out = rd / "sample"
    m = run(cfg, "sample")
    assert m["counts"]["chunks"] == 3 and m["counts"]["step_map_chunks"] == 3
    job = job_for(cfg.sample, cfg.text_encoder, cfg.eval, out, rd, N_EVAL)
    assert all(chunk_done(job, c) for c in range(3))
    maps = out / "steps" / "chunk_00001.npz"
    before = maps.read_bytes()

    maps.unlink()  # tokens and images of chunk 1 still there
    (out / "manifest.json").unlink()  # as if killed before the end
    redo = run(cfg, "sample")
    assert redo["counts"]["chunks_done_now"] == 1 and redo["counts"]["images_done_now"] == 4
    assert maps.read_bytes() == before  # redone, bit-identically

    maps.unlink()
    assert not chunk_done(job, 1) and chunk_done(job, 0) and chunk_done(job, 2)
    first = load(rd, ["eval.save_step_maps=first"])
    job_first = job_for(first.sample, first.text_encoder, first.eval, out, rd, N_EVAL)
    assert chunk_done(job_first, 1)  # ``first`` does not ask for chunk 1's maps
    (out / "steps" / "chunk_00000.npz").unlink()
    assert not chunk_done(job_first, 0) and not chunk_done(job, 0)


def test_step_maps_of_every_chunk_name_their_prompts(tmp_path):
    """``eval.save_step_maps: all``: chunk c's ``index`` lists the prompt indices of its samples (the last chunk
    is short), and each map's final step is that prompt's sample in ``tokens.npy``."""
    cfg = make_run(tmp_path, ["eval.save_step_maps=all"])
    run(cfg, "sample")
    out = tmp_path / "run" / "sample"
    tokens = np.load(out / "tokens.npy")
    want = [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    for c, idx in enumerate(want):
        with np.load(out / "steps" / f"chunk_{c:05d}.npz") as s:
            assert s["index"].dtype == np.int64 and s["index"].tolist() == idx
            assert s["tokens"].shape == (len(idx), cfg.sample.steps, cfg.model.seq_len)
            assert np.array_equal(s["tokens"][:, -1], tokens[s["index"]])
    assert sorted(p.name for p in (out / "steps").iterdir()) == [f"chunk_{c:05d}.npz" for c in range(3)]
