"""``base: OTHER.yaml``: an experiment YAML that extends another and states only its differences.

The base path is relative to the folder of the file that names it; a base may name its own base.
The files are read into layers, the most basic first, and deep-merged: a mapping in a later layer
changes only the keys it names, anything else (a value, a list) replaces the earlier one whole.
Each layer keeps its file name, so an error can name the file that set the wrong key.
"""

from __future__ import annotations

import copy
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from core.config import ConfigError, read_yaml

BASE_KEY = "base"


@dataclass
class Layers:
    """The files of one config, the most basic first; ``layers[i]`` is ``(file name, raw mapping)``."""

    layers: list[tuple[str, dict]]

    def merged(self) -> dict:
        out: dict = {}
        for _, raw in self.layers:
            out = deep_merge(out, raw)
        return copy.deepcopy(out)

    def source_of(self, dotted: str) -> str:
        """The file of the last layer that sets ``dotted`` (``a.b``, ``a.b[2]``), else of the top one."""
        return self.set_by(dotted) or self.layers[-1][0]

    def set_by(self, dotted: str) -> Optional[str]:
        """The file of the last layer that sets ``dotted`` (``a.b``, ``a.b[2]``; ``""``: the top one), or None."""
        keys = [k for k in re.sub(r"\[\d+\]", "", dotted).split(".") if k]
        for name, raw in reversed(self.layers):
            node: Any = raw
            for key in keys:
                if not isinstance(node, dict) or key not in node:
                    break
                node = node[key]
            else:
                return name
        return None


def deep_merge(base: dict, child: dict) -> dict:
    """A new mapping: ``child`` over ``base``, mappings merged key by key, other values replaced."""
    out = dict(base)
    for key, value in child.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def read_layers(path: str | Path) -> Layers:
    """Read ``path`` and the chain of files its ``base:`` keys name (each without its ``base`` key)."""
    chain: list[tuple[str, dict]] = []
    seen: list[Path] = []
    name = str(path)
    while True:
        raw = read_yaml(name)
        seen.append(Path(name).resolve())
        base = raw.pop(BASE_KEY, None)
        chain.append((name, raw))
        if base is None:
            return Layers(chain[::-1])
        if not isinstance(base, str) or not base.strip():
            raise ConfigError(f"{name}: base: expected the name of another YAML file, e.g. base: coco-paper.yaml")
        parent = os.path.normpath(Path(name).parent / base)
        if Path(parent).resolve() in seen:
            cycle = " -> ".join([n for n, _ in chain] + [parent])
            raise ConfigError(f"{name}: base: {base}: the bases form a cycle ({cycle}); remove one base key")
        if not Path(parent).is_file():
            raise ConfigError(
                f"{name}: base: {parent}: file not found (a base path is relative to the folder of {name})"
            )
        name = parent
