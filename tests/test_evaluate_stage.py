"""The evaluate stage on a hand-built tiny run: report completeness, figures, the progression's source,
and bad inputs failing before any heavy work. The Inception network is replaced by a cheap fake (the real
stand-in runs in the slow test)."""

import json

import numpy as np
import pytest
from PIL import Image

from tests.eval_utils import load, make_run, one_thread, run  # noqa: F401
from tests.test_sample_stage import COCO

ALL = "eval.metrics=[fid,attributes,speed,captioning,clip_score]"


class FakeExtractor:
    """12-d features (per-channel quadrant means); counts calls."""

    calls = 0

    def __init__(self):
        self.protocol = {
            "extractor": "fake quadrant means",
            "weights_sha256": "aaa",
            "stand_in": True,
            "note": "stand-in, not comparable to published FID",
        }

    def __call__(self, batch, mode):
        FakeExtractor.calls += 1
        h, w = batch.shape[1] // 2, batch.shape[2] // 2
        q = [batch[:, i * h : (i + 1) * h, j * w : (j + 1) * w].mean(axis=(1, 2)) for i in (0, 1) for j in (0, 1)]
        return np.concatenate(q, axis=1).astype(np.float64) + (1.0 if mode == "clean_fid" else 0.0)


@pytest.fixture
def fake_fid(monkeypatch):
    import evaluation.evaluate_stage as es

    FakeExtractor.calls = 0
    monkeypatch.setattr(es, "make_fid_extractor", lambda ev, device: FakeExtractor())
    return FakeExtractor


def sampled(tmp_path, overrides=()):
    cfg = make_run(tmp_path, [ALL] + list(overrides))
    run(cfg, "sample")
    return cfg


def test_report_has_measured_tables_protocol_and_figures(tmp_path, fake_fid):
    cfg = sampled(tmp_path)
    m = run(cfg, "evaluate")
    out = tmp_path / "run" / "evaluate"
    md = (out / "report.md").read_text()
    for text in (
        "## Image quality: FID",
        "FID protocol:",
        "stand-in, not comparable",
        "## Attribute match",
        "| PDM (this run) |",
        "| Ground Truth (upper bound) | 1.000 | 1.000",
        "VQ-GAN reconstruction",
        "## Speed: effect of iterative steps (Table 4)",
        "autoregressive (KV cache)",
        "randomly initialised AR model",
        "Captioning metrics not measured: eval.captioner_path",
        "CLIP score not measured: eval.clip_checkpoint",
        "![samples](samples_grid.png)",
        "![progression](progression.png)",
        "progression.gif",
        "## Evaluation set",
        "T=4",
    ):
        assert text in md, text
    assert "No metric was measured" not in md and "## Image-text alignment" not in md
    rep = json.loads((out / "report.json").read_text())
    run_ = rep["runs"]["PDM (this run)"]
    assert run_["fid"]["num_images"] == 10 and np.isfinite(run_["fid"]["fid"]) and run_["fid"]["fid"] > 0
    assert rep["fid_protocol"]["reference"]["count"]["fid"] == 10
    assert 0 <= run_["attributes"]["match"] <= 1
    assert rep["runs"]["Ground Truth (upper bound)"]["attributes"]["match"] == 1  # the reader is exact
    rows = rep["speed"]
    assert [(r["method"], r["steps"], r["sequential_passes"]) for r in rows] == [
        ("progressive", 8, 8),
        ("progressive", 16, 16),
        ("progressive", 64, 64),
        ("autoregressive", 64, 64),
    ]
    assert [sorted(r.get("quality", {})) for r in rows] == [["attribute_match", "fid", "num_images"]] * 3 + [[]]
    # 10 samples of 32 px shown at 128 px (4x, no smoothing) in cells 160 px wide with 3 caption lines, 4 columns
    grid = np.asarray(Image.open(out / "samples_grid.png").convert("RGB"))
    assert grid.shape == (3 * 174 + 4 * 8, 4 * 160 + 5 * 8, 3)
    first = np.asarray(Image.open(tmp_path / "run" / "sample" / "images" / "00000000.png").convert("RGB"))
    assert np.array_equal(grid[8 : 8 + 128, 24 : 24 + 128], first.repeat(4, 0).repeat(4, 1))
    assert (grid[8 + 132 : 8 + 174, 8 : 8 + 160] < 128).any()  # its prompt is written under it
    # the progression: the first 4 prompts, one row each (4 steps of 128 px, the prompt under the row)
    assert Image.open(out / "progression.png").size == (4 * 128 + 5 * 8 + 16, 4 * 176 + 5 * 8)
    gif = Image.open(out / "progression.gif")
    assert gif.n_frames == 4 and gif.size == (4 * 160 + 5 * 8, 174 + 16)
    assert m["metrics"]["fid"] == run_["fid"]["fid"] and m["metrics"]["attribute_match"] == run_["attributes"]["match"]
    assert any("stand-in" in n for n in m["notes"]) and m["counts"]["images"] == 10


def test_speed_table_quality_per_T_is_the_metrics_of_its_samples(tmp_path, fake_fid):
    """Table 4 layout: per T the first eval.speed_quality_images prompts sampled at that T (saved under
    speed/), scored by the same FID (the stage's extractor and reference) and attribute reader."""
    from evaluation.attributes import AttributeEvaluator
    from evaluation.evaluate_inputs import _synthetic_eval_images
    from evaluation.fid import FIDEvaluator

    cfg = sampled(tmp_path, ["eval.metrics=[fid,attributes,speed]", "eval.speed_quality_images=6"])
    run(cfg, "evaluate")
    rd, out = tmp_path / "run", tmp_path / "run" / "evaluate"
    rows = json.loads((out / "report.json").read_text())["speed"]
    prompts = [json.loads(x)["prompt"] for x in (rd / "sample" / "prompts.jsonl").read_text().splitlines()][:6]
    ref = _synthetic_eval_images(rd / "synthetic")
    fid = FIDEvaluator.from_config(
        cfg.eval, ref, "same images", len(ref), tmp_path / "cache", "cpu", extractor=FakeExtractor()
    )
    attr = AttributeEvaluator(cfg.data.synthetic.image_size)
    md = (out / "report.md").read_text()
    assert "| method | T (steps) | FID (↓) | attribute match (↑) | N (quality) |" in md
    samples = {}
    for r in rows[:3]:
        paths = sorted((out / "speed" / f"progressive_T{r['steps']:05d}").glob("*.png"))
        samples[r["steps"]] = np.stack([np.asarray(Image.open(p)) for p in paths])
        q = r["quality"]
        assert len(paths) == q["num_images"] == 6
        assert q["fid"] == pytest.approx(fid(paths)["fid"], rel=1e-9, abs=1e-9)
        assert q["attribute_match"] == attr(paths, prompts)["match"]
        assert f"| progressive | {r['steps']} | {q['fid']:.2f} | {q['attribute_match']:.3f} | 6 |" in md
    assert [r["steps"] for r in rows] == [8, 16, 64, 64] and "quality" not in rows[3]  # random AR: timing only
    assert not (out / "speed" / "autoregressive_T00064").exists()
    assert not np.array_equal(samples[8], samples[64]) and samples[8].shape == (6, 32, 32, 3)


def test_same_samples_give_the_same_report_figures(tmp_path, fake_fid):
    """Evaluate is a function of its inputs: from scratch again on the same samples, the same figures (the
    speed rows' quality samples are drawn again; only their timings may differ)."""
    import shutil

    over = ["eval.metrics=[fid,attributes,speed]", "eval.speed_steps=[8]", "eval.speed_quality_images=4"]
    cfg = sampled(tmp_path, over)
    out = tmp_path / "run" / "evaluate"
    reports = []
    for _ in range(2):
        run(cfg, "evaluate")
        rep = json.loads((out / "report.json").read_text())
        reports.append((rep["runs"], [r.get("quality") for r in rep["speed"]], (out / "samples_grid.png").read_bytes()))
        shutil.rmtree(out)
    assert reports[0] == reports[1]
    runs, quality, _ = reports[0]
    assert np.isfinite(runs["PDM (this run)"]["fid"]["fid"]) and quality[0]["num_images"] == 4


def test_a_rerun_reuses_each_metric_result_whose_images_settings_and_inputs_are_unchanged(
    tmp_path, fake_fid, monkeypatch
):
    """Adding a metric to eval.metrics reruns the stage but computes only that metric (at COCO's size each pass
    takes minutes); any other eval setting, or new samples, computes them again."""
    from tests.eval_utils import load

    rd, logs = tmp_path / "run", []
    cfg = sampled(tmp_path, ["eval.metrics=[fid,attributes,speed]"])
    run(cfg, "evaluate")
    report = json.loads((rd / "evaluate" / "report.json").read_text())
    first, first_speed = report["runs"], report["speed"]
    calls = fake_fid.calls

    more = load(rd, [ALL, "eval.metrics=[fid,attributes,speed,fd_vq]"])
    with monkeypatch.context() as m:  # its attribute match reused: no VQ-GAN round trip of the real images
        m.setattr("evaluation.evaluate_stage._reconstruct", lambda *a: pytest.fail("reconstructed again"))
        m.setattr("evaluation.evaluate_stage.run_speed", lambda *a: pytest.fail("speed table timed again"))
        run(more, "evaluate", log=logs.append)
    report = json.loads((rd / "evaluate" / "report.json").read_text())
    runs = report["runs"]
    assert report["speed"] == first_speed and "[evaluate] speed of PDM (this run): reused" in " ".join(logs)
    assert fake_fid.calls == calls  # neither the generated images' features nor the reference's read again
    for name, metric in (
        ("PDM (this run)", "fid"),
        ("PDM (this run)", "attributes"),
        ("Ground Truth (upper bound)", "attributes"),
        ("VQ-GAN reconstruction", "attributes"),
    ):
        assert runs[name][metric] == first[name][metric], (name, metric)
        assert any(m.startswith(f"[evaluate] {metric} of {name}: reused") for m in logs), (name, metric, logs)
    assert "[evaluate] fd_vq of PDM (this run) (10 images)" in logs and "fd_vq" in runs["PDM (this run)"]

    logs.clear()  # timed on another machine: the speed table timed again, every other result reused
    machine = {"device": "cpu", "chip": "another CPU", "threads": 1, "torch": "0"}
    with monkeypatch.context() as m:
        m.setattr("evaluation.evaluate_stage.timing_machine", lambda device: machine)
        run(load(rd, [ALL, "eval.metrics=[speed,fid,attributes,fd_vq]"]), "evaluate", log=logs.append)
    assert "[evaluate] speed of PDM (this run)" in logs and sum(": reused" in m for m in logs) == 6, logs

    logs.clear()  # another FID batch size: every result computed again
    run(load(rd, [ALL, "eval.metrics=[fid,attributes,fd_vq]", "eval.fid_batch_size=3"]), "evaluate", log=logs.append)
    assert all(": reused" not in m for m in logs), logs
    assert fake_fid.calls > calls and not any(": reused" in m for m in logs), logs
    assert (
        json.loads((rd / "evaluate" / "report.json").read_text())["runs"]["PDM (this run)"]["fid"]
        == first["PDM (this run)"]["fid"]
    )

    logs.clear()  # new samples (another sampler seed): computed again
    other = load(rd, [ALL, "eval.metrics=[fid,attributes,fd_vq]", "eval.fid_batch_size=3", "sample.seed=5"])
    run(other, "sample")
    run(other, "evaluate", log=logs.append)
    assert not any(": reused" in m for m in logs) and "[evaluate] fid of PDM (this run) (10 images)" in logs, logs


@pytest.mark.parametrize("save", ["first", "none"])
def test_progression_is_the_first_samples_steps(tmp_path, save):
    from evaluation.evaluate_stage import device_name
    from evaluation.progression import decode_maps, progression_maps
    from evaluation.sample_worker import job_for
    from tokenization.vqgan import load_tokenizer_dir

    cfg = sampled(tmp_path, [f"eval.save_step_maps={save}"])
    rd = tmp_path / "run"
    device = device_name()  # the sample and evaluate stages'
    maps, source = progression_maps(job_for(cfg.sample, cfg.text_encoder, cfg.eval, rd / "sample", rd, 10), device)
    assert source.startswith("saved") == (save == "first") and maps.shape == (4, 64)
    assert (maps[-1] == np.load(rd / "sample" / "tokens.npy")[0]).all()  # the final map = sample 0
    written = (maps < 256).sum(1)
    assert list(written) == [16, 32, 48, 64]  # L/T new tokens per step
    frames = decode_maps(load_tokenizer_dir(rd / "tokenizer").to(device), maps, device)
    image = np.asarray(Image.open(rd / "sample" / "images" / "00000000.png"))
    assert np.abs(frames[-1].astype(int) - image).max() <= (1 if device == "cuda" else 0)  # GPU convolutions: +-1
    unwritten = (maps[0] >= 256).reshape(8, 8).repeat(4, 0).repeat(4, 1)  # 4x4 pixels per token
    assert unwritten.mean() == 48 / 64 and (frames[0][unwritten] == 0).all()  # painted black


def test_autoregressive_export(tmp_path, fake_fid):
    """An AR-trained export: raster sampling, prefix progression, and the progressive rows timed on a random PDM."""
    from tests.eval_utils import write_model_export

    cfg = make_run(
        tmp_path, ["sample.sampler=autoregressive", "train.mode=autoregressive", "eval.metrics=[attributes,speed]"]
    )
    write_model_export(tmp_path / "run" / "train" / "export", cfg, "ar")
    m = run(cfg, "sample")
    sample = tmp_path / "run" / "sample"
    assert m["counts"]["step_map_chunks"] == 0 and not list((sample / "steps").iterdir())
    run(cfg, "evaluate")
    out = tmp_path / "run" / "evaluate"
    md = (out / "report.md").read_text()
    assert "randomly initialised PDM of the same size" in md and "autoregressive prefixes of the samples" in md
    assert Image.open(out / "progression.gif").n_frames == 64


def _replace_image(path, size):
    Image.fromarray(np.zeros((size, size, 3), np.uint8)).save(path)


@pytest.mark.parametrize(
    "case, match",
    [
        ("weights", "FID Inception weights not found: /nowhere/pt_inception.pth"),
        ("mixed", "mixed sizes"),
        ("empty", "prompt set is empty"),
        ("captioner", "captioner folder .eval.captioner_path. not found: /nowhere/captioner"),
        ("clip", "CLIP checkpoint .eval.clip_checkpoint. not found: /nowhere/clip.pt"),
        ("missing_image", "file not found"),
    ],
)
def test_bad_inputs_fail_before_heavy_work(tmp_path, fake_fid, monkeypatch, case, match):
    import evaluation.evaluate_stage as es

    sampled(tmp_path)
    sample = tmp_path / "run" / "sample"
    over = {
        "weights": ["eval.inception_weights=/nowhere/pt_inception.pth"],
        "captioner": ["eval.captioner_path=/nowhere/captioner"],
        "clip": ["eval.clip_checkpoint=/nowhere/clip.pt"],
    }.get(case, [])
    if case == "mixed":
        _replace_image(sample / "images" / "00000003.png", 40)
    elif case == "empty":
        (sample / "prompts.jsonl").write_text("")
    elif case == "missing_image":
        (sample / "images" / "00000007.png").unlink()
    heavy = []
    monkeypatch.setattr(es, "run_metrics", lambda *a, **k: heavy.append(1))
    with pytest.raises(Exception, match=match):
        run(load(tmp_path / "run", [ALL] + over), "evaluate")
    assert not heavy and fake_fid.calls == 0 and not (tmp_path / "run" / "evaluate" / "report.md").exists()


def test_coco_inputs_checked(tmp_path, fake_fid):
    path = tmp_path / "captions_val2014.json"
    path.write_text(json.dumps(COCO))
    base = [
        "data.download.source=laion",
        f"data.download.url_list={tmp_path}",
        f"eval.coco_captions={path}",
        "eval.num_prompts=4",
        "eval.metrics=[fid]",
    ]
    cfg = make_run(tmp_path, base)
    run(cfg, "sample")
    with pytest.raises(Exception, match="set eval.coco_images"):
        run(cfg, "evaluate")
    images = tmp_path / "val2014"
    images.mkdir()
    with pytest.raises(FileNotFoundError, match="4 of 4 COCO images missing"):
        run(load(tmp_path / "run", base + [f"eval.coco_images={images}"]), "evaluate")
    with pytest.raises(Exception, match="'attributes' reads the synthetic shapes"):
        run(load(tmp_path / "run", base[:-1] + ["eval.metrics=[attributes]"]), "evaluate")
    for i in range(1, 7):  # real images of any size: center crop + resize to eval.fid_resize
        Image.fromarray(np.full((40 + i, 60, 3), 20 * i, np.uint8)).save(images / COCO["images"][i - 1]["file_name"])
    m = run(load(tmp_path / "run", base + [f"eval.coco_images={images}", "eval.fid_resize=32"]), "evaluate")
    md = (tmp_path / "run" / "evaluate" / "report.md").read_text()
    assert np.isfinite(m["metrics"]["fid"]) and "| PDM (this run) |" in md and "| 13.28 |" in md  # paper's PDM row
    assert "MS COCO val2014" in md


def test_captioning_clip_score_and_retrieval(tmp_path, fake_fid, tiny_captioner_dir, tiny_clip):
    """Tiny random captioner and CLIP through the real evaluators; the retrieval baseline is scored too."""
    name, ckpt = tiny_clip
    cfg = sampled(
        tmp_path,
        [
            f"eval.captioner_path={tiny_captioner_dir[0]}",
            f"eval.clip_model={name}",
            f"eval.clip_checkpoint={ckpt}",
            "eval.caption_metrics=[BLEU,CIDEr]",
            "eval.caption_num_beams=1",
            "eval.caption_max_new_tokens=5",
            "eval.speed_steps=[16]",
            "eval.speed_quality_images=3",
            "eval.metrics=[fid,attributes,captioning,clip_score,retrieval,speed]",
        ],
    )
    run(cfg, "evaluate")
    out = tmp_path / "run" / "evaluate"
    md = (out / "report.md").read_text()
    assert "## Image-text alignment: captioning" in md and "## CLIP score" in md
    assert md.count("| Retrieval Baseline |") >= 3  # FID, attributes, captioning, CLIP tables
    assert "| Ground Truth (upper bound) |" in md and "19.12" not in md  # synthetic: no paper COCO figures
    rep = json.loads((out / "report.json").read_text())
    retr = rep["runs"]["Retrieval Baseline"]
    assert len(retr["retrieval"]["indices"]) == 10 and retr["attributes"]["num_images"] == 10
    assert (out / "retrieval" / "index.faiss").is_file()
    assert retr["retrieval"]["protocol"]["train_set"] == "synthetic train split"  # the download listed no shards
    quality = [r.get("quality") for r in rep["speed"]]  # Table 4: every measured metric per T
    assert [sorted(q) for q in quality[:2]] == [["attribute_match", "cider", "clip_score", "fid", "num_images"]] * 2
    assert quality[2] is None and "| CIDEr (↑) | attribute match (↑) | CLIP-S (↑) | N (quality) |" in md


@pytest.mark.slow
def test_real_stand_in_fid(tmp_path):
    """The real torch-fidelity network with stand-in weights: the report labels it (2048-d sqrtm: slow)."""
    cfg = sampled(tmp_path, ["eval.metrics=[fid]", "eval.fid_modes=[fid]", "eval.fid_resize=64"])
    m = run(cfg, "evaluate")
    md = (tmp_path / "run" / "evaluate" / "report.md").read_text()
    assert np.isfinite(m["metrics"]["fid"]) and "**FID extractor: stand-in, not comparable to published FID.**" in md
    assert "Note" in md or "Notes" in md


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    from tests.test_eval_clip_score import make_tiny_clip

    return make_tiny_clip(tmp_path_factory.mktemp("clip"))


from tests.test_eval_captioning import tiny_captioner_dir  # noqa: E402,F401  (fixture)


def test_coco_ground_truth_is_scored_at_the_generated_size(tmp_path):
    """MS COCO's val2014 files differ in size; CLIP score and captioning score the "Ground Truth" row as FID
    reads it: center-cropped and resized to the generated images' side (as they are, the set is refused)."""
    from evaluation.evaluate_inputs import Plan
    from evaluation.evaluate_stage import ground_truth
    from evaluation.images import ImageSet, center_crop_resize

    rng = np.random.default_rng(0)
    files = []
    for i, (h, w) in enumerate([(48, 64), (64, 48), (40, 64)]):
        files.append(tmp_path / f"COCO_val2014_{i:012d}.jpg")
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(files[-1])
    with pytest.raises(ValueError, match="mixed sizes"):
        ImageSet(files)
    plan = Plan(["fid", "clip_score"], False, ["p"] * 3, None, [], files, image_size=(32, 32))
    gt = ImageSet(ground_truth(plan))
    assert (gt.n, gt.height, gt.width) == (3, 32, 32)
    (batch,) = gt.batches(8)
    assert all(np.array_equal(batch[i], center_crop_resize(f, 32)) for i, f in enumerate(files))
    heldout = Plan(["fid"], False, ["p"], None, [], files[:1], image_size=(32, 32), heldout=True)
    assert ground_truth(heldout) == files[:1]  # already at the generated size
