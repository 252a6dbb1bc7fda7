"""The stage runner: which stages are current, running the others, one Ray per run, one run per folder.

A stage is a function ``fn(ctx: StageContext) -> dict`` registered by name with the stages it reads
(``core.stage``). The runner gives it its own folder under the run directory and, when it returns, writes
``manifest.json`` there: the config sections it depends on (values and hash), the fingerprints of the inputs
it read, outputs, counts, timings, and its own fingerprint. A stage is

  current     its manifest matches the config sections and the inputs' current fingerprints: skipped;
  stale       a section value or an input changed (the log and ``pt2i status`` say which): it runs again,
              and reuses inside its folder only the outputs whose own lineage still matches;
  unfinished  its folder has no (readable) manifest: it runs, resuming what it finished;
  missing     never run.

A stage that returns an ``identity`` (a hash of what it produced: weights, shard contents) gets a fingerprint
of that identity alone, so redoing it with the same result (``--force``, or a setting that changes no result)
keeps its readers current, and the log says so; otherwise every run of it gets a new fingerprint. ``--force``
moves the stage's folder aside, runs it into an empty one, and deletes the old folder once the new output is
complete. The manifest is written last (fsynced, renamed), so a half-finished stage never looks finished. A run
directory is locked while a run uses it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import functools
import hashlib
import json
import os
import shutil
import socket
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager as ContextManager
from pathlib import Path
from typing import Any, Optional

from core.config import config_hash, identity_dict, to_yaml
from core.environment import environment
from core.files import read_json, remove_debris, write_json_atomic, write_text_atomic
from core.stage import MANIFEST, Stage, StageContext, StageError, read_manifest, registered
from pipeline.failures import clear_failure, failure_of, record_failure
from pipeline.failures import describe as describe_failure
from pipeline.summary import StageRow, headline

LOCK = ".pt2i.lock"
CONFIG = "config.yaml"  # RUN_DIR/config.yaml: the config of the directory's last run


def stage_sections(cfg: Any, st: Stage) -> dict:
    """The values of the config sections a stage depends on (the whole config when it names none)."""
    if not st.sections_for(cfg):
        return identity_dict(cfg)
    parts = {}
    for dotted in st.sections_for(cfg):
        node = cfg
        for key in dotted.split("."):
            node = getattr(node, key)
        parts[dotted] = identity_dict(node)
    return parts


def stage_hash(cfg: Any, st: Stage) -> str:
    """Hash of the config sections a stage depends on (the whole config when it names none)."""
    return config_hash(cfg) if not st.sections_for(cfg) else config_hash(stage_sections(cfg, st))


def _inputs_fingerprint(cfg: Any, run_dir: Path, st: Stage) -> dict:
    return {name: read_manifest(run_dir / name).get("fingerprint") for name in st.inputs_for(cfg)}


def _flat(d: Any, prefix: str = "") -> dict:
    if not isinstance(d, dict):
        return {prefix: d}
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def config_changes(old: dict, new: dict, limit: int = 4) -> str:
    """``a.b: 1 -> 2, ...`` for the values that differ between two section dicts."""
    a, b = _flat(old), _flat(new)
    diff = [
        f"{k}: {a.get(k, '(unset)')!r} -> {b.get(k, '(unset)')!r}"
        for k in sorted(set(a) | set(b))
        if a.get(k, "(unset)") != b.get(k, "(unset)")
    ]
    return ", ".join(diff[:limit]) + (f" (+{len(diff) - limit} more)" if len(diff) > limit else "")


@dataclasses.dataclass
class StageState:
    state: str  # current | stale | unfinished | missing | disabled
    why: str = ""


def stage_state(cfg: Any, run_dir: Path, st: Stage) -> StageState:
    """Where a stage stands in ``run_dir`` for ``cfg`` (see the module docstring)."""
    if not st.enabled(cfg):
        return StageState("disabled", "not part of a run with this config")
    folder = Path(run_dir) / st.name
    m = read_manifest(folder)
    if not m:
        return StageState("unfinished" if folder.exists() else "missing")
    why = []
    if m.get("config_hash") != stage_hash(cfg, st):
        changed = config_changes(m["config"], stage_sections(cfg, st)) if m.get("config") else ""
        why.append(f"config changed ({changed})" if changed else "config changed")
    recorded = m.get("inputs") or {}
    for name, now in _inputs_fingerprint(cfg, run_dir, st).items():
        if now is None:
            why.append(f"input {name} is not finished")
        elif recorded.get(name) != now:
            why.append(f"input {name} was redone" if name in recorded else f"now reads {name}")
    why += [f"no longer reads {n}" for n in recorded if n not in st.inputs_for(cfg)]
    return StageState("stale", "; ".join(why)) if why else StageState("current")


def stage_states(cfg: Any, run_dir: Path) -> list[tuple[Stage, StageState, Optional[str]]]:
    """Every stage in order with its state and, for a current one that reads (directly or through current stages)
    one that a run redoes, that first stage: a run redoes it, then this one if its output changes."""
    out, redone = [], {}
    for st in order_stages():
        state = stage_state(cfg, run_dir, st)
        first = next((redone[n] for n in st.inputs_for(cfg) if n in redone), None)
        if state.state in ("stale", "unfinished", "missing"):
            redone[st.name], first = st.name, None
        elif state.state == "current" and first is not None:
            redone[st.name] = first
        else:
            first = None
        out.append((st, state, first))
    return out


def is_finished(cfg: Any, run_dir: Path, st: Stage) -> bool:
    return stage_state(cfg, run_dir, st).state == "current"


def _fingerprint(manifest: dict, identity: Any) -> str:
    """What a stage's readers record of it. With an ``identity`` (a hash of what the stage produced), that alone:
    a rerun with the same result (another actor count or timeout, a forced redo) keeps its readers current.
    Without one, every run is new."""
    if identity:
        basis = {"stage": manifest["stage"], "identity": identity}
    else:
        basis = {k: manifest[k] for k in ("stage", "config_hash", "inputs", "run_id")}
    return hashlib.sha256(json.dumps(basis, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _asides(run_dir: Path, name: str) -> list[Path]:
    return sorted(run_dir.glob(f".{name}.replaced-*"))


def run_stage(cfg: Any, run_dir: Path, st: Stage, force: bool = False, log=print) -> dict:
    run_dir = Path(run_dir)
    out_dir = run_dir / st.name
    state = stage_state(cfg, run_dir, st)
    if state.state == "disabled":
        log(f"[{st.name}] {state.why}; skipped")
        return {}
    if not force and state.state == "current":
        log(f"[{st.name}] current (its manifest matches the config and its inputs); skipped. --force redoes it.")
        return read_manifest(out_dir)
    if state.state == "stale":
        log(f"[{st.name}] stale: {state.why}")
    elif state.state == "unfinished":
        log(f"[{st.name}] unfinished: a run before stopped inside it (killed, interrupted or failed); running it again")
    before = read_manifest(out_dir).get("fingerprint")
    ctx = StageContext(cfg, run_dir, st, out_dir, log)
    for name in st.inputs_for(cfg):
        ctx.input_dir(name)  # fail before any work when an input is missing
    if force and (out_dir.exists() or out_dir.is_symlink()):
        aside = run_dir / f".{st.name}.replaced-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
        os.replace(out_dir, aside)
        log(f"[{st.name}] --force: the old output moved to {aside.name}; it is deleted once the new one is complete")
    if out_dir.is_symlink():  # a stage folder shared by a sweep's runs (pipeline.sweep): work in its target
        ctx.out_dir = out_dir = out_dir.resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / MANIFEST).unlink(missing_ok=True)
    debris, size = remove_debris(out_dir)  # a killed run's half-written files (the run lock: no writer now)
    if debris:
        log(f"[{st.name}] removed {debris} temporary file(s) ({size / 2**20:.1f} MiB) a stopped run left half-written")
    write_text_atomic(out_dir / "config.yaml", to_yaml(cfg))  # the resolved config beside every output
    log(f"[{st.name}] running -> {out_dir}")
    t0 = time.time()
    result = st.fn(ctx) or {}
    seconds = time.time() - t0
    identity = result.pop("identity", None)
    manifest = {
        "stage": st.name,
        "run_id": uuid.uuid4().hex,
        "config_hash": stage_hash(cfg, st),
        "config": stage_sections(cfg, st) if st.sections_for(cfg) else None,
        "inputs": _inputs_fingerprint(cfg, run_dir, st),
        "host": socket.gethostname(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(t0)),
        "seconds": round(seconds, 3),
        "environment": environment(),  # recorded, never compared: no stage goes stale by it (core.environment)
        **({"identity": identity} if identity else {}),
        **result,
    }
    manifest["fingerprint"] = _fingerprint(manifest, identity)
    write_json_atomic(out_dir / MANIFEST, manifest)
    for old in _asides(run_dir, st.name):  # the new output is complete: the replaced ones go
        if old.is_symlink():  # a link to a shared folder: the link goes, the folder stays for the others
            old.unlink()
        else:
            shutil.rmtree(old, ignore_errors=True)
    log(f"[{st.name}] done in {seconds:.1f}s")
    if before and before == manifest["fingerprint"]:
        log(f"[{st.name}] the same output as before (fingerprint {before}): the stages that read it stay current")
    return manifest


@contextlib.contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Hold ``run_dir``'s lock for a run: a second run on the same folder fails at once naming the holder."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            _lock_now(fd)
        except BlockingIOError:
            holder = read_json(path, {}) or {}
            raise StageError(
                f"run directory {run_dir} is in use by pid {holder.get('pid', '?')} on {holder.get('host', '?')} "
                f"(a run started {holder.get('started', '?')}); wait for it to end or stop it"
            ) from None
        info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def _lock_now(fd: int, tries: int = 20) -> None:
    """Take the exclusive lock without waiting for a run; a ``pt2i status`` probe (``lock_holder``) holds a
    shared lock for microseconds, so a refusal is retried for ~0.1 s before it counts."""
    for i in range(tries):
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if i == tries - 1:
                raise
            time.sleep(0.005)


def lock_holder(run_dir: Path) -> Optional[dict]:
    """The run holding ``run_dir``'s lock now (``{"pid", "host", "started"}``), None when no run holds it. Reads
    only (no lock file is made); the probe takes a shared lock for an instant."""
    path = Path(run_dir) / LOCK
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return read_json(path, {}) or {}
    finally:
        os.close(fd)  # releases the probe's lock
    return None


@contextlib.contextmanager
def stored_folder_lock(folder: Path, log=print) -> Iterator[None]:
    """Hold a stage folder that links into a sweep's store (``pipeline.sweep``) for one stage: another run
    linking to the same folder (a concurrent run of this sweep or of another sweep on the same store) waits,
    then finds the stage current. A folder of the run's own needs no lock (``run_lock`` holds the run)."""
    if not folder.is_symlink():
        yield
        return
    real = Path(os.path.realpath(folder))  # STORE/<stage>/<key>: its lock is STORE/.locks/<stage>/<key>.lock
    locks = real.parent.parent / ".locks" / real.parent.name
    locks.mkdir(parents=True, exist_ok=True)
    fd = os.open(locks / f"{real.name}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"[{folder.name}] {real} is being written by another run; waiting for it")
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def run_stages(
    cfg: Any,
    run_dir: Path,
    stages: list[Stage],
    force: bool = False,
    log=print,
    ray_session: Optional[Callable[[], ContextManager]] = None,
    rows: Optional[list] = None,
) -> list[dict]:
    """Run ``stages`` in order with one Ray for the whole run: ``ray_session()`` (default: connect to
    ``cluster.address`` or start an embedded Ray on 127.0.0.1) is entered before the first stage that
    will run on Ray and left after the last stage; stages that find Ray initialised reuse it. A run
    whose Ray stages are all finished already starts no Ray. ``rows`` (a list) receives a
    ``pipeline.summary.StageRow`` per stage (ran, reused, failed, not run), also when a stage fails."""
    if ray_session is None:
        ray_session = functools.partial(_default_ray_session, cfg, log=log)
    manifests = []
    with contextlib.ExitStack() as stack:
        stack.enter_context(run_lock(run_dir))
        check_needed_files(cfg, run_dir, stages, force)
        write_text_atomic(run_dir / CONFIG, to_yaml(cfg))  # the run's config (what `pt2i status RUN_DIR` reads)
        ray_up = False
        for i, st in enumerate(stages):
            if not st.enabled(cfg):
                log(f"[{st.name}] not part of a run with this config; skipped")
                continue
            t0 = time.time()
            try:
                with stored_folder_lock(run_dir / st.name, log):
                    reused = not force and is_finished(cfg, run_dir, st)
                    failed = failure_of(run_dir, st.name) if not reused else None
                    if failed:  # this attempt replaces the last one's record
                        log(f"[{st.name}] the last run of it {describe_failure(failed)}")
                        clear_failure(run_dir, st.name)
                    if not ray_up and st.uses_ray(cfg) and not reused:
                        stack.enter_context(ray_session())
                        ray_up = True
                    manifests.append(run_stage(cfg, run_dir, st, force=force, log=log))
            except BaseException as exc:
                why = _first_line(exc)
                with contextlib.suppress(OSError):  # what `pt2i status` says stopped it; never hides the error
                    record_failure(run_dir, st.name, why)
                if rows is not None:
                    rows += [StageRow(st.name, "failed", time.time() - t0, why)]
                    rows += [StageRow(s.name, "not run") for s in stages[i + 1 :] if s.enabled(cfg)]
                raise
            if rows is not None:
                m = manifests[-1]
                took = m.get("seconds", 0.0) if reused else time.time() - t0
                rows.append(StageRow(st.name, "reused" if reused else "ran", took, headline(st.name, m)))
    return manifests


def will_run(cfg: Any, run_dir: Path, stages: list[Stage], force: bool = False) -> list[str]:
    """The stages of ``stages`` that a run would start: enabled, and not current or reading one that runs
    before them (a rerun with the same output would leave them current: this errs on running)."""
    out: list[str] = []
    for st in stages:
        if st.enabled(cfg) and (
            force or not is_finished(cfg, run_dir, st) or any(name in out for name in st.inputs_for(cfg))
        ):
            out.append(st.name)
    return out


def check_needed_files(cfg: Any, run_dir: Path, stages: list[Stage], force: bool = False) -> None:
    """Fail before the first stage when a local file that a stage of this run reads, or a program it starts, is
    missing (``pipeline.preflight``)."""
    from pipeline.preflight import missing_files, missing_programs

    running = will_run(cfg, run_dir, stages, force)
    programs = missing_programs(cfg, running)
    if programs:
        raise StageError("; ".join(programs))
    missing = missing_files(cfg, running)
    if missing:
        raise StageError(
            f"{len(missing)} file(s) this run reads do not exist: {'; '.join(missing)}. Fix the path, or unset the "
            f"setting if this run does not need it"
        )


def _first_line(exc: BaseException) -> str:
    if isinstance(exc, (KeyboardInterrupt, SystemExit)):
        return f"stopped ({type(exc).__name__}{f' {exc.code}' if isinstance(exc, SystemExit) else ''})"
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


@contextlib.contextmanager
def _default_ray_session(cfg: Any, log: Callable[[str], None] = print) -> Iterator[None]:
    from cluster.local_ray import ensure_ray, session_dir

    cluster = getattr(cfg, "cluster", None)
    with ensure_ray(
        getattr(cluster, "address", None),
        num_cpus=getattr(cluster, "num_cpus", None),
        num_gpus=getattr(cluster, "num_gpus", None),
        auth=getattr(cluster, "ray_auth", "token"),
        temp_dir=getattr(cluster, "ray_temp_dir", None),
    ):
        where = session_dir()
        if where:
            log(f"[ray] session files (logs, sockets, spilled objects): {where}")
        yield


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
