"""Wilson intervals stay within 0-100 % at the ends (k = 0 or k = n), where the formula's rounding would
otherwise step past them."""

from __future__ import annotations

from evaluation.humaneval.stats import share, wilson


def test_intervals_at_the_ends_stay_within_bounds():
    for n in (16, 27, 40, 200):
        for k in (0, n):
            lo, hi = wilson(k, n)
            assert 0.0 <= lo <= hi <= 1.0, (k, n)
    assert share(16, 16)["ci95"][1] == 100.0 and share(0, 27)["ci95"][0] == 0.0
