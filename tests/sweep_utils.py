"""Three cheap stand-in stages for the sweep tests (the real ones take minutes): ``synthetic`` (section
data.synthetic) -> ``train`` (section train) -> ``evaluate`` (section eval), each appending one line to the
file named by $PT2I_TEST_CALLS; ``evaluate`` reports metrics that follow train.p_error and train.seed.
``train`` of the run directory named by $PT2I_TEST_HANG writes ``started`` (its pid) and waits to be killed.

``python -m tests.sweep_utils SWEEP.yaml [JOBS]`` runs a sweep with these stages (the kill tests' subprocess),
with JOBS > 1 in child processes ``python -m tests.sweep_utils run CONFIG --stage ...`` (``pt2i run``'s
stand-in); ``train`` records the cores its process may use in ``cores.txt``."""

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
        (ctx.out_dir / "started").write_text(str(os.getpid()))
        time.sleep(3600)
    t = ctx.config.train
    (ctx.out_dir / "cores.txt").write_text(" ".join(map(str, sorted(os.sched_getaffinity(0)))))
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


CHILD = [sys.executable, "-m", "tests.sweep_utils", "run"]


def main(argv: list[str]) -> None:
    from pipeline.cli import _exit_on_sigterm

    _exit_on_sigterm()
    if argv[0] == "run":  # CONFIG --stage NAME ...
        from pipeline.experiment import load_config
        from pipeline.runner import run_stages

        cfg = load_config(argv[1])
        run_stages(cfg, Path(cfg.run_dir), [s for s in STAGES if s.name in argv[3:]], log=lambda m: None)
        return
    from pipeline.sweep import LocalProcesses, core_groups, run_sweep
    from pipeline.sweep_config import load_sweep

    cfg, runs = load_sweep(argv[0])
    jobs = int(argv[1]) if len(argv) > 1 else 1
    runner = LocalProcesses(core_groups(jobs), argv=CHILD) if jobs > 1 else None
    run_sweep(cfg, runs, stages=STAGES, jobs=jobs, runner=runner, log=lambda m: print(m, flush=True))


if __name__ == "__main__":
    main(sys.argv[1:])
