"""One experiment = one YAML file = one :class:`ExperimentConfig`.

Each section belongs to one component and is defined next to it; a component receives
only its own section. ``model.preset`` names a model size from ``training.model.config`` whose
values the section's other keys override. ``base: OTHER.yaml`` makes a file extend another
experiment file with only its differences (``core.config_base``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from cluster.config import ClusterConfig
from core.config import ConfigError, apply_overrides, from_dict, to_yaml
from core.config_base import Layers, read_layers
from evaluation.config import EvalConfig
from tokenization.data_config import DataConfig
from tokenization.text import TextEncoderConfig
from tokenization.vqgan.config import TokenizerConfig
from training.model.config import ModelConfig
from training.model.sampling.config import SampleConfig
from training.superres_config import SuperResConfig
from training.train_config import TrainConfig


@dataclass
class ExperimentConfig:
    name: str = "experiment"
    run_dir: str = field(
        default="runs/experiment",
        metadata={
            "help": "every stage writes under RUN_DIR/<stage>; relative paths resolve against the directory "
            "`pt2i` was started from and are made absolute at load"
        },
    )
    seed: int = field(default=0, metadata={"min": 0})
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    text_encoder: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    sr: SuperResConfig = field(
        default_factory=SuperResConfig,
        metadata={"help": "CogView2's hierarchical super-resolution after the generator (off by default)"},
    )
    source: Optional[str] = field(default=None, metadata={"help": "set by the loader: the YAML file", "loader": True})


def _apply_model_preset(raw: dict, source: str) -> None:
    from training.model.config import PRESETS

    model = raw.get("model")
    if not isinstance(model, dict) or not model.get("preset"):
        return
    name = model["preset"]
    if not isinstance(name, str):  # a list or mapping would fail the lookup below with a TypeError
        raise ConfigError(f"{source}: model.preset: expected a preset name, got {name!r}; known: {', '.join(PRESETS)}")
    if name not in PRESETS:
        raise ConfigError(f"{source}: model.preset: unknown preset {name!r}; known: {', '.join(PRESETS)}")
    raw["model"] = {**PRESETS[name], **model}


def load_config(path: str | Path, overrides: list[str] | None = None, base_dir: Path | None = None) -> ExperimentConfig:
    """Read (with the chain of ``base:`` files it extends), override, validate. Every error names the
    dotted key path and the file that set that key (an override counts as set by ``path``)."""
    source = str(path)
    layers = read_layers(path)
    _refuse_other_kinds(layers, source)
    raw = layers.merged()
    apply_overrides(raw, overrides or [], source=f"{source} (--set)")
    layers = Layers(layers.layers + [(source, apply_overrides({}, overrides or []))])
    _apply_model_preset(raw, layers.source_of("model.preset"))
    cfg = from_dict(ExperimentConfig, raw, source=layers.source_of)
    cfg.source = str(Path(path).resolve())
    if not str(cfg.run_dir).strip():
        raise ConfigError(
            f"{layers.source_of('run_dir')}: run_dir: empty (the run would write into the current folder)"
        )
    run_dir = Path(cfg.run_dir)
    if not run_dir.is_absolute():
        run_dir = (base_dir or Path.cwd()) / run_dir
    cfg.run_dir = str(run_dir.resolve())
    blocking = next((p for p in (run_dir, *run_dir.parents) if p.exists()), None)
    if blocking is not None and not blocking.is_dir():
        raise ConfigError(f"{layers.source_of('run_dir')}: run_dir: {blocking} is a file, not a folder")
    check_consistency(cfg, layers)
    return cfg


SWEEP_KEYS = ("variants", "grid")  # what makes a YAML file a sweep (pipeline.sweep_config), not an experiment


def _refuse_other_kinds(layers: Layers, source: str) -> None:
    """A sweep file given as an experiment, or named as an experiment's ``base:``, fails as that (and not on its
    first sweep key, as an unknown key); so does a model preset file (``configs/models/``)."""
    for name, raw in layers.layers:
        if "preset" in raw and "model" not in raw:  # the model section's keys at the top
            raise ConfigError(
                f"{name}: a model preset (the model section's keys), not an experiment: an experiment uses it as "
                f"model: {{preset: {raw['preset']}}}"
            )
        key = next((k for k in SWEEP_KEYS if k in raw), None)
        if key is None:
            continue
        if name == source:
            raise ConfigError(
                f"{name}: a sweep file (it has {key}:), not an experiment: run its variants with `pt2i sweep {name}`"
            )
        raise ConfigError(f"{name}: a sweep file (it has {key}:): an experiment's base: names another experiment")


def check_consistency(cfg: ExperimentConfig, source: str | Layers) -> None:
    """Checks that span sections (a component only sees its own): ``pipeline.checks``; an error names ``source``,
    or the file of ``source``'s layers that set the key."""
    from pipeline.checks import check_experiment

    check_experiment(cfg, source)


def read_config_arg(arg: str, overrides: list[str]):
    """``pt2i run`` accepts ``env:NAME`` (YAML text in an environment variable) besides a file path."""
    import os
    import tempfile

    if not arg.startswith("env:"):
        return load_config(arg, overrides)
    name = arg[4:]
    text = os.environ.get(name)
    if text is None:
        raise ConfigError(f"{arg}: environment variable {name} is not set")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "submitted-config.yaml"
        path.write_text(text)
        cfg = load_config(path, overrides)
    cfg.source = f"env:{name}"
    return cfg


PATH_KEYWORDS = {"auto", "download", "synthetic"}  # eval.retrieval_images' names of the run's own image sets


def absolute_paths(cfg: Any, base: Path) -> Any:
    """A copy of ``cfg`` whose path settings relative to ``base`` are absolute: those it reads (fields marked
    ``metadata={"path": True}``) when they name an existing file or folder, those it writes (``"output"``)
    always. URLs, absolute paths and names that exist nowhere here (a path on the cluster only, a keyword such
    as ``auto``) are left as they are."""
    import copy
    import dataclasses

    def absolute(value: str, output: bool) -> str:
        if "://" in value or Path(value).is_absolute() or value.startswith("~") or value in PATH_KEYWORDS:
            return value
        path = base / value
        return str(path.resolve()) if output or path.exists() else value

    def walk(obj: Any) -> None:
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if f.metadata.get("path") and isinstance(value, str) and value:
                setattr(obj, f.name, absolute(value, f.metadata["path"] == "output"))
            for item in value if isinstance(value, list) else [value]:
                if dataclasses.is_dataclass(item):
                    walk(item)

    out = copy.deepcopy(cfg)
    walk(out)
    return out


def submitted_yaml(cfg: ExperimentConfig, base: Path | None = None) -> str:
    """The resolved config a Ray job runs (``pt2i submit``): ``run_dir`` and the path settings that name files
    here, relative to ``base`` (the current directory), absolute (the job runs in another directory: its copy of
    the packages), and ``cluster.address: auto`` so that its stages join the cluster the job runs on instead of
    starting a Ray of their own."""
    from dataclasses import replace

    cfg = absolute_paths(cfg, base or Path.cwd())
    return to_yaml(replace(cfg, cluster=replace(cfg.cluster, address="auto")))
