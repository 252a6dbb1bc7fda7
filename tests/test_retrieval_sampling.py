"""Retrieval index inputs (``evaluation.retrieval``): the IVF training sample drawn from blocks holds exactly
``size`` distinct rows (those the seed picks, wherever the block boundaries fall), and an index whose vector
count differs from the training items is refused."""

from __future__ import annotations

import numpy as np
import pytest

from evaluation.retrieval import Chunks, RetrievalBaseline, _train_sample, build_index


def test_the_training_sample_is_exactly_the_seeded_rows_across_block_boundaries():
    n, block = 50, 7
    data = np.arange(n, dtype=np.float32)[:, None] * np.ones((1, 4), np.float32)  # row i is all i
    chunks = Chunks(n, 4, lambda: (data[i : i + block] for i in range(0, n, block)))
    for size, seed in ((45, 0), (49, 3), (20, 1)):
        got = _train_sample(chunks, size, seed)
        want = np.sort(np.random.default_rng(seed).choice(n, size, replace=False))
        assert got.shape == (size, 4)
        np.testing.assert_array_equal(got[:, 0], want.astype(np.float32))
    np.testing.assert_array_equal(_train_sample(chunks, n, 0), data)  # all rows when size >= n


def test_an_index_and_items_of_different_lengths_are_refused():
    x = np.eye(3, 4, dtype=np.float32)
    index = build_index(x, "Flat", use_gpu=False, log=lambda m: None)
    with pytest.raises(ValueError, match="index holds 3 vectors but 2 training items"):
        RetrievalBaseline(index, ["a", "b"], encoder=None)
    assert RetrievalBaseline(index, ["a", "b", "c"], encoder=None).items == ["a", "b", "c"]
