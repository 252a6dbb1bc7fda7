"""Three cheap stand-in stages for the sweep tests (the real ones take minutes): ``synthetic`` (section
data.synthetic) -> ``train`` (section train) -> ``evaluate`` (section eval), each appending one line to the
file named by $PT2I_TEST_CALLS; ``evaluate`` reports metrics that follow train.p_error and train.seed.
``train`` of the run directory named by $PT2I_TEST_HANG writes ``started`` and then waits to be killed.

``python -m tests.sweep_utils SWEEP.yaml`` runs a sweep with these stages (the kill test's subprocess)."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from core.stage import Stage


def _called(ctx) -> None:
    with open(os.environ["PT2I_TEST_CALLS"], "a") as f:
        f.write(f"{ctx.stage.name} {ctx.run_dir.name}\n")


def _synthetic(ctx):
    _called(ctx)
    (ctx.out_dir / "data.txt").write_text("images")
    return {"counts": {"images": 1}}


def _train(ctx):
    _called(ctx)
    assert (ctx.input_dir("synthetic") / "data.txt").read_text() == "images"
    if os.environ.get("PT2I_TEST_HANG") == ctx.run_dir.name:
        (ctx.out_dir / "started").write_text("1")
        time.sleep(3600)
    t = ctx.config.train
    (ctx.out_dir / "weights.txt").write_text(f"{t.p_error} {t.seed}")
    return {"identity": f"{t.p_error} {t.seed}"}


def _evaluate(ctx):
    _called(ctx)
    p_error, seed = (float(x) for x in (ctx.input_dir("train") / "weights.txt").read_text().split())
    return {"metrics": {"attribute_match": 1.0 - p_error + 0.01 * seed, "token_nll": 2.0 + p_error}}


STAGES = [
    Stage("synthetic", _synthetic, (), ("data.synthetic",)),
    Stage("train", _train, ("synthetic",), ("train",)),
    Stage("evaluate", _evaluate, ("train",), ("eval",)),
]


def calls(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.is_file() else []


if __name__ == "__main__":
    from pipeline.sweep import run_sweep
    from pipeline.sweep_config import load_sweep

    cfg, runs = load_sweep(sys.argv[1])
    run_sweep(cfg, runs, stages=STAGES, log=lambda m: print(m, flush=True))
