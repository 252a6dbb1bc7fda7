"""``pt2i status DIR`` on a folder of run directories (a sweep's ``run_dir``, or a ``runs/`` folder): one line per
run, saying how many of its stages are current, which are stale or unfinished, what stopped the last run of
one (``pipeline.failures``) and the evaluate stage's headline."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from core.config import ConfigError
from core.stage import read_manifest
from pipeline.failures import describe, failure_of
from pipeline.runner import lock_holder, order_stages, stage_states
from pipeline.summary import headline


def run_folders(path: Path) -> list[Path]:
    """The run directories just below ``path`` (subfolders with a ``config.yaml``), when ``path`` is not a run
    directory itself (no ``config.yaml``, no stage folder); else []."""
    if (path / "config.yaml").is_file() or any((path / st.name).exists() for st in order_stages()):
        return []
    return sorted(p for p in path.iterdir() if p.is_dir() and (p / "config.yaml").is_file())


def run_line(run_dir: Path, load: Callable[[Path], Any]) -> str:
    """``NAME: 5/8 stages current; stale: sample; unfinished: train (failed TIME on HOST: ERROR)``, then the
    evaluate stage's headline when it is current and the run using the folder now, if any. ``load(run_dir)``:
    the run's config."""
    try:
        cfg = load(run_dir)
    except ConfigError as exc:
        return f"{run_dir.name}: {exc}"
    listed = stage_states(cfg, run_dir)
    states = {st.name: state.state for st, state, _ in listed}
    waiting = {st.name: first for st, _, first in listed if first is not None}
    enabled = [name for name, state in states.items() if state != "disabled"]
    parts = [f"{sum(states[n] == 'current' for n in enabled)}/{len(enabled)} stages current"]
    for first in dict.fromkeys(waiting.values()):
        names = [n for n, f in waiting.items() if f == first]
        parts.append(f"current until {first} is redone: {', '.join(names)}")
    for kind in ("stale", "unfinished", "missing"):
        names = []
        for name in (n for n in enabled if states[n] == kind):
            failed = failure_of(run_dir, name)
            names.append(f"{name} ({describe(failed)})" if failed else name)
        if names:
            parts.append(f"{kind}: {', '.join(names)}")
    if states.get("evaluate") == "current":  # the figures of the outputs there now
        parts.append(headline("evaluate", read_manifest(run_dir / "evaluate")))
    holder = lock_holder(run_dir)
    if holder is not None:  # its stage in progress shows as unfinished
        parts.append(f"a run is using it now (pid {holder.get('pid', '?')} on {holder.get('host', '?')})")
    return f"{run_dir.name}: " + "; ".join(parts)
