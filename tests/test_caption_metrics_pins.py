"""Pins for ``evaluation.caption_metrics.CaptionScorer`` (found by mutation testing): the metric list checks,
the input checks, the PTB tokenizer count check and one reused METEOR process; no Java process is started
(the tokenizer and METEOR are replaced by stand-ins)."""

import pytest

from evaluation import caption_metrics
from evaluation.caption_metrics import CaptionScorer, spice_missing_message


def test_metric_list_must_be_a_non_empty_subset():
    with pytest.raises(ValueError, match="non-empty subset"):
        CaptionScorer([])
    with pytest.raises(ValueError, match="non-empty subset"):
        CaptionScorer(["BLEU", "Bleu_4"])


def test_a_repeated_metric_is_kept_once_and_a_repeated_spice_is_still_skipped(monkeypatch, tmp_path):
    monkeypatch.setattr(caption_metrics, "spice_lib_dir", lambda: tmp_path)  # no jars there
    lines = []
    scorer = CaptionScorer(["SPICE", "BLEU", "SPICE", "BLEU"], log=lines.append)
    assert scorer.metrics == ["BLEU"] and len(lines) == 1


def test_a_folder_named_like_a_jar_is_not_the_jar(tmp_path):
    for jar in caption_metrics.SPICE_JARS:
        (tmp_path / jar).mkdir()
    assert "stanford-corenlp-3.6.0.jar" in spice_missing_message(tmp_path)


@pytest.mark.parametrize(
    "candidates, references, match",
    [
        ([], [], "no captions to score"),
        (["a cat"], [["a cat"], ["a dog"]], "one non-empty reference list per candidate"),
        (["a cat", "a dog"], [["a cat"], []], "one non-empty reference list per candidate"),
    ],
)
def test_bad_inputs_are_refused_before_java(monkeypatch, candidates, references, match):
    from pycocoevalcap.tokenizer import ptbtokenizer

    def no_java(self, captions):
        raise AssertionError("the tokenizer ran")

    monkeypatch.setattr(ptbtokenizer.PTBTokenizer, "tokenize", no_java)
    with pytest.raises(ValueError, match=match):
        CaptionScorer(["BLEU"]).score(candidates, references)


def _lower(self, captions):
    return {k: [c["caption"].lower() for c in v] for k, v in captions.items()}


def test_a_tokenizer_that_loses_a_caption_is_an_error(monkeypatch):
    """PTBTokenizer matches lines by position: fewer captions back than given must fail loudly."""
    from pycocoevalcap.tokenizer import ptbtokenizer

    monkeypatch.setattr(
        ptbtokenizer.PTBTokenizer, "tokenize", lambda self, c: {k: v[:-1] for k, v in _lower(self, c).items()}
    )
    with pytest.raises(RuntimeError, match="different number of captions"):
        CaptionScorer(["BLEU"]).score(["a cat", "a dog"], [["a cat", "the cat"], ["a dog", "one dog"]])


def test_one_meteor_process_is_reused_until_close(monkeypatch):
    from pycocoevalcap.meteor import meteor
    from pycocoevalcap.tokenizer import ptbtokenizer

    made, stopped = [], []

    class FakeMeteor:
        def __init__(self):
            made.append(self)

        def compute_score(self, gts, res):
            return 0.5, []

        def __del__(self):
            stopped.append(self)

    monkeypatch.setattr(ptbtokenizer.PTBTokenizer, "tokenize", _lower)
    monkeypatch.setattr(meteor, "Meteor", FakeMeteor)
    scorer = CaptionScorer(["METEOR"])
    assert scorer.score(["a cat"], [["a cat"]]) == {"METEOR": 0.5}
    assert scorer.score(["a dog"], [["a dog"]]) == {"METEOR": 0.5}
    assert len(made) == 1 and not stopped
    scorer.close()
    assert stopped == made and scorer._meteor is None
    scorer.close()  # a second close does nothing
    assert len(stopped) == 1
