"""A multi-source download has an eval split when any source names its own eval list, with no
``eval_split`` at all; the synthetic source never has one. A source's own 0 is its value, not "unset"."""

from __future__ import annotations

from tests.test_download_sources import CC3M, LAION, load
from tokenization.download_sources import has_eval_split


def test_one_sources_eval_list_is_an_eval_split():
    assert has_eval_split(load({"source": "sources", "sources": [LAION, CC3M]}))  # cc3m's own eval list
    assert not has_eval_split(load({"source": "sources", "sources": [LAION]}))
    assert has_eval_split(load({"source": "laion", "url_list": "/x", "eval_url_list": "/y"}))
    assert not has_eval_split(load({"source": "synthetic"}))


def test_a_source_may_set_a_filter_to_zero():
    from tokenization.download_sources import source_config

    cfg = load({"source": "sources", "sources": [{**LAION, "min_width": 0, "min_similarity": 0.0}], "min_width": 64})
    laion = source_config(cfg, cfg.sources[0])
    assert (laion.min_width, laion.min_similarity) == (0, 0.0)  # its own 0, not data.download's 64
