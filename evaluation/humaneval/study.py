"""A side-by-side study built from the sample stage outputs of two or more runs, and each rater's layout.

A study folder (``build_study``)::

    study.json                the runs, the seed and the pairs (written last, by rename)
    images/rK/NNNNNNNN.png    copies of the shown samples (K: position of the run in --runs; prompt index)
    votes.sqlite              the votes (``evaluation.humaneval.db``), created by the server

Pairs. The first run is the reference (the paper's "prog."), every later run a baseline. One ``compare`` pair per
baseline and prompt shared by all runs (matched by prompt index; the prompt texts must agree): item ``a`` is the
reference's sample, ``b`` the baseline's. An attention ``check`` pair shows a run's sample for the prompt (``a``)
against the same run's sample for another prompt (``b``); on the text question ``a`` is the right answer. Pair ids
are positions in a seeded shuffle, so neither an id nor an image URL tells a check from a comparison or one model
from another.

Layout. Every rater sees every pair once; the order and the sides come from ``(study seed, session id)``, so a
rater's layout is the same after a reload or a server restart, and two raters' layouts differ. Sides are balanced
per rater: within each group (each baseline's pairs; the checks) ``a`` is on the left in half of the pairs, the
odd one out drawn at random.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from core.files import write_text_atomic
from evaluation.humaneval import HumanEvalError

# The only import of the sample stage's files in this package.
from evaluation.sample_files import image_path, read_prompts

STUDY, DB_FILE = "study.json", "votes.sqlite"
CHECK = "check"


@dataclass(frozen=True)
class Run:
    name: str
    sample_dir: Path


def parse_run(spec: str) -> Run:
    """``[NAME=]PATH``: a run directory (its ``sample/`` folder is read) or a sample folder itself.
    NAME defaults to the run directory's name."""
    name, sep, path = spec.partition("=")
    if not sep:
        name, path = "", spec
    folder = Path(path)
    for cand in (folder / "sample", folder):
        if (cand / "prompts.jsonl").is_file():
            default = cand.parent.name if cand.name == "sample" else cand.name
            return Run(name.strip() or default, cand.resolve())
    raise HumanEvalError(f"{path}: no sample/prompts.jsonl (nor prompts.jsonl) there: run the sample stage first")


def _run_prompts(run: Run) -> dict[int, str]:
    out = {}
    for rec in read_prompts(run.sample_dir):
        i = int(rec["index"])
        if not image_path(run.sample_dir, i).is_file():
            raise HumanEvalError(
                f"run {run.name}: no image for prompt {i} ({image_path(run.sample_dir, i)}): "
                "the sample stage is unfinished"
            )
        out[i] = str(rec["prompt"])
    return out


def shared_prompts(runs: list[Run]) -> dict[int, str]:
    """Prompt index -> text, for the indexes every run sampled; the texts must agree."""
    per_run = [_run_prompts(r) for r in runs]
    common = sorted(set.intersection(*(set(p) for p in per_run)))
    for i in common:
        for run, p in zip(runs[1:], per_run[1:]):
            if p[i] != per_run[0][i]:
                raise HumanEvalError(
                    f"prompt {i} differs between runs {runs[0].name} ({per_run[0][i]!r}) and "
                    f"{run.name} ({p[i]!r}): compare runs sampled on the same prompts"
                )
    if not common:
        raise HumanEvalError("the runs share no prompt index: compare runs sampled on the same prompts")
    return {i: per_run[0][i] for i in common}


def build_study(
    run_specs: list[str], out: str | Path, attention_checks: int = 4, seed: int = 0, max_prompts: int | None = None
) -> Path:
    """Write a study folder (see the module docstring); returns its ``study.json``."""
    runs = [parse_run(s) for s in run_specs]
    names = [r.name for r in runs]
    if len(runs) < 2:
        raise HumanEvalError("--runs needs at least two runs: the reference first, then one or more baselines")
    if len(set(names)) < len(names):
        raise HumanEvalError(f"run names repeat ({', '.join(names)}): name them with NAME=PATH")
    if attention_checks < 0 or (max_prompts is not None and max_prompts < 1):
        raise HumanEvalError("--attention-checks must be >= 0 and --prompts >= 1")
    out = Path(out)
    if (out / STUDY).exists():
        raise HumanEvalError(f"{out} already holds a study: choose another --out")
    prompts = shared_prompts(runs)
    rng = random.Random(seed)
    chosen = sorted(prompts)
    if max_prompts and max_prompts < len(chosen):
        chosen = sorted(rng.sample(chosen, max_prompts))

    def item(r: int, i: int) -> dict:
        return {"run": runs[r].name, "index": i, "image": f"images/r{r}/{i:08d}.png"}

    pairs = [
        {
            "kind": "compare",
            "group": runs[r].name,
            "prompt_index": i,
            "prompt": prompts[i],
            "a": item(0, i),
            "b": item(r, i),
        }
        for r in range(1, len(runs))
        for i in chosen
    ]
    for c in range(attention_checks):
        i = rng.choice(chosen)
        decoys = [j for j in sorted(prompts) if prompts[j] != prompts[i]]
        if not decoys:
            raise HumanEvalError("attention checks need two different prompts: use --attention-checks 0")
        r = c % len(runs)
        pairs.append(
            {
                "kind": CHECK,
                "group": CHECK,
                "prompt_index": i,
                "prompt": prompts[i],
                "a": item(r, i),
                "b": item(r, rng.choice(decoys)),
            }
        )
    rng.shuffle(pairs)
    for k, p in enumerate(pairs):
        p["id"] = f"{k:04d}"
        for it in (p["a"], p["b"]):
            dst = out / it["image"]
            if not dst.is_file():
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(image_path(runs[names.index(it["run"])].sample_dir, it["index"]), dst)
    doc = {
        "format": 1,
        "seed": seed,
        "reference": names[0],
        "baselines": names[1:],
        "runs": [{"name": r.name, "sample_dir": str(r.sample_dir)} for r in runs],
        "prompts": len(chosen),
        "attention_checks": attention_checks,
        "pairs": pairs,
    }
    return write_text_atomic(out / STUDY, json.dumps(doc, indent=1))


@dataclass
class Study:
    folder: Path
    seed: int
    reference: str
    baselines: list[str]
    pairs: list[dict]
    fingerprint: str

    @property
    def by_id(self) -> dict[str, dict]:
        return {p["id"]: p for p in self.pairs}


def load_study(folder: str | Path) -> Study:
    folder = Path(folder)
    path = folder / STUDY
    if not path.is_file():
        raise HumanEvalError(f"{folder}: no {STUDY}: build the study first (pt2i humaneval build)")
    raw = path.read_bytes()
    doc = json.loads(raw)
    return Study(
        folder, doc["seed"], doc["reference"], doc["baselines"], doc["pairs"], hashlib.sha256(raw).hexdigest()[:16]
    )


def balanced_flips(n: int, rng: random.Random) -> list[bool]:
    """``n`` booleans, half of them True (the odd one drawn at random), in random order."""
    flips = [False] * (n // 2) + [True] * (n // 2)
    if n % 2:
        flips.append(rng.random() < 0.5)
    rng.shuffle(flips)
    return flips


def layout(study: Study, session: str) -> list[tuple[str, bool]]:
    """A rater's ``[(pair id, swapped)]`` in presentation order; swapped: item ``b`` is on the left."""
    rng = random.Random(f"{study.seed}:{session}")
    groups: dict[str, list[str]] = defaultdict(list)
    for p in study.pairs:
        groups[p["group"]].append(p["id"])
    swapped: dict[str, bool] = {}
    for g in sorted(groups):
        swapped.update(zip(groups[g], balanced_flips(len(groups[g]), rng)))
    order = [p["id"] for p in study.pairs]
    rng.shuffle(order)
    return [(pid, swapped[pid]) for pid in order]


def shown_item(pair: dict, swapped: bool, side: str) -> dict:
    """The item (``pair["a"]`` or ``pair["b"]``) shown on ``side`` ("left"/"right")."""
    return pair["b"] if (side == "left") == swapped else pair["a"]


def winner(answer: str, swapped: bool) -> str:
    """A side answer ("left"/"same"/"right") -> the item it prefers: "a", "b" or "same"."""
    if answer == "same":
        return "same"
    return "b" if (answer == "left") == swapped else "a"
