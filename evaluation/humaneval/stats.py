"""The statistics of a study's votes: the paper's Table 6 shares with Wilson 95% intervals, rater agreement
(pairwise percent agreement and Fleiss' kappa) and attention-check failures.

Votes are first resolved (:func:`resolve`) from sides to items: per question the answer is ``"a"`` (the
reference run's sample, or on a check the sample for the shown prompt), ``"b"`` (the baseline's, or the decoy)
or ``"same"``. A rater fails a check when they prefer the decoy on the text question.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from itertools import combinations

from evaluation.humaneval.db import QUESTIONS
from evaluation.humaneval.study import CHECK, Study, winner

Z95 = 1.959963984540054  # the standard normal's 97.5% quantile
OUTCOMES = (("baseline_wins", "b"), ("same", "same"), ("reference_wins", "a"))
CATEGORIES = ("a", "same", "b")


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion k/n (NaN, NaN when n = 0)."""
    if n == 0:
        return math.nan, math.nan
    p, z2 = k / n, z * z
    denom = 1 + z2 / n
    center = (p + z2 / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return max(0.0, center - half), min(1.0, center + half)


def share(k: int, n: int, z: float = Z95) -> dict:
    """``{"count", "n", "pct", "ci95": [lo, hi]}``, percentages (NaN when n = 0)."""
    lo, hi = wilson(k, n, z)
    return {"count": k, "n": n, "pct": 100 * k / n if n else math.nan, "ci95": [100 * lo, 100 * hi]}


def resolve(study: Study, votes: list[dict]) -> list[dict]:
    """DB votes -> ``{"session", "pair", "kind", "group", "quality", "text"}`` with item answers."""
    pairs = study.by_id
    out = []
    for v in votes:
        p = pairs[v["pair"]]
        out.append(
            {
                "session": v["session"],
                "pair": v["pair"],
                "kind": p["kind"],
                "group": p["group"],
                **{q: winner(v[q], v["swapped"]) for q in QUESTIONS},
            }
        )
    return out


def preference_table(study: Study, resolved: list[dict]) -> list[dict]:
    """One row per baseline, in the layout of Table 6: per question the baseline's wins, "same" (the paper's
    "border") and the reference's wins, as shares of that baseline's votes."""
    rows = []
    for base in study.baselines:
        mine = [r for r in resolved if r["kind"] != CHECK and r["group"] == base]
        row = {"baseline": base, "n": len(mine)}
        for q in QUESTIONS:
            counts = Counter(r[q] for r in mine)
            row[q] = {name: share(counts[item], len(mine)) for name, item in OUTCOMES}
        rows.append(row)
    return rows


def _ratings_by_pair(resolved: list[dict], question: str) -> dict[str, dict[str, str]]:
    by_pair: dict[str, dict[str, str]] = defaultdict(dict)
    for r in resolved:
        if r["kind"] != CHECK:
            by_pair[r["pair"]][r["session"]] = r[question]
    return by_pair


def fleiss_kappa(table: list[list[int]]) -> float:
    """Fleiss' kappa of ``table[item][category]`` rating counts; items may have different numbers of
    raters (those with fewer than two are left out). NaN when undefined."""
    items = [row for row in table if sum(row) >= 2]
    if not items:
        return math.nan
    p_items = [(sum(c * c for c in row) - sum(row)) / (sum(row) * (sum(row) - 1)) for row in items]
    total = sum(sum(row) for row in items)
    p_cat = [sum(row[j] for row in items) / total for j in range(len(items[0]))]
    p_bar, p_e = sum(p_items) / len(p_items), sum(p * p for p in p_cat)
    return math.nan if p_e == 1 else (p_bar - p_e) / (1 - p_e)


def agreement(resolved: list[dict], question: str) -> dict:
    """Pairwise percent agreement between raters on the comparison pairs they both rated, overall and per
    rater (each rater against everyone who rated the same pairs), and Fleiss' kappa over the pairs."""
    agree = comparisons = 0
    per_rater: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    table = []
    for ratings in _ratings_by_pair(resolved, question).values():
        table.append([sum(1 for a in ratings.values() if a == c) for c in CATEGORIES])
        for (r1, a1), (r2, a2) in combinations(sorted(ratings.items()), 2):
            same = int(a1 == a2)
            agree, comparisons = agree + same, comparisons + 1
            for r in (r1, r2):
                per_rater[r][0] += same
                per_rater[r][1] += 1
    return {
        "pairwise": share(agree, comparisons),
        "fleiss_kappa": fleiss_kappa(table),
        "per_rater": {r: share(a, n) for r, (a, n) in sorted(per_rater.items())},
    }


def attention(resolved: list[dict]) -> dict:
    """Attention-check failures (the decoy preferred on the text question), overall and per rater;
    ``same`` counts the checks answered "same" (not failures)."""
    checks = [r for r in resolved if r["kind"] == CHECK]
    per_rater: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for r in checks:
        per_rater[r["session"]][0] += int(r["text"] == "b")
        per_rater[r["session"]][1] += 1
    fails = sum(f for f, _ in per_rater.values())
    return {
        "failure": share(fails, len(checks)),
        "same": sum(r["text"] == "same" for r in checks),
        "per_rater": {s: {"failures": f, "checks": n} for s, (f, n) in sorted(per_rater.items())},
    }


def summarize(study: Study, votes: list[dict], sessions: list[str] | None = None) -> dict:
    """Everything the report shows, JSON-ready."""
    resolved = resolve(study, votes)
    agree = {q: agreement(resolved, q) for q in QUESTIONS}
    checks = attention(resolved)
    raters = []
    for s in sessions if sessions is not None else sorted({v["session"] for v in votes}):
        mine = [r for r in resolved if r["session"] == s]
        raters.append(
            {
                "session": s,
                "votes": sum(r["kind"] != CHECK for r in mine),
                **checks["per_rater"].get(s, {"failures": 0, "checks": 0}),
                **{f"agreement_{q}": agree[q]["per_rater"].get(s) for q in QUESTIONS},
            }
        )
    return {
        "reference": study.reference,
        "baselines": study.baselines,
        "votes": len(votes),
        "pairs": len(study.pairs),
        "table": preference_table(study, resolved),
        "agreement": {q: {k: v for k, v in agree[q].items() if k != "per_rater"} for q in QUESTIONS},
        "attention_checks": {k: v for k, v in checks.items() if k != "per_rater"},
        "raters": raters,
    }
