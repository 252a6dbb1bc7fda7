"""Stage registry and runner.

A stage is a function ``fn(ctx: StageContext) -> dict`` registered by name with the stages it reads.
The runner gives it its own folder under the run directory and, when it returns, writes
``manifest.json`` there (config hash, inputs and their manifest hashes, outputs, counts, timings).
A stage whose manifest matches the current config hash and inputs is finished and is skipped
unless forced. The manifest is written to a temporary name and renamed, so a half-finished
stage never looks finished.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import socket
import time
import uuid
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager as ContextManager
from pathlib import Path
from typing import Any, Optional

from core.config import config_hash, to_dict, to_yaml
from core.files import write_json_atomic, write_text_atomic
from core.stage import MANIFEST, Stage, StageContext, StageError, read_manifest, registered


def stage_hash(cfg: Any, st: Stage) -> str:
    """Hash of the config sections a stage depends on (the whole config when it names none)."""
    if not st.sections:
        return config_hash(cfg)
    parts = {}
    for dotted in st.sections:
        node = cfg
        for key in dotted.split("."):
            node = getattr(node, key)
        parts[dotted] = to_dict(node) if dataclasses.is_dataclass(node) else node
    return config_hash(parts)


def _inputs_fingerprint(run_dir: Path, st: Stage) -> dict:
    out = {}
    for name in st.inputs:
        m = read_manifest(run_dir / name)
        out[name] = m.get("fingerprint")
    return out


def is_finished(cfg: Any, run_dir: Path, st: Stage) -> bool:
    m = read_manifest(run_dir / st.name)
    return (
        bool(m) and m.get("config_hash") == stage_hash(cfg, st) and m.get("inputs") == _inputs_fingerprint(run_dir, st)
    )


def run_stage(cfg: Any, run_dir: Path, st: Stage, force: bool = False, log=print) -> dict:
    run_dir = Path(run_dir)
    out_dir = run_dir / st.name
    if not force and is_finished(cfg, run_dir, st):
        log(f"[{st.name}] finished already (manifest matches config and inputs); skipped. Use --force to redo.")
        return read_manifest(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / MANIFEST).unlink(missing_ok=True)
    ctx = StageContext(cfg, run_dir, st, out_dir, log)
    for name in st.inputs:
        ctx.input_dir(name)  # fail before any work when an input is missing
    write_text_atomic(out_dir / "config.yaml", to_yaml(cfg))  # the resolved config beside every output
    log(f"[{st.name}] running -> {out_dir}")
    t0 = time.time()
    result = st.fn(ctx) or {}
    seconds = time.time() - t0
    manifest = {
        "stage": st.name,
        "run_id": uuid.uuid4().hex,  # a redone stage always gets a new fingerprint: its readers become stale
        "config_hash": stage_hash(cfg, st),
        "inputs": _inputs_fingerprint(run_dir, st),
        "host": socket.gethostname(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(t0)),
        "seconds": round(seconds, 3),
        **result,
    }
    manifest["fingerprint"] = hashlib.sha256(json.dumps(manifest, sort_keys=True, default=str).encode()).hexdigest()[
        :16
    ]
    write_json_atomic(out_dir / MANIFEST, manifest)
    log(f"[{st.name}] done in {seconds:.1f}s")
    return manifest


def run_stages(
    cfg: Any,
    run_dir: Path,
    stages: list[Stage],
    force: bool = False,
    log=print,
    ray_session: Optional[Callable[[], ContextManager]] = None,
) -> list[dict]:
    """Run ``stages`` in order with one Ray for the whole run: ``ray_session()`` (default: connect to
    ``cluster.address`` or start an embedded Ray on 127.0.0.1) is entered before the first stage that
    will run on Ray and left after the last stage; stages that find Ray initialised reuse it. A run
    whose Ray stages are all finished already starts no Ray."""
    if ray_session is None:
        ray_session = functools.partial(_default_ray_session, cfg)
    manifests = []
    with contextlib.ExitStack() as stack:
        ray_up = False
        for st in stages:
            if not ray_up and st.uses_ray(cfg) and (force or not is_finished(cfg, run_dir, st)):
                stack.enter_context(ray_session())
                ray_up = True
            manifests.append(run_stage(cfg, run_dir, st, force=force, log=log))
    return manifests


def _default_ray_session(cfg: Any) -> ContextManager:
    from cluster.local_ray import ensure_ray

    cluster = getattr(cfg, "cluster", None)
    return ensure_ray(
        getattr(cluster, "address", None),
        num_cpus=getattr(cluster, "num_cpus", None),
        num_gpus=getattr(cluster, "num_gpus", None),
    )


def registry() -> dict[str, Stage]:
    """Every stage of the pipeline (the modules of ``pipeline.registry`` imported)."""
    from pipeline.registry import load_stage_modules

    load_stage_modules()
    return registered()


def order_stages(names: Iterable[str] | None = None) -> list[Stage]:
    """All registered stages in dependency order (or the named ones, in that order)."""
    reg = registry()
    if names:
        unknown = [n for n in names if n not in reg]
        if unknown:
            raise StageError(f"unknown stage(s) {', '.join(unknown)}; known: {', '.join(reg)}")
    ordered: list[Stage] = []
    seen: set[str] = set()

    def visit(name: str, chain: tuple = ()):
        if name in seen:
            return
        if name in chain:
            raise StageError(f"stage dependency cycle: {' -> '.join(chain + (name,))}")
        for dep in reg[name].inputs:
            if dep in reg:
                visit(dep, chain + (name,))
        seen.add(name)
        ordered.append(reg[name])

    for name in reg:
        visit(name)
    if names:
        wanted = set(names)
        return [s for s in ordered if s.name in wanted]
    return ordered
