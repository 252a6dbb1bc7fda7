"""Caption metrics tokenize the candidates like the references (pycocoevalcap's COCOEvalCap runs the PTB tokenizer
on both): capitals and punctuation in a generated caption change no score."""

from __future__ import annotations

import pytest

from evaluation.caption_metrics import CaptionScorer
from tests.test_eval_captioning import CANDIDATES, REFS


def test_candidates_are_ptb_tokenized_like_the_references():
    shouted = [c[0].upper() + c[1:] + "." for c in CANDIDATES]  # "A dog runs across the green grass."
    with CaptionScorer(["BLEU", "CIDEr"]) as scorer:
        plain, dressed = scorer.score(CANDIDATES, REFS), scorer.score(shouted, REFS)
    assert dressed == pytest.approx(plain, rel=1e-12) and plain["CIDEr"] > 0.1
