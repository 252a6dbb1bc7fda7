"""``pt2i``: the command line of the pipeline."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from core.config import ConfigError, to_yaml


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="experiment YAML, e.g. configs/tiny.yaml")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set train.lr=3e-4 (repeatable)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pt2i", description="progressive-t2i: train and evaluate the Progressive Denoising Model."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="run the pipeline's stages (all, or those named)")
    _add_config_args(p)
    p.add_argument("--stage", action="append", default=[], help="run only this stage (repeatable)")
    p.add_argument("--from", dest="from_stage", default=None, help="run this stage and every later one")
    p.add_argument("--force", action="store_true", help="redo stages even when their manifest says finished")

    p = sub.add_parser("submit", help="run the pipeline (or --stage S ...) as a Ray job on a cluster")
    _add_config_args(p)
    p.add_argument("--address", required=True, help="the cluster's job server, e.g. http://HEAD:8265")
    p.add_argument(
        "--connect-timeout",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="give up when the job server has not answered within this many seconds (default 60)",
    )
    p.add_argument("--stage", action="append", default=[], help="submit only this stage (repeatable)")
    p.add_argument("--from", dest="from_stage", default=None)
    p.add_argument("--force", action="store_true")

    p = sub.add_parser("launch-command", help="print the DeepSpeed hostfile and launch command of the train stage")
    _add_config_args(p)

    p = sub.add_parser("config", help="print the resolved config (after --set overrides and presets)")
    _add_config_args(p)

    p = sub.add_parser("status", help="show each stage's state, counts and timings in a run directory")
    p.add_argument("run_dir")

    sub.add_parser("stages", help="list the registered stages and their inputs")
    return parser


def cmd_run(args) -> int:
    from pipeline.experiment import read_config_arg
    from pipeline.runner import order_stages, run_stages

    cfg = read_config_arg(args.config, args.overrides)
    stages = order_stages(args.stage or None)
    if args.from_stage:
        names = [s.name for s in order_stages()]
        if args.from_stage not in names:
            raise ConfigError(f"--from: unknown stage {args.from_stage!r}; known: {', '.join(names)}")
        stages = order_stages()[names.index(args.from_stage) :]
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    run_stages(cfg, run_dir, stages, force=args.force)
    print(f"run directory: {run_dir}")
    report = run_dir / "evaluate" / "report.md"
    if report.is_file():
        print(f"report: {report}")
    return 0


def cmd_submit(args) -> int:
    from cluster.submit import SubmitError, submit
    from pipeline.experiment import load_config, submitted_yaml
    from pipeline.runner import order_stages

    cfg = load_config(args.config, args.overrides)
    order_stages(args.stage or None)  # unknown stage names fail here, before submitting
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


def cmd_status(args) -> int:
    from core.stage import MANIFEST, read_manifest
    from pipeline.runner import order_stages

    run_dir = Path(args.run_dir)
    for st in order_stages():
        m = read_manifest(run_dir / st.name)
        if m:
            counts = json.dumps(m.get("counts", {}), sort_keys=True)
            print(f"{st.name:12s} finished  {m.get('seconds', 0):8.1f}s  {counts}")
        elif (run_dir / st.name).exists():
            print(f"{st.name:12s} started   (no {MANIFEST}: unfinished or failed)")
        else:
            print(f"{st.name:12s} -")
    return 0


def cmd_launch_command(args) -> int:
    from cluster.deepspeed_launch import print_plan
    from pipeline.experiment import load_config

    cfg = load_config(args.config, args.overrides)
    work = Path(cfg.run_dir) / "train"
    print_plan(cfg.cluster, work / "job.json", work)
    return 0


def cmd_stages(args) -> int:
    from pipeline.runner import order_stages

    for st in order_stages():
        deps = ", ".join(st.inputs) or "-"
        print(f"{st.name:12s} reads: {deps:28s} {st.help}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "config":
            from pipeline.experiment import load_config

            print(to_yaml(load_config(args.config, args.overrides)), end="")
            return 0
        return {
            "run": cmd_run,
            "submit": cmd_submit,
            "status": cmd_status,
            "stages": cmd_stages,
            "launch-command": cmd_launch_command,
        }[args.command](args)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
