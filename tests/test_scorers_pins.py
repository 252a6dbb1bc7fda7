"""Pins for ``evaluation.scorers.Scorers`` (found by mutation testing), with recording stand-ins for the
evaluators: which metrics can run, one build per metric, the prompts/refs each call sees, the names of the
quality figures and closing the captioner."""

from types import SimpleNamespace

import pytest

from evaluation.scorers import Scorers

ALL = ["fid", "attributes", "speed", "captioning", "clip_score", "fd_vq"]


class Recorder:
    def __init__(self, metric, result):
        self.metric, self.result, self.calls = metric, result, []
        self.scorer = SimpleNamespace(closed=False, close=lambda: setattr(self.scorer, "closed", True))

    def __call__(self, images, prompts, refs):
        self.calls.append((list(images), list(prompts), None if refs is None else list(refs)))
        return self.result


RESULTS = {
    "fid": {"fid": 14.5, "clean_fid": 15.25, "num_images": 3, "protocol": {}},
    "fd_vq": {"fd_vq": 1.5, "num_images": 3},
    "captioning": {"vs_prompt": {"CIDEr": 0.7, "Bleu_4": 0.2}, "vs_coco_refs": {"CIDEr": 1.9}},
    "attributes": {"match": 0.4, "num_images": 3},
    "clip_score": {"clip_score": 0.61, "num_images": 3},
}


def _scorers(monkeypatch, metrics=ALL, captioner="cap", clip="clip.pt", vq=object(), refs=True):
    built = []

    def build(self, metric):
        built.append(metric)
        return Recorder(metric, RESULTS[metric])

    monkeypatch.setattr(Scorers, "_build", build)
    ev = SimpleNamespace(captioner_path=captioner, clip_checkpoint=clip, fid_stats_cache=None)
    prompts = ["p0", "p1", "p2", "p3"]
    plan = SimpleNamespace(
        metrics=metrics, prompts=prompts, refs=[[f"r{i}"] for i in range(4)] if refs else None, fid_reference=[]
    )
    return Scorers(ev, plan, 32, lambda: None, "cache", "cpu", log=lambda _: None, vq=vq), built


def test_available_needs_the_weights_and_keeps_the_quality_order(monkeypatch):
    s, _ = _scorers(monkeypatch)
    assert s.available() == ["fid", "fd_vq", "captioning", "attributes", "clip_score"]
    s, _ = _scorers(monkeypatch, captioner=None, clip="", vq=None)
    assert s.available() == ["fid", "attributes"]
    s, _ = _scorers(monkeypatch, metrics=["clip_score", "speed"])
    assert s.available() == ["clip_score"]


def test_each_evaluator_is_built_once(monkeypatch):
    s, built = _scorers(monkeypatch)
    s("fid", ["a", "b", "c", "d"])
    s("fid", ["e", "f"], 2)
    s.quality(["a", "b"])
    assert sorted(built) == sorted(["fid", "fd_vq", "captioning", "attributes", "clip_score"])


def test_calls_see_the_first_n_prompts_and_refs(monkeypatch):
    s, _ = _scorers(monkeypatch)
    s("captioning", ["a", "b", "c", "d"])
    s("captioning", ["a", "b"], 2)
    assert s.evaluator("captioning").calls == [
        (["a", "b", "c", "d"], ["p0", "p1", "p2", "p3"], [["r0"], ["r1"], ["r2"], ["r3"]]),
        (["a", "b"], ["p0", "p1"], [["r0"], ["r1"]]),
    ]
    s, _ = _scorers(monkeypatch, refs=False)
    s("attributes", ["a"], 1)
    assert s.evaluator("attributes").calls == [(["a"], ["p0"], None)]


def test_quality_names_each_headline_figure(monkeypatch):
    """fid/clean_fid, fd_vq, cider = CIDEr of caption vs prompt, attribute_match, clip_score, num_images."""
    s, _ = _scorers(monkeypatch)
    assert s.quality(["a", "b", "c"]) == {
        "num_images": 3,
        "fid": 14.5,
        "clean_fid": 15.25,
        "fd_vq": 1.5,
        "cider": 0.7,
        "attribute_match": 0.4,
        "clip_score": 0.61,
    }
    assert s.evaluator("fid").calls[-1][1] == ["p0", "p1", "p2"]  # the first len(images) prompts


def test_quality_without_a_cider_leaves_it_out(monkeypatch):
    s, _ = _scorers(monkeypatch, metrics=["captioning"])
    s.evaluator("captioning").result = {"vs_coco_refs": {"CIDEr": 1.0}}
    assert s.quality(["a"]) == {"num_images": 1}


def test_close_stops_the_captioners_scorer(monkeypatch):
    s, _ = _scorers(monkeypatch)
    cap = s.evaluator("captioning")
    with s:
        pass
    assert cap.scorer.closed and "captioning" not in s._built


def test_build_rejects_an_unknown_metric():
    s = Scorers(SimpleNamespace(), SimpleNamespace(), None, lambda: None, "cache", "cpu")
    with pytest.raises(ValueError, match="unknown quality metric 'speed'"):
        s.evaluator("speed")


def test_fid_statistics_cache_folder_prefers_eval_fid_stats_cache(monkeypatch):
    """``eval.fid_stats_cache`` when set, else the stage's cache folder."""
    import sys

    seen = []
    fake = SimpleNamespace(from_config=lambda *a, **k: seen.append(a[4]))
    monkeypatch.setitem(sys.modules, "evaluation.fid", SimpleNamespace(FIDEvaluator=fake))  # no torch import
    plan = SimpleNamespace(metrics=["fid"], fid_reference=["x.png"], fid_reference_name="ref")
    for cache, want in (("/stats", "/stats"), (None, "stage-cache")):
        ev = SimpleNamespace(fid_stats_cache=cache)
        Scorers(ev, plan, None, lambda: "extractor", "stage-cache", "cpu").evaluator("fid")
        assert seen[-1] == want
