"""``codebook_usage``: the share of the K codes predicted at least once, counted only at the scored positions,
computed without reading the device back (it is logged every micro-batch)."""

from __future__ import annotations

import torch

from training.model.train_module import codebook_usage


def test_codes_are_counted_only_where_scored_and_without_a_host_read(monkeypatch):
    pred = torch.tensor([[3, 3, 7, 1], [0, 7, 9, 9]])
    where = torch.tensor([[True, True, True, False], [False, False, True, True]])  # codes 3, 7, 9 (not 1 or 0)
    with monkeypatch.context() as m:
        for name in ("item", "tolist", "__bool__", "nonzero", "unique"):
            m.setattr(torch.Tensor, name, lambda *a, _n=name: (_ for _ in ()).throw(AssertionError(f"{_n} read back")))
        usage = codebook_usage(pred, where, codebook_size=10)
        nothing = codebook_usage(pred, torch.zeros_like(where), codebook_size=10)
        every = codebook_usage(torch.arange(10).view(2, 5), torch.ones(2, 5, dtype=torch.bool), codebook_size=10)
    assert usage.dtype == torch.float32 and usage.shape == ()
    assert (float(usage), float(nothing), float(every)) == (float(torch.tensor(0.3)), 0.0, 1.0)
