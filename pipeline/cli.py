"""``pt2i``: the command line of the pipeline."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from collections.abc import Callable
from pathlib import Path

from core.config import ConfigError, to_yaml
from evaluation.humaneval.cli import add_parser as add_humaneval_parser
from evaluation.humaneval.cli import run as cmd_humaneval
from pipeline import generate_cli
from pipeline.cli_args import add_overrides


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="experiment YAML, e.g. configs/tiny.yaml")
    add_overrides(p)


def _add_run_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "config",
        help="experiment YAML, e.g. configs/tiny.yaml; or a run directory, to run again with its last run's "
        "config (a resume after a failure or Ctrl-C; --set still applies)",
    )
    add_overrides(p)


def _add_stage_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--stage",
        nargs="+",
        action="extend",
        default=[],
        metavar="STAGE",
        help="run only these stages, in pipeline order (--stage tokenize train, or repeated)",
    )
    p.add_argument("--from", dest="from_stage", default=None, help="run this stage and every later one")
    p.add_argument(
        "--force",
        action="store_true",
        help="redo the stages from an empty folder even when they are current (the old output is deleted "
        "once the new one is complete)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pt2i", description="progressive-t2i: train and evaluate the Progressive Denoising Model."
    )
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="run the pipeline's stages (all, or those named)")
    _add_run_config_args(p)
    _add_stage_args(p)

    p = sub.add_parser("submit", help="run the pipeline (or --stage S ...) as a Ray job on a cluster")
    _add_run_config_args(p)
    p.add_argument("--address", required=True, help="the cluster's job server, e.g. http://HEAD:8265")
    p.add_argument(
        "--connect-timeout",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="give up when the job server has not answered within this many seconds (default 60)",
    )
    _add_stage_args(p)

    p = sub.add_parser(
        "launch-command",
        help="print the train stage's launch: the DeepSpeed hostfile and command, or the srun command (launcher slurm)",
    )
    _add_config_args(p)

    p = sub.add_parser("config", help="print the resolved config (bases, presets and --set overrides applied)")
    _add_config_args(p)

    p = sub.add_parser(
        "status",
        help="each stage's state (current, stale and why, unfinished, missing), timings and counts: against a "
        "config (CONFIG [--set ...]), or a run directory's last config",
    )
    p.add_argument("config", help="experiment YAML, or a run directory")
    add_overrides(p)

    p = sub.add_parser(
        "sweep",
        help="run a base experiment's variants (and seeds) sharing the stages they have in common, then write "
        "one comparison table (RUN_DIR/report.md, report.json, plot.png)",
    )
    p.add_argument("sweep", help="sweep YAML, e.g. configs/ablations/table3-orders.yaml")
    add_overrides(p, "override for every variant")
    p.add_argument("--address", default=None, help="a Ray job server (http://HEAD:8265): the runs as concurrent jobs")
    p.add_argument("--max-concurrent", type=int, default=4, help="with --address: runs at once (default 4)")
    p.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="without --address: runs at once on this machine, each a child process pinned to its share of the "
        "cores (default 1: one after another in this process)",
    )
    p.add_argument("--plan", action="store_true", help="print the runs and the stage folders they share; run nothing")

    generate_cli.add_parser(sub)
    sub.add_parser("stages", help="list the registered stages and their inputs")
    add_humaneval_parser(sub)
    return parser


def _named_stages(stage: list[str] | None, from_stage: str | None = None) -> list:
    """The stages ``--stage`` names (all when none), or those from ``--from`` on; an unknown name is a usage
    error (exit code 2) listing the stages in pipeline order."""
    from pipeline.runner import order_stages

    every = order_stages()
    names = [s.name for s in every]
    if stage and from_stage:
        raise ConfigError("--stage and --from: give one (--stage S runs S; --from S runs S and every stage after it)")
    for flag, given in (("--stage", stage or []), ("--from", [from_stage] if from_stage else [])):
        unknown = [n for n in given if n not in names]
        if unknown:
            raise ConfigError(f"{flag}: unknown stage {', '.join(map(repr, unknown))}; known: {', '.join(names)}")
    if from_stage:
        return every[names.index(from_stage) :]
    return order_stages(stage or None)


def cmd_run(args) -> int:
    from pipeline.experiment import read_config_arg
    from pipeline.runner import run_stages
    from pipeline.summary import format_table

    cfg = _run_config(args, read_config_arg, "run")
    stages = _named_stages(args.stage, args.from_stage)
    run_dir = Path(cfg.run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a read-only or missing mount, no permission
        raise ConfigError(f"{cfg.source}: run_dir: cannot create {run_dir} ({exc.strerror or exc})") from None
    rows: list = []
    try:
        run_stages(cfg, run_dir, stages, force=args.force, rows=rows)
    finally:
        if rows:
            print("\n" + format_table(rows), flush=True)
    print(f"run directory: {run_dir}")
    report = run_dir / "evaluate" / "report.md"
    if report.is_file():
        print(f"report: {report}")
    if (run_dir / "train" / "export" / "model.safetensors").is_file():
        print(f"your own prompts: pt2i generate {run_dir} --prompt {shlex.quote(_example_prompt(run_dir))}")
    return 0


def _example_prompt(run_dir: Path) -> str:
    """The sample stage's first prompt, else a synthetic-style one."""
    from evaluation.sample_files import PROMPTS, read_prompts

    recs = read_prompts(run_dir / "sample") if (run_dir / "sample" / PROMPTS).is_file() else []
    return str(recs[0]["prompt"]) if recs else "a small red circle at the top left"


def cmd_submit(args) -> int:
    from cluster.submit import SubmitError, submit
    from pipeline.experiment import load_config, submitted_yaml

    cfg = _run_config(args, load_config, "submit")
    _named_stages(args.stage, args.from_stage)  # unknown stage names fail here, before submitting
    if args.connect_timeout <= 0:
        raise ConfigError(f"--connect-timeout must be > 0, got {args.connect_timeout:g}")
    try:
        return submit(
            submitted_yaml(cfg),
            cfg.run_dir,
            args.address,
            args.stage,
            args.from_stage,
            args.force,
            connect_timeout_s=args.connect_timeout,
        )
    except SubmitError as exc:
        print(f"submit error: {exc}", file=sys.stderr)
        return 2


def _run_config(args, read: Callable, command: str):
    """``args.config`` read with ``read(path, overrides)``, or, when it names a run directory, that directory's last
    run's config (``_config_of``; ``--set`` on top): ``pt2i run|submit RUN_DIR`` resumes a run."""
    if args.config.startswith("env:") or not Path(args.config).is_dir():
        return read(args.config, args.overrides)
    cfg, used = _config_of(args.config, args.overrides)
    print(f"[{command}] {args.config} with the config of its last run ({used})", flush=True)
    return cfg


def _config_of(arg: str, overrides: list[str]):
    """An experiment YAML, or a run directory (the ``config.yaml`` of its last run, else its most recently
    written stage ``config.yaml``)."""
    from pipeline.experiment import load_config

    path = Path(arg)
    if not path.exists():
        raise ConfigError(f"{path}: no such config file or run directory")
    if not path.is_dir():
        return load_config(path, overrides), None
    written = sorted(path.glob("*/config.yaml"), key=lambda p: p.stat().st_mtime)
    if (path / "config.yaml").is_file():
        written.append(path / "config.yaml")
    if not written:
        raise ConfigError(f"{path}: no stage has run in this directory (no */config.yaml)")
    here = [f"run_dir={path.resolve()}"]
    try:
        cfg = load_config(written[-1], overrides + here)
    except ConfigError as exc:
        if overrides:
            try:
                load_config(written[-1], here)
            except ConfigError:
                pass
            else:
                raise  # the config loads: the --set overrides are wrong
        # written by another version of the project, or edited by hand
        raise ConfigError(
            f"{exc}; this run directory's last config does not load as it is: give the experiment YAML instead "
            f"(pt2i {{status,run}} CONFIG --set run_dir={path})"
        ) from None
    return cfg, written[-1]


def cmd_status(args) -> int:
    import time

    from core.environment import changes as env_changes
    from core.environment import environment
    from core.stage import read_manifest
    from pipeline.failures import describe as describe_failure
    from pipeline.failures import failure_of
    from pipeline.runner import lock_holder, stage_states
    from pipeline.status_runs import run_folders, run_line
    from training.progress import training_progress
    from training.rank_environments import differences_text

    runs = run_folders(Path(args.config)) if Path(args.config).is_dir() else []
    if runs:  # a sweep's run_dir, or a folder of runs: a line each
        print(f"{len(runs)} run directories in {args.config} (pt2i status RUN_DIR for one of them)")
        for run in runs:
            print(run_line(run, lambda rd: _config_of(str(rd), args.overrides)[0]))
        return 0
    cfg, used = _config_of(args.config, args.overrides)
    run_dir = Path(cfg.run_dir)
    now = environment()
    print(f"run directory {run_dir}" + (f" (config: {used})" if used else f" (config: {args.config})"))
    holder = lock_holder(run_dir)
    if holder is not None:  # else an unfinished stage is one a run stopped inside
        print(
            f"a run is using it now: pid {holder.get('pid', '?')} on {holder.get('host', '?')}, started "
            f"{holder.get('started', '?')} (its stage in progress shows as unfinished)"
        )
    for st, state, first in stage_states(cfg, run_dir):
        m = read_manifest(run_dir / st.name)
        timing = f"{m.get('seconds', 0):8.1f}s" if m else " " * 9
        counts = json.dumps(m.get("counts", {}), sort_keys=True) if m else ""
        why = f"  ({state.why})" if state.why else ""
        if first is not None:  # current now; the run decides again once its input is redone
            why = (
                f"  (until {first} is redone: a run redoes {first} first, then this stage if {first}'s output changes)"
            )
        print(f"{st.name:12s} {state.state:10s} {timing}  {counts}{why}")
        if st.name == "train" and state.state == "unfinished":  # a run in progress, or one that stopped
            where = training_progress(run_dir / "train", cfg.train.steps, cfg.train.batch_size, time.time())
            if where:
                print(f"{'':12s} {where}")
        failed = failure_of(run_dir, st.name) if state.state != "current" else None
        if failed:  # the last run stopped in it, and it has not completed since
            print(f"{'':12s} {describe_failure(failed)}")
        moved = env_changes(m.get("environment"), now) if m else []
        if moved:  # recorded, never compared: a figure that moved between environments is told apart here
            print(f"{'':12s} made with another environment: {'; '.join(moved)}")
        spread = differences_text(m.get("trainer_ranks", [])) if m else ""
        if spread:  # a multi-node train stage whose ranks did not all run rank 0's environment
            print(f"{'':12s} trained on ranks that differ from rank 0: {spread}")
    from evaluation.generate import describe_folders

    for line in describe_folders(run_dir):  # pt2i generate's folders
        print(f"{'generate':12s} {line}")
    return 0


def cmd_sweep(args) -> int:
    from pipeline.runner import order_stages
    from pipeline.sweep import make_plan, run_sweep
    from pipeline.sweep_config import load_sweep

    if args.jobs < 1 or args.max_concurrent < 1:
        raise ConfigError(f"--jobs and --max-concurrent must be >= 1, got {args.jobs} and {args.max_concurrent}")
    if args.address is not None and args.jobs != 1:
        raise ConfigError(
            "--jobs runs the variants on this machine; with --address they run as Ray jobs: "
            "set how many at once with --max-concurrent"
        )
    cfg, runs = load_sweep(args.sweep, args.overrides)
    if args.plan:
        for r in runs:
            print(f"{r.run_dir}  {r.label}")
        for line in make_plan(runs, order_stages()).describe():
            print(line)
        return 0
    report = run_sweep(cfg, runs, address=args.address, max_concurrent=args.max_concurrent, jobs=args.jobs)
    print(f"table: {report['paths']['report.md']}")
    return 0


def cmd_launch_command(args) -> int:
    from cluster import deepspeed_launch, slurm_launch
    from pipeline.experiment import load_config

    cfg = load_config(args.config, args.overrides)
    work = Path(cfg.run_dir) / "train"
    launcher = slurm_launch if cfg.cluster.launcher == "slurm" else deepspeed_launch
    launcher.print_plan(cfg.cluster, work / "job.json", work)
    return 0


def cmd_generate(args) -> int:
    return generate_cli.run(args, _config_of)


def cmd_stages(args) -> int:
    from pipeline.runner import order_stages

    for st in order_stages():
        deps = ", ".join(st.inputs) or "-"
        print(f"{st.name:12s} reads: {deps:28s} {st.help}")
    return 0


def _exit_on_sigterm() -> None:
    """SIGTERM ends pt2i like Ctrl-C: cleanups run (the launcher and its ranks are stopped, the run lock and
    Ray released)."""
    import signal
    import threading

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(143))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _exit_on_sigterm()
    if args.debug:
        return _dispatch(args)
    try:
        return _dispatch(args)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001  (one line for people; --debug shows the traceback)
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"error ({type(exc).__name__}): {msg}\n(pt2i --debug ... shows the traceback)", file=sys.stderr)
        return 1


def cmd_config(args) -> int:
    from pipeline.experiment import load_config

    print(to_yaml(load_config(args.config, args.overrides)), end="")
    return 0


COMMANDS = {
    "run": cmd_run,
    "submit": cmd_submit,
    "config": cmd_config,
    "status": cmd_status,
    "stages": cmd_stages,
    "sweep": cmd_sweep,
    "launch-command": cmd_launch_command,
    "humaneval": cmd_humaneval,
    "generate": cmd_generate,
}


def _dispatch(args) -> int:
    return COMMANDS[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
