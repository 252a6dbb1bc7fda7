"""``pt2i generate RUN_DIR --prompt TEXT ...``: images for your own prompts from a finished run
(``evaluation.generate``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from core.config import ConfigError
from core.stage import StageError, read_manifest
from pipeline.cli_args import add_overrides


def add_parser(sub) -> None:
    p = sub.add_parser(
        "generate",
        help="images for your own prompts from a run's trained models (RUN_DIR/generate/NAME: PNGs, a captioned "
        "grid, the coarse-to-fine progression)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example: pt2i generate runs/tiny --prompt 'a small red circle at the top left' --copies 4 "
        "--set sample.temperature=0.8",
    )
    p.add_argument(
        "run_dir",
        help="a run directory whose train, tokenizer and text stages have finished, or the experiment YAML of the run "
        "(its run_dir, sampled with its sample section)",
    )
    p.add_argument("--prompt", action="append", default=[], metavar="TEXT", help="a prompt (repeatable)")
    p.add_argument("--prompts-file", default=None, metavar="FILE", help="more prompts, one per line")
    p.add_argument("--copies", type=int, default=1, metavar="N", help="images per prompt (default 1)")
    p.add_argument("--name", default=None, help="the folder RUN_DIR/generate/NAME (default: a hash of the inputs)")
    p.add_argument("--out", default=None, metavar="DIR", help="write into DIR instead of RUN_DIR/generate/")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when there is one)")
    p.add_argument(
        "--checkpoint",
        default=None,
        metavar="STEP",
        help="sample a training checkpoint's weights (500 or step_00000500, one the run kept) instead of the export",
    )
    add_overrides(p, "a sampler setting (sample.*, eval.use_ema), e.g. --set sample.steps=8 (repeatable)")


def model_inputs(cfg, run_dir: Path, log) -> dict:
    """The fingerprints of the stages the models come from; a stage that has not finished fails, and one the
    config would redo (stale) is named in the log, since its last output is what samples."""
    from evaluation.sample_folder import model_stages
    from pipeline.runner import registry, stage_state

    stages = registry()
    fps = {}
    for name in model_stages(cfg):
        manifest = read_manifest(run_dir / name)
        if not manifest:
            raise StageError(f"{run_dir / name} has no finished output: run `pt2i run CONFIG --stage {name}` first")
        state = stage_state(cfg, run_dir, stages[name])
        if state.state != "current":
            log(f"[generate] note: the {name} stage is {state.state} ({state.why}); sampling its last output")
        fps[name] = manifest.get("fingerprint")
    return fps


def check_device(device) -> None:
    """``--device``: cpu, or cuda / cuda:N that torch sees here."""
    if device is None or device == "cpu":
        return
    import re

    import torch

    m = re.fullmatch(r"cuda(?::(\d+))?", device)
    if m is None:
        raise ConfigError(f"--device {device}: give cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: torch sees no CUDA device on this machine")
    if m.group(1) is not None and int(m.group(1)) >= torch.cuda.device_count():
        raise ConfigError(f"--device {device}: torch sees {torch.cuda.device_count()} CUDA device(s)")


def run(args, config_of) -> int:
    """``config_of(run_dir, overrides)``: the run directory's last config (``pipeline.cli``)."""
    from evaluation.generate import check_overrides, generate, read_prompt_args

    if args.name is not None and args.out is not None:
        raise ConfigError("--name names a folder under RUN_DIR/generate/; --out gives the folder itself: give one")
    if args.name is not None and (not args.name or "/" in args.name or args.name in (".", "..")):
        raise ConfigError(f"--name {args.name!r}: a folder name, without '/'")
    check_overrides(args.overrides)
    check_device(args.device)
    prompts = read_prompt_args(args.prompt, args.prompts_file)
    if not Path(args.run_dir).exists():
        raise ConfigError(f"{args.run_dir}: no such run directory or experiment file")
    cfg, _ = config_of(args.run_dir, args.overrides)
    if not Path(cfg.run_dir).is_dir():
        raise ConfigError(f"{args.run_dir}: run_dir {cfg.run_dir} does not exist: run `pt2i run {args.run_dir}` first")
    inputs = model_inputs(cfg, Path(cfg.run_dir), print)
    res = generate(
        cfg,
        prompts,
        inputs,
        copies=args.copies,
        out=Path(args.out) if args.out else None,
        name=args.name,
        device=args.device,
        log=lambda m: print(m, flush=True),
        checkpoint=args.checkpoint,
    )
    done = res["images_done_now"]
    reused = res["images"] - done
    print(
        f"{res['images']} images in {res['out']}/images ({done} sampled now in {res['seconds']:.1f}s, {reused} reused)"
    )
    print(f"grid: {res['grid']}\nprogression: {res['progression_png']}")
    return 0
