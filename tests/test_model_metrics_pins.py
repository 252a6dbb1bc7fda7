"""Pins for ``evaluation.model_metrics`` (found by mutation testing), with stand-ins for the model loader, the
sampler and the timing table: the text batches, the saved PNG folders, which prompts and methods the speed
table's quality scores, which models are timed (and the notes for random ones), and the token-NLL check."""

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

import evaluation.model_metrics as mm
from core.stage import StageError


class FakeText:
    dim = 4

    def __init__(self):
        self.seen = []

    def tokenize(self, prompts):
        self.seen.append(list(prompts))
        ids = torch.tensor([[int(p[1:]), 0] for p in prompts])
        return ids, torch.ones_like(ids, dtype=torch.bool)

    def encode(self, ids, mask):
        return ids.float()


def test_encode_batches_the_prompts_in_order():
    text = FakeText()
    out = list(mm._encode(text, ["p0", "p1", "p2", "p3", "p4"], 2, "cpu"))
    assert text.seen == [["p0", "p1"], ["p2", "p3"], ["p4"]]
    assert [s[:, 0].tolist() for s, _ in out] == [[0.0, 1.0], [2.0, 3.0], [4.0]]
    assert all(m.dtype == torch.bool for _, m in out)


def _img(v, side=4):
    return np.full((side, side, 3), v, np.uint8)


def test_save_pngs_numbers_across_batches_and_empties_the_folder(tmp_path):
    folder = tmp_path / "speed" / "progressive_T00008"
    folder.mkdir(parents=True)
    (folder / "stale.png").write_bytes(b"old")
    paths = mm._save_pngs([np.stack([_img(1), _img(2)]), np.stack([_img(3)])], folder)
    assert [p.name for p in paths] == ["00000000.png", "00000001.png", "00000002.png"]
    assert sorted(p.name for p in folder.iterdir()) == [p.name for p in paths]
    assert [int(np.asarray(Image.open(p))[0, 0, 0]) for p in paths] == [1, 2, 3]


class FakeScorers:
    def __init__(self, available=("fid",)):
        self._available, self.calls = list(available), []

    def available(self):
        return self._available

    def quality(self, paths):
        self.calls.append(list(paths))
        return {"num_images": len(paths), "fid": 1.0}


def _ctx(tmp_path, speed_quality_images):
    cfg = SimpleNamespace(
        eval=SimpleNamespace(speed_quality_images=speed_quality_images), sample=SimpleNamespace(seed=7)
    )
    return SimpleNamespace(config=cfg, out_dir=tmp_path, log=lambda _: None)


@pytest.fixture
def sampled(monkeypatch):
    """evaluation.speed.sample_batches replaced: one batch of grey images per text batch; records its calls."""
    import evaluation.speed as speed

    calls = []

    def fake(model, decode, batches, cfg, seed, **kw):
        calls.append({"model": model, "seed": seed, "kw": kw})
        for text, _ in batches:
            calls[-1].setdefault("prompts", []).extend(int(v) for v in text[:, 0])
            yield np.stack([_img(100) for _ in range(len(text))])

    monkeypatch.setattr(speed, "sample_batches", fake)
    return calls


def test_speed_quality_scores_the_first_n_prompts_saved_per_method_and_t(tmp_path, sampled):
    plan = SimpleNamespace(prompts=["p0", "p1", "p2", "p3", "p4"])
    scorers = FakeScorers()
    quality = mm.speed_quality(_ctx(tmp_path, 3), plan, scorers, None, FakeText(), "cpu", skip=set())
    q = quality("progressive", "model", SimpleNamespace(batch_size=2, steps=16), {"order": "o"})
    assert q == {"num_images": 3, "fid": 1.0}
    assert sampled == [{"model": "model", "seed": 7, "kw": {"order": "o"}, "prompts": [0, 1, 2]}]
    folder = tmp_path / "speed" / "progressive_T00016"
    assert scorers.calls == [[folder / f"{i:08d}.png" for i in range(3)]]


def test_speed_quality_defaults_to_all_prompts_and_caps_at_the_prompt_count(tmp_path, sampled):
    plan = SimpleNamespace(prompts=["p0", "p1"])
    for n in (None, 10):
        quality = mm.speed_quality(_ctx(tmp_path, n), plan, FakeScorers(), None, FakeText(), "cpu", skip=set())
        assert quality("progressive", "m", SimpleNamespace(batch_size=8, steps=4), {})["num_images"] == 2


def test_speed_quality_is_none_for_skipped_methods_no_metric_or_no_images(tmp_path, sampled):
    plan = SimpleNamespace(prompts=["p0", "p1"])
    cfg = SimpleNamespace(batch_size=2, steps=4)
    q = mm.speed_quality(_ctx(tmp_path, 2), plan, FakeScorers(), None, FakeText(), "cpu", skip={"autoregressive"})
    assert q("autoregressive", "m", cfg, {}) is None and q("progressive", "m", cfg, {}) is not None
    q = mm.speed_quality(_ctx(tmp_path, 2), plan, FakeScorers(available=()), None, FakeText(), "cpu", skip=set())
    assert q("progressive", "m", cfg, {}) is None
    q = mm.speed_quality(_ctx(tmp_path, 0), plan, FakeScorers(), None, FakeText(), "cpu", skip=set())
    assert q("progressive", "m", cfg, {}) is None


class FakeModel:
    def __init__(self, name):
        self.name = name

    def to(self, device):
        return self

    def eval(self):
        return self


@pytest.fixture
def speed_run(monkeypatch, tmp_path):
    """run_speed with the export loader, build_model and speed_table replaced; returns (call, recorded)."""
    import evaluation.speed as speed
    import training.export_loader as el
    import training.model as tm

    rec = {"loaded": []}
    kinds = {}

    def load(path, **kw):
        rec["loaded"].append((Path(path), kw["prefer_ema"]))
        return FakeModel(f"loaded:{Path(path).name}"), SimpleNamespace(seq_len=16), {"kind": kinds[Path(path)]}

    monkeypatch.setattr(el, "load_exported_model", load)
    monkeypatch.setattr(tm, "build_model", lambda cfg, kind: FakeModel(f"random:{kind}"))

    def table(pdm, ar, text, mask, sample_cfg, steps, bs, n_single, warmup, notes, quality, order):
        rec.update(pdm=pdm.name, ar=ar.name, n=len(text), bs=bs, n_single=n_single, notes=notes, order=order)
        rec["quality"] = {m: quality(m, None, SimpleNamespace(batch_size=2, steps=4), {}) for m in notes}
        return ["rows"]

    monkeypatch.setattr(speed, "speed_table", table)

    def call(kind, ar_kind=None, speed_batch_size=None, speed_images=2, prompts=5):
        export = tmp_path / "train" / "export"
        kinds[export] = kind
        ar_export = None
        if ar_kind:
            ar_export = tmp_path / "ar" / "export"
            kinds[ar_export] = ar_kind
        ev = SimpleNamespace(
            use_ema=True,
            ar_export=ar_export,
            speed_batch_size=speed_batch_size,
            speed_images=speed_images,
            speed_steps=[4],
            speed_warmup=1,
            speed_quality_images=None,
        )
        cfg = SimpleNamespace(eval=ev, seed=0, sample=SimpleNamespace(batch_size=3, order="raster", seed=0))
        ctx = SimpleNamespace(config=cfg, input_dir=lambda name: tmp_path / name, out_dir=tmp_path, log=lambda _: None)
        plan = SimpleNamespace(prompts=[f"p{i}" for i in range(prompts)])
        return mm.run_speed(ctx, plan, FakeScorers(), None, FakeText(), "cpu")

    return call, rec


def test_run_speed_times_the_trained_pdm_against_a_random_ar_with_a_note(speed_run):
    call, rec = speed_run
    assert call("pdm") == ["rows"]
    assert rec["pdm"] == "loaded:export" and rec["ar"] == "random:ar"
    assert list(rec["notes"]) == ["autoregressive"] and "no eval.ar_export" in rec["notes"]["autoregressive"]
    assert rec["loaded"][0][1] is True  # eval.use_ema
    assert rec["quality"] == {"autoregressive": None}  # the random model's images are not scored


def test_run_speed_times_a_vq_diffusion_export_as_the_progressive_model(speed_run):
    """Only an autoregressive export is timed as the AR baseline; any other kind is the iterative model."""
    call, rec = speed_run
    call("vq_diffusion")
    assert rec["pdm"] == "loaded:export" and rec["ar"] == "random:ar" and list(rec["notes"]) == ["autoregressive"]


def test_run_speed_with_an_ar_export_has_no_notes(speed_run):
    call, rec = speed_run
    call("pdm", ar_kind="ar")
    assert rec["ar"] == "loaded:export" and rec["notes"] == {} and len(rec["loaded"]) == 2


def test_run_speed_refuses_a_progressive_ar_export(speed_run):
    call, _ = speed_run
    with pytest.raises(StageError, match="holds a progressive model, not an autoregressive one"):
        call("pdm", ar_kind="pdm")


def test_run_speed_for_an_ar_run_times_a_random_pdm(speed_run):
    call, rec = speed_run
    call("ar")
    assert rec["pdm"] == "random:pdm" and rec["ar"] == "loaded:export" and list(rec["notes"]) == ["progressive"]
    assert rec["quality"] == {"progressive": None}


@pytest.mark.parametrize(
    "speed_batch_size, speed_images, prompts, bs, n",
    [(None, 2, 5, 3, 3), (4, 2, 5, 4, 4), (None, 5, 9, 3, 5), (None, 8, 4, 3, 4)],
)
def test_run_speed_batch_size_and_prompt_count(speed_run, speed_batch_size, speed_images, prompts, bs, n):
    """Batch size: eval.speed_batch_size, else sample.batch_size; prompts: max(bs, speed_images), at most all."""
    call, rec = speed_run
    call("pdm", speed_batch_size=speed_batch_size, speed_images=speed_images, prompts=prompts)
    assert (rec["bs"], rec["n"], rec["n_single"]) == (bs, n, speed_images)


def test_token_nll_without_an_eval_split_is_a_stage_error(tmp_path):
    ctx = SimpleNamespace(config=None, input_manifest=lambda name: {"splits": {"train": "x"}})
    with pytest.raises(StageError, match="token_nll reads the tokenize stage's eval split"):
        mm.run_token_nll(ctx, None, "cpu")
    ctx = SimpleNamespace(config=None, input_manifest=lambda name: {})
    with pytest.raises(StageError, match="token_nll reads the tokenize stage's eval split"):
        mm.run_token_nll(ctx, None, "cpu")
