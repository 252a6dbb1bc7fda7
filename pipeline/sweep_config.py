"""A sweep file: one base experiment, a list of variants (and/or a grid), seeds, what the table shows.

    base: ../tiny.yaml                 # the experiment every variant starts from (relative to this file)
    name: table5-p-error
    run_dir: runs/ablations/table5     # variants go to RUN_DIR/<variant>-s<seed>/, the table to RUN_DIR/
    store: runs/ablations/stages       # shared stage folders (default RUN_DIR/stages): sweeps may share one
    seeds: [0, 1]                      # each variant runs once per seed, written to every key of seed_keys
    seed_keys: [train.seed, sample.seed]   # (the default) seed settings only: last part seed or *_seed
    columns: [attribute_match, token_nll, fid]
    plot: attribute_match
    variants:
      - name: p_error 0
        set: {train.p_error: 0.0}      # dotted keys, as with pt2i run --set
        paper: {FID: 15.86}            # the paper's figures for this row (shown beside ours)
    grid: {train.stages: [4, 8]}       # and/or: one variant per value ("train.stages=4", ...)

``load_sweep(path)`` validates the file like an experiment (unknown keys, types, the file named) and
resolves every variant's experiment config (``pipeline.experiment.load_config`` with the variant's keys
as overrides), so a wrong variant key fails before anything runs, naming the sweep file and the variant.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from core.config import ConfigError, apply_overrides, from_dict, read_yaml

COLUMNS = {  # column -> (label, where it is read, direction, decimals)
    "attribute_match": ("attribute match", "evaluate", "higher", 3),
    "token_nll": ("held-out token NLL", "evaluate", "lower", 3),
    "fid": ("FID", "evaluate", "lower", 2),
    "fd_vq": ("FD in VQ features", "evaluate", "lower", 4),
    "clean_fid": ("clean-FID", "evaluate", "lower", 2),
    "clip_score": ("CLIP score", "evaluate", "higher", 3),
    "passes": ("sequential passes", "config", "lower", 0),
    "seconds_per_image": ("s / image (sample stage)", "sample", "lower", 4),
    "train_seconds": ("train s", "train", "lower", 0),
}


@dataclass
class Variant:
    name: str = field(metadata={"help": "the row's name in the table"})
    set: dict[str, Any] = field(default_factory=dict, metadata={"help": "dotted config keys and their values"})
    paper: dict[str, float] = field(default_factory=dict, metadata={"help": "the paper's figures for this row"})


@dataclass
class SweepConfig:
    base: str = field(metadata={"help": "the base experiment YAML (relative to the sweep file)"})
    name: str = "sweep"
    run_dir: str = field(default="runs/sweep", metadata={"help": "variants and the comparison table go here"})
    store: Optional[str] = field(
        default=None, metadata={"help": "folder of the shared stage outputs; default RUN_DIR/stages"}
    )
    seeds: list[int] = field(default_factory=lambda: [0], metadata={"help": "each variant runs once per seed"})
    seed_keys: list[str] = field(
        default_factory=lambda: ["train.seed", "sample.seed"],
        metadata={"help": "the seed settings a seed is written to (dotted keys whose last part is seed or *_seed)"},
    )
    variants: list[Variant] = field(default_factory=list)
    grid: dict[str, list[Any]] = field(
        default_factory=dict, metadata={"help": "key -> values: one more variant per value (and per key)"}
    )
    columns: list[str] = field(default_factory=lambda: ["attribute_match", "token_nll", "fid"])
    plot: Optional[str] = field(default=None, metadata={"help": "the column plotted per variant (default: the first)"})
    noise_from: Optional[str] = field(
        default=None,
        metadata={"help": "another sweep file whose seed spread the table quotes as the noise level"},
    )
    notes: list[str] = field(default_factory=list, metadata={"help": "lines printed under the table"})
    source: Optional[str] = field(default=None, metadata={"help": "set by the loader: the sweep file", "loader": True})

    def __post_init__(self) -> None:
        for key, names in (("columns", self.columns), ("plot", [self.plot] if self.plot else [])):
            unknown = [c for c in names if c not in COLUMNS]
            if unknown:
                raise ValueError(f"{key}: unknown column(s) {unknown}; known: {', '.join(COLUMNS)}")
        if not self.seeds:
            raise ValueError("seeds: give at least one seed")
        repeated = sorted({s for s in self.seeds if self.seeds.count(s) > 1})
        if repeated:
            raise ValueError(f"seeds: {repeated} given twice: each seed is one run (one folder) per variant")
        if len(self.seeds) > 1 and not self.seed_keys:
            raise ValueError(
                f"seed_keys: empty, so the {len(self.seeds)} seeds would be identical runs; list the seed settings "
                "each seed is written to, e.g. [train.seed, sample.seed]"
            )
        if not self.run_dir.strip():
            raise ValueError("run_dir: empty (the variants and the table would be written into the current folder)")
        if not self.variants and not any(self.grid.values()):
            raise ValueError("variants: none, and no grid values (no runs); give variants (name + set) or a grid")


@dataclass
class VariantRun:
    """One variant at one seed: its own run directory and resolved experiment config."""

    variant: Variant
    seed: int
    run_dir: Path
    config: Any  # ExperimentConfig

    @property
    def label(self) -> str:
        return f"{self.variant.name} (seed {self.seed})"


def slug(name: str) -> str:
    s = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    return s or "variant"


def _set_args(values: dict[str, Any]) -> list[str]:
    """``--set`` overrides for dotted keys (values as JSON, which YAML reads back as they were)."""
    return [f"{k}={json.dumps(v)}" for k, v in values.items()]


def all_variants(cfg: SweepConfig) -> list[Variant]:
    out = list(cfg.variants)
    for key, values in cfg.grid.items():
        out += [Variant(name=f"{key}={json.dumps(v)}", set={key: v}) for v in values]
    names = [slug(v.name) for v in out]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ConfigError(f"{cfg.source}: variants: names must differ (as folder names); repeated: {', '.join(dup)}")
    return out


def resolve_path(path: str, anchor: Path) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() else (anchor / p)


def is_seed_key(key: str) -> bool:
    """A seed setting of the experiment: its last part is ``seed`` or ends in ``_seed`` (``seed``, ``train.seed``,
    ``sample.seed``, ``tokenizer.seed``, ``data.synthetic.seed``, ``eval.prompt_seed``). Another key in
    ``seed_keys`` (``train.lr``) would be set to 0, 1, ... and the seed spread would be that key's."""
    last = key.rsplit(".", 1)[-1]
    return last == "seed" or last.endswith("_seed")


def _check_seeds(cfg: SweepConfig, path: Path) -> None:
    """Each of ``seed_keys`` a seed setting of the experiment, each of ``seeds`` a value they all accept: an error
    names the sweep file's own key (``seeds[1]``), not the base experiment that the value lands in."""
    from pipeline.experiment import ExperimentConfig

    def check(where: str, seed: int, keys: list[str]) -> None:
        from_dict(ExperimentConfig, apply_overrides({}, _set_args({k: seed for k in keys})), source=where)

    for i, key in enumerate(cfg.seed_keys):
        if not is_seed_key(key):
            raise ConfigError(
                f"{path}: seed_keys[{i}]: {key!r} is not a seed setting; seed_keys lists the keys each seed is written "
                "to, whose last part is seed or ends in _seed (e.g. train.seed, sample.seed)"
            )
        check(f"{path}: seed_keys[{i}]", 0, [key])  # 0: every seed setting's default
    for i, seed in enumerate(cfg.seeds):
        check(f"{path}: seeds[{i}]", seed, cfg.seed_keys)


def _with_set(base: Path, args: list[str], overrides: Optional[list[str]]) -> str:
    """`` with --set ...`` when the variant loads without the command line's overrides (they caused the error)."""
    from pipeline.experiment import load_config

    if not overrides:
        return ""
    try:
        load_config(base, [a for a in args if a not in overrides])
    except ConfigError:
        return ""
    return " with --set " + " ".join(overrides)


def _refuse_an_experiment_file(raw: dict, path: Path) -> None:
    """An experiment file given to ``pt2i sweep`` fails as that (and not on its first experiment key)."""
    from dataclasses import fields

    from pipeline.experiment import SWEEP_KEYS, ExperimentConfig

    if any(k in raw for k in SWEEP_KEYS):
        return
    sections = {f.name for f in fields(ExperimentConfig)} - {f.name for f in fields(SweepConfig)} - {"seed"}
    key = next((k for k in raw if k in sections), None)  # not seed: in a sweep file, a slip for seeds
    if key is not None:
        raise ConfigError(
            f"{path}: an experiment file (it has {key}: and no variants: or grid:), not a sweep: run it with "
            f"`pt2i run {path}`; a sweep file names it as its base: (configs/ablations/*.yaml)"
        )


def load_sweep(path: str | Path, overrides: Optional[list[str]] = None) -> tuple[SweepConfig, list[VariantRun]]:
    """The sweep file and every (variant, seed) with its resolved experiment config."""
    from pipeline.experiment import load_config

    path = Path(path)
    raw = read_yaml(path)
    _refuse_an_experiment_file(raw, path)
    cfg = from_dict(SweepConfig, raw, source=str(path))
    cfg.source = str(path.resolve())
    base_dir = path.resolve().parent
    base = resolve_path(cfg.base, base_dir)
    if not base.is_file():
        raise ConfigError(f"{path}: base: experiment file {base} not found")
    cfg.base = str(base)
    _check_seeds(cfg, path)
    if cfg.noise_from and not resolve_path(cfg.noise_from, base_dir).is_file():
        raise ConfigError(
            f"{path}: noise_from: sweep file {resolve_path(cfg.noise_from, base_dir)} not found (a path relative to "
            f"the folder of {path})"
        )
    cfg.run_dir = str(resolve_path(cfg.run_dir, Path.cwd()).resolve())
    cfg.store = str(resolve_path(cfg.store, Path.cwd()).resolve()) if cfg.store else str(Path(cfg.run_dir) / "stages")
    runs = []
    for variant in all_variants(cfg):
        taken = sorted(set(variant.set) & set(cfg.seed_keys))
        if taken:  # the seed would overwrite it: the "variants" would be one run under several names
            raise ConfigError(
                f"{path}: variant {variant.name!r} sets {', '.join(taken)}, which seed_keys writes each seed to; "
                "vary seeds with seeds, or leave the key out of seed_keys"
            )
        for seed in cfg.seeds:
            run_dir = Path(cfg.run_dir) / f"{slug(variant.name)}-s{seed}"
            sets = {**variant.set, **{k: seed for k in cfg.seed_keys}}
            args = _set_args(sets) + list(overrides or []) + [f"run_dir={run_dir}", f"name={cfg.name}-{run_dir.name}"]
            try:
                exp = load_config(base, args)
            except ConfigError as exc:
                raise ConfigError(
                    f"{path}: variant {variant.name!r}{_with_set(base, args, overrides)}: {exc}"
                ) from None
            runs.append(VariantRun(variant, seed, run_dir, exp))
    return cfg, runs
