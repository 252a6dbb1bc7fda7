"""Captioning metrics: equal to pycocoevalcap's, Java locale/SPICE handling, the captioner loader."""

import os
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from evaluation import caption_metrics
from evaluation.caption_metrics import CaptionScorer, java_env, spice_missing_message
from evaluation.captioner import Captioner
from evaluation.captioning import CaptioningEvaluator

CANDIDATES = [
    "a dog runs across the green grass",
    "two cats sleeping on a red couch",
    "a man riding a bike down the street",
    "a plate of food with broccoli and rice",
    "an airplane flying in the blue sky",
]
REFS = [
    [
        "A dog running on the grass.",
        "a brown dog runs through a field",
        "dog playing outside",
        "A dog is running in a park.",
        "the dog runs on green grass",
    ],
    [
        "Two cats are asleep on a couch.",
        "a pair of cats sleeping",
        "cats lying on a red sofa",
        "two kittens sleep together",
        "Two cats nap on the couch.",
    ],
    [
        "A man rides his bicycle on a street.",
        "a cyclist on the road",
        "man on a bike in the city",
        "a person riding a bicycle",
        "A man is biking down a street.",
    ],
    [
        "A plate with broccoli and rice.",
        "food on a white plate",
        "a meal of rice and vegetables",
        "broccoli, rice and chicken on a plate",
        "a dinner plate with food",
    ],
    [
        "An airplane in the sky.",
        "a jet flying overhead",
        "a plane flying in a clear blue sky",
        "an aircraft in flight",
        "A large airplane flies through the sky.",
    ],
]


class _Dummy:
    """Stands in for a pycocoevalcap scorer inside COCOEvalCap (SPICE needs jars we do not have)."""

    def compute_score(self, gts, res):
        return 0.0, []

    def method(self):
        return "dummy"


def _coco_eval(monkeypatch, candidates, refs, with_meteor):
    import pycocoevalcap.eval as ev

    monkeypatch.setattr(ev, "Spice", _Dummy)
    if not with_meteor:
        monkeypatch.setattr(ev, "Meteor", _Dummy)
    ids = list(range(len(candidates)))
    gt = SimpleNamespace(
        getImgIds=lambda: ids, imgToAnns={i: [{"image_id": i, "caption": r} for r in refs[i]] for i in ids}
    )
    res = SimpleNamespace(imgToAnns={i: [{"image_id": i, "caption": candidates[i]}] for i in ids})
    e = ev.COCOEvalCap(gt, res)
    e.evaluate()
    return e.eval


def test_scores_equal_pycocoevalcap(monkeypatch):
    expected = _coco_eval(monkeypatch, CANDIDATES, REFS, with_meteor=False)
    with CaptionScorer(["BLEU", "ROUGE_L", "CIDEr"]) as scorer:
        got = scorer.score(CANDIDATES, REFS)
    for key in ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "ROUGE_L", "CIDEr"):
        assert got[key] == pytest.approx(expected[key], rel=1e-12), key
    assert got["CIDEr"] > 0.1


@pytest.mark.slow
def test_meteor_equal_pycocoevalcap_under_a_foreign_locale(monkeypatch):
    """METEOR under a German JVM default locale: pycocoevalcap alone fails to parse; ours sets English."""
    expected = _coco_eval(monkeypatch, CANDIDATES, REFS, with_meteor=True)
    monkeypatch.setenv("JAVA_TOOL_OPTIONS", "-Duser.language=de -Duser.country=DE")
    with CaptionScorer(["BLEU", "METEOR", "ROUGE_L", "CIDEr"]) as scorer:
        got = scorer.score(CANDIDATES, REFS)
        prompt_scores = scorer.score(CANDIDATES, [[r[0]] for r in REFS])  # same METEOR process reused
    for key in ("Bleu_4", "METEOR", "ROUGE_L", "CIDEr"):
        assert got[key] == pytest.approx(expected[key], rel=1e-12), key
    assert 0 < prompt_scores["METEOR"] < 1
    assert os.environ["JAVA_TOOL_OPTIONS"] == "-Duser.language=de -Duser.country=DE"


def test_control_characters_do_not_shift_captions():
    odd = list(CANDIDATES)
    odd[1] = "two cats\x0csleeping on\u2028a red couch"
    with CaptionScorer(["BLEU", "CIDEr"]) as scorer:
        assert scorer.score(odd, REFS) == scorer.score(CANDIDATES, REFS)


def test_java_env_appends_and_restores(monkeypatch):
    monkeypatch.setenv("JAVA_TOOL_OPTIONS", "-Xss4m")
    monkeypatch.delenv("JDK_JAVA_OPTIONS", raising=False)
    with java_env(spice=True):
        assert os.environ["JAVA_TOOL_OPTIONS"] == "-Xss4m -Duser.language=en -Duser.country=US"
        assert "--add-opens=java.base/java.lang=ALL-UNNAMED" in os.environ["JDK_JAVA_OPTIONS"]
    assert os.environ["JAVA_TOOL_OPTIONS"] == "-Xss4m" and "JDK_JAVA_OPTIONS" not in os.environ


def test_spice_missing_message_names_jars_and_folder(tmp_path):
    (tmp_path / "stanford-corenlp-3.6.0.jar").write_bytes(b"")
    msg = spice_missing_message(tmp_path)
    assert "stanford-corenlp-3.6.0-models.jar" in msg and str(tmp_path) in msg and "\n" not in msg
    assert "stanford-corenlp-3.6.0.jar " not in msg
    (tmp_path / "stanford-corenlp-3.6.0-models.jar").write_bytes(b"")
    assert spice_missing_message(tmp_path) is None


def test_scorer_skips_spice_with_one_line(monkeypatch, tmp_path):
    monkeypatch.setattr(caption_metrics, "spice_lib_dir", lambda: tmp_path)
    lines = []
    with CaptionScorer(["BLEU", "SPICE"], log=lines.append) as scorer:
        out = scorer.score(CANDIDATES, REFS)
    assert len(lines) == 1 and "SPICE skipped" in lines[0] and str(tmp_path) in lines[0]
    assert "SPICE" not in out and "Bleu_4" in out and scorer.metrics == ["BLEU"]


def test_spice_runs_with_java17_options_when_jars_present(monkeypatch, tmp_path):
    """The real SPICE needs the CoreNLP jars (absent here): check the plumbing with a recording stand-in."""
    import pycocoevalcap.spice.spice as sp

    for jar in caption_metrics.SPICE_JARS:
        (tmp_path / jar).write_bytes(b"")
    monkeypatch.setattr(caption_metrics, "spice_lib_dir", lambda: tmp_path)
    seen = {}

    class RecordingSpice:
        def compute_score(self, gts, res):
            seen.update(env={k: os.environ.get(k) for k in ("JAVA_TOOL_OPTIONS", "JDK_JAVA_OPTIONS")}, gts=gts)
            return 0.25, []

    monkeypatch.setattr(sp, "Spice", RecordingSpice)
    monkeypatch.delenv("JDK_JAVA_OPTIONS", raising=False)
    with CaptionScorer(["CIDEr", "SPICE"]) as scorer:
        out = scorer.score(CANDIDATES, REFS)
    assert out["SPICE"] == 0.25 and scorer.spice_message is None
    assert "--add-opens=java.base/java.util=ALL-UNNAMED" in seen["env"]["JDK_JAVA_OPTIONS"]
    assert "-Duser.language=en" in seen["env"]["JAVA_TOOL_OPTIONS"]
    assert seen["gts"][0][0] == "a dog running on the grass"  # PTB-tokenised, like COCOEvalCap
    assert "JDK_JAVA_OPTIONS" not in os.environ


def test_spice_lib_dir_is_pycocoevalcap_spice_lib():
    import pycocoevalcap.spice.spice as sp

    assert caption_metrics.spice_lib_dir() == __import__("pathlib").Path(sp.__file__).parent / "lib"


# --- the captioner loaded through the production path ------------------------------------------------


@pytest.fixture(scope="module")
def tiny_captioner_dir(tmp_path_factory):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import (
        GPT2Config,
        GPT2TokenizerFast,
        VisionEncoderDecoderConfig,
        VisionEncoderDecoderModel,
        ViTConfig,
        ViTImageProcessor,
    )

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(
        [c.lower() for r in REFS for c in r],
        trainers.BpeTrainer(
            vocab_size=400, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
        ),
    )
    eos = "<|endoftext|>"
    tokenizer = GPT2TokenizerFast(tokenizer_object=tok, bos_token=eos, eos_token=eos, unk_token=eos, pad_token=eos)
    enc = ViTConfig(
        image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64
    )
    dec = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=64,
        n_embd=32,
        n_layer=1,
        n_head=2,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    cfg = VisionEncoderDecoderConfig.from_encoder_decoder_configs(enc, dec)
    cfg.decoder_start_token_id = cfg.pad_token_id = cfg.eos_token_id = tokenizer.eos_token_id
    torch.manual_seed(0)
    model = VisionEncoderDecoderModel(config=cfg)
    path = tmp_path_factory.mktemp("captioner")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(path)
    return path, model


def _imgs(n, size=40):
    return np.stack([np.random.RandomState(i).randint(0, 256, (size, size, 3)) for i in range(n)]).astype(np.uint8)


def test_captioner_loads_saved_model(tiny_captioner_dir):
    path, saved = tiny_captioner_dir
    cap = Captioner(path, "VisionEncoderDecoderModel", device="cpu", max_new_tokens=6, num_beams=2, batch_size=2)
    for (name, a), b in zip(saved.state_dict().items(), cap.model.state_dict().values()):
        assert torch.equal(a, b), name
    first, second = cap(_imgs(3)), cap(_imgs(3))
    assert len(first) == 3 and all(isinstance(c, str) for c in first) and first == second
    assert cap.protocol["class"] == "VisionEncoderDecoderModel" and "num_beams=2" in cap.protocol["decoding"]


def test_captioner_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="eval.captioner_path"):
        Captioner(tmp_path / "nothing")
    with pytest.raises(ValueError, match="not supported"):
        Captioner.__init__.__globals__["_model_class"]("GPT2LMHeadModel")


def test_evaluator_scores_both_reference_sets(tiny_captioner_dir):
    path, _ = tiny_captioner_dir
    cap = Captioner(path, device="cpu", max_new_tokens=6, num_beams=1)
    prompts = [r[0] for r in REFS]
    with CaptionScorer(["BLEU", "ROUGE_L", "CIDEr"]) as scorer:
        out = CaptioningEvaluator(cap, scorer)(_imgs(5), prompts, REFS)
        direct = scorer.score(out["captions"], [[p] for p in prompts])
    assert set(out) >= {"vs_prompt", "vs_coco_refs", "captions", "protocol"}
    assert out["vs_prompt"] == direct and set(out["vs_coco_refs"]) == set(direct)
    assert "DALL-Eval" in out["protocol"]["references"]["vs_coco_refs"]


class _CountingCaptioner:
    calls = 0

    def __call__(self, imgs):
        self.calls += 1
        return ["a caption"] * imgs.n


@pytest.mark.parametrize(
    "images, prompts, refs, match",
    [
        (_imgs(3), [], None, "prompt set is empty"),
        (_imgs(3), None, None, "prompt set is empty"),
        (_imgs(3), ["a", "b"], None, "2 prompts for 3 images"),
        (_imgs(3), ["a", "", "c"], None, r"prompts\[1\]"),
        (list(_imgs(2)) + list(_imgs(1, size=48)), ["a", "b", "c"], None, "mixed sizes"),
        (_imgs(2), ["a", "b"], [["x"], []], r"refs\[1\]"),
        (_imgs(2), ["a", "b"], ["one", "two"], r"refs\[0\]"),
    ],
)
def test_bad_inputs_fail_before_captioning(images, prompts, refs, match):
    cap = _CountingCaptioner()
    scorer = SimpleNamespace(metrics=["BLEU"], spice_message=None)
    with pytest.raises(ValueError, match=match):
        CaptioningEvaluator(cap, scorer)(images, prompts, refs)
    assert cap.calls == 0
