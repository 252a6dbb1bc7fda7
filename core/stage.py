"""The stage contract: what a stage module needs to declare a stage and read its inputs.

    from core.stage import StageContext, StageError, stage

    @stage("tokenize", inputs=("download", "tokenizer", "text"), sections=("data.tokenize",))
    def tokenize_stage(ctx: StageContext) -> dict:
        src = ctx.input_dir("download")     # an earlier stage's folder (it must have finished)
        out = ctx.out_dir                   # this stage's own folder under the run directory
        ...
        return {"counts": {...}, "metrics": {...}}   # merged into out/manifest.json

The runner (``pipeline.runner``) gives the stage its folder, writes ``manifest.json`` when it returns and
decides what is finished; stage modules import only this contract, never the runner.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from core.files import read_json

MANIFEST = "manifest.json"


def _always(cfg: Any) -> bool:
    return True


def _never(cfg: Any) -> bool:
    return False


@dataclass(frozen=True)
class Stage:
    name: str
    fn: Callable[[StageContext], dict | None]
    inputs: tuple[str, ...] = ()  # every stage it may read (this fixes the run order)
    # config sections whose values define the stage's output, or a function of the config naming them
    sections: tuple[str, ...] | Callable[[Any], Iterable[str]] = ()
    help: str = ""
    uses_ray: Callable[[Any], bool] = _never  # does it run on Ray with this config?
    needs: Optional[Callable[[Any], Iterable[str]]] = None  # the inputs it reads with a config (default: all)
    enabled: Callable[[Any], bool] = _always  # is it part of a run with this config?

    def sections_for(self, cfg: Any) -> tuple[str, ...]:
        """The config sections (dotted paths) whose values define this stage's output with ``cfg``."""
        return tuple(self.sections(cfg)) if callable(self.sections) else self.sections

    def inputs_for(self, cfg: Any) -> tuple[str, ...]:
        """The inputs this stage reads with ``cfg``; its lineage covers exactly these."""
        if self.needs is None:
            return self.inputs
        wanted = set(self.needs(cfg))
        return tuple(n for n in self.inputs if n in wanted)


_REGISTRY: dict[str, Stage] = {}


def stage(
    name: str,
    inputs: Iterable[str] = (),
    sections: Iterable[str] | Callable[[Any], Iterable[str]] = (),
    help: str = "",
    uses_ray: Callable[[Any], bool] = _never,
    needs: Optional[Callable[[Any], Iterable[str]]] = None,
    enabled: Callable[[Any], bool] = _always,
):
    """Register ``fn`` as the stage ``name`` reading the folders of ``inputs`` (with a config: those that
    ``needs(cfg)`` names), whose output is defined by the config ``sections`` (or those ``sections(cfg)``
    names: a setting the stage uses only with some configs); ``uses_ray(cfg)`` says whether it runs on Ray with
    that config (the runner then provides one Ray for all such stages); ``enabled(cfg)`` whether it is part of
    a run with that config."""

    def register(fn):
        doc = help or (fn.__doc__ or "").strip().split("\n")[0]
        parts = sections if callable(sections) else tuple(sections)
        _REGISTRY[name] = Stage(name, fn, tuple(inputs), parts, doc, uses_ray, needs, enabled)
        return fn

    return register


def registered() -> dict[str, Stage]:
    """The stages registered so far (in registration order)."""
    return dict(_REGISTRY)


class StageError(RuntimeError):
    """A stage cannot run (missing input, bad state); the message says what to do."""


@dataclass
class StageContext:
    config: Any
    run_dir: Path
    stage: Stage
    out_dir: Path
    log: Callable[[str], None] = print
    extras: dict = field(default_factory=dict)

    def input_dir(self, name: str) -> Path:
        """The folder of an earlier stage this stage reads with this config (it must have finished)."""
        if name not in self.stage.inputs_for(self.config):
            raise StageError(
                f"stage '{self.stage.name}' did not declare '{name}' as an input it reads with this config"
            )
        folder = self.run_dir / name
        if not isinstance(read_json(folder / MANIFEST), dict):
            raise StageError(
                f"stage '{self.stage.name}' needs stage '{name}' first: no manifest in {folder}; "
                f"run `pt2i run CONFIG --stage {name}`"
            )
        return folder

    def input_manifest(self, name: str) -> dict:
        return read_manifest(self.input_dir(name))


def read_manifest(folder: Path) -> dict:
    """A stage folder's manifest; {} when it is missing, empty or truncated (the stage is then unfinished)."""
    m = read_json(Path(folder) / MANIFEST, {})
    return m if isinstance(m, dict) else {}
