"""Statistics of the human study against values computed by hand."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from evaluation.humaneval.stats import Z95, agreement, attention, fleiss_kappa, preference_table, resolve, share, wilson
from evaluation.humaneval.study import Study


def test_wilson_interval_by_hand():
    # 8/10, z = 1.96: center = (0.8 + 0.19208) / 1.38416 = 0.716738; half = 1.416021 * sqrt(0.016 + 0.009604)
    # = 0.226581 -> [0.490157, 0.943319]
    lo, hi = wilson(8, 10, z=1.96)
    assert lo == pytest.approx(0.490157, abs=1e-5) and hi == pytest.approx(0.943319, abs=1e-5)
    # 0/10: [0, z^2/n / (1 + z^2/n)] = [0, 0.38416 / 1.38416]; 10/10 mirrors it
    assert wilson(0, 10, z=1.96) == pytest.approx((0.0, 0.277540), abs=1e-5)
    assert wilson(10, 10, z=1.96) == pytest.approx((0.722460, 1.0), abs=1e-5)
    # 3/5: center = 0.98416 / 1.76832 = 0.556551, half = 1.108396 * sqrt(0.048 + 0.038416) = 0.325831
    assert wilson(3, 5, z=1.96) == pytest.approx((0.230720, 0.882382), abs=1e-5)
    assert Z95 == pytest.approx(1.959964, abs=1e-6)
    assert wilson(8, 10) == pytest.approx((0.490157, 0.943319), abs=1e-4)  # default z barely differs
    assert all(math.isnan(v) for v in wilson(0, 0))


def test_share_in_percent():
    s = share(3, 5, z=1.96)
    assert s["count"] == 3 and s["n"] == 5 and s["pct"] == pytest.approx(60.0)
    assert s["ci95"] == pytest.approx([23.0720, 88.2382], abs=1e-3)


def _study() -> Study:
    def item(run, i):
        return {"run": run, "index": i, "image": f"images/{run}/{i:08d}.png"}

    pairs = [
        {
            "id": f"c{i}",
            "kind": "compare",
            "group": "random",
            "prompt_index": i,
            "prompt": f"p{i}",
            "a": item("pdm", i),
            "b": item("random", i),
        }
        for i in range(5)
    ]
    pairs += [
        {
            "id": "k0",
            "kind": "check",
            "group": "check",
            "prompt_index": 0,
            "prompt": "p0",
            "a": item("pdm", 0),
            "b": item("pdm", 1),
        }
    ]
    return Study(Path("."), 0, "pdm", ["random"], pairs, "f" * 16)


def _vote(session, pair, swapped, quality, text):
    return {"session": session, "pair": pair, "swapped": swapped, "quality": quality, "text": text}


def test_table6_shares_from_side_answers():
    votes = [
        _vote("r1", "c0", False, "left", "left"),  # a on the left: quality a, text a
        _vote("r1", "c1", True, "right", "same"),  # b on the left: "right" is a
        _vote("r1", "c2", True, "left", "left"),  # b on the left: b, b
        _vote("r2", "c3", False, "same", "right"),  # same, b
        _vote("r2", "c4", False, "left", "left"),  # a, a
        _vote("r2", "k0", False, "left", "right"),  # a check: left out of the table
    ]
    (row,) = preference_table(_study(), resolve(_study(), votes))
    assert row["baseline"] == "random" and row["n"] == 5
    q, t = row["quality"], row["text"]
    assert [q[k]["count"] for k in ("baseline_wins", "same", "reference_wins")] == [1, 1, 3]
    assert [t[k]["count"] for k in ("baseline_wins", "same", "reference_wins")] == [2, 1, 2]
    assert q["reference_wins"]["pct"] == pytest.approx(60.0)
    assert q["reference_wins"]["ci95"] == pytest.approx([23.0720, 88.2382], abs=1e-2)  # 3/5 by hand, above
    assert t["baseline_wins"]["pct"] == pytest.approx(40.0)


def _resolved(session, pair, answer, kind="compare"):
    return {"session": session, "pair": pair, "kind": kind, "group": "random", "quality": answer, "text": answer}


def test_pairwise_agreement_and_fleiss_kappa_by_hand():
    rows = [_resolved(r, "x", "a") for r in ("r1", "r2", "r3")]  # 3 rater pairs, all agree
    rows += [_resolved("r1", "y", "a"), _resolved("r2", "y", "b")]  # 1 pair, disagree
    rows += [_resolved(r, "z", a) for r, a in (("r1", "a"), ("r2", "same"), ("r3", "b"), ("r4", "b"))]
    rows += [_resolved("r1", "k", "b", kind="check")]  # checks never count
    got = agreement(rows, "quality")
    # pairs: x 3/3, y 0/1, z 1/6 (only r3-r4 agree) -> 4/10
    assert got["pairwise"]["count"] == 4 and got["pairwise"]["n"] == 10
    per = {r: (s["count"], s["n"]) for r, s in got["per_rater"].items()}
    assert per == {"r1": (2, 6), "r2": (2, 6), "r3": (3, 5), "r4": (1, 3)}
    # Fleiss: P_x = 1, P_y = 0, P_z = (1+1+4-4)/12 = 1/6 -> P = 7/18; p = (5, 1, 3)/9 -> Pe = 35/81
    # kappa = (7/18 - 35/81) / (1 - 35/81) = -7/92
    assert got["fleiss_kappa"] == pytest.approx(-7 / 92, abs=1e-12)
    assert fleiss_kappa([[2, 0, 0], [0, 0, 2]]) == pytest.approx(1.0)
    assert math.isnan(fleiss_kappa([[1, 0, 0]]))  # no pair rated twice


def test_attention_check_failures_by_hand():
    rows = [
        _resolved("r1", "k0", "a", kind="check"),  # passed
        _resolved("r2", "k0", "b", kind="check"),  # preferred the decoy: failed
        _resolved("r2", "k1", "same", kind="check"),  # "same": not a failure, counted apart
        _resolved("r2", "c0", "b"),
    ]  # not a check
    got = attention(rows)
    assert got["failure"]["count"] == 1 and got["failure"]["n"] == 3
    assert got["failure"]["pct"] == pytest.approx(100 / 3)
    assert got["failure"]["ci95"] == pytest.approx([100 * v for v in wilson(1, 3)])
    assert got["same"] == 1
    assert got["per_rater"] == {"r1": {"failures": 0, "checks": 1}, "r2": {"failures": 1, "checks": 2}}
