"""One way into Ray: connect to a cluster, or start an embedded local Ray that listens on 127.0.0.1 only.

    with ensure_ray(cfg.cluster.address, num_cpus=cfg.cluster.num_cpus):
        ...  # ray.remote / ray.get

* ``address`` given (``"auto"``, ``"ray://host:10001"``, ``"host:6379"``): connect; disconnect at the end.
* ``address`` None: start a local Ray and shut it down at the end.
* Ray already initialised in this process (a caller or a test fixture did it): reuse it, touch nothing.

Why the local start needs care (verified with ``ss -ltnp`` and ``ray.nodes()`` on Linux, Ray 2.60):
Ray reads ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER`` once, when ``ray`` is first imported. While it is
true (the Linux default) Ray swaps a loopback ``_node_ip_address="127.0.0.1"`` for the interface
address, and the GCS, raylet, workers and dashboard agent listen on all interfaces (the agent on the
interface address). With it false, every node address is 127.0.0.1 and every socket is loopback. So
the local start sets the variable for the child processes *and* the already-imported constant
(``ray._private.ray_constants.ENABLE_RAY_CLUSTER``) for this process, passes
``_node_ip_address="127.0.0.1"``, and checks ``ray.nodes()`` afterwards (refusing to continue
otherwise). It also disables Ray usage stats and the albumentations update check (both would
contact the internet) in every process Ray starts.

Once a process has started or joined a Ray here, Ray's auto-connect is off in it for good: a Ray call made after
that Ray stopped (a finalizer, a stray ``ray.get``) raises "Ray has not been started yet" instead of
quietly starting a default Ray, which would listen on the interface address.

Loopback is still reachable by every user of this machine, and Ray runs whatever code it is sent. With
``auth="token"`` (``cluster.ray_auth``, the default) the local start makes a random token for this Ray
(``RAY_AUTH_MODE=token``, ``RAY_AUTH_TOKEN`` in the environment of this process and of the processes Ray
starts, for as long as it runs; nothing is written to ``~/.ray``): a process without it is refused.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Optional

LOOPBACK = "127.0.0.1"
# Set in every process we start (Ray's and img2dataset's): no phoning home.
QUIET_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "NO_ALBUMENTATIONS_UPDATE": "1"}
_LOCAL_ENV = {**QUIET_ENV, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
PROJECT_ROOT = str(Path(__file__).resolve().parents[1])
# What Ray appends to its temp dir for a socket: /session_YYYY-MM-DD_HH-MM-SS_ffffff_PID/sockets/plasma_store.N
# (PID up to 7 digits, N a counter); a Unix socket path holds at most 107 bytes on Linux (103 on macOS).
RAY_SOCKET_SUFFIX = len("/session_2026-01-01_00-00-00_000000_4194304/sockets/plasma_store.10")
MAX_SOCKET_PATH = 107


def ray_temp_dir_problem(path: str) -> Optional[str]:
    """Why ``path`` cannot be an embedded Ray's temp dir (``cluster.ray_temp_dir``), or None: its absolute form
    must leave room for the socket paths Ray makes under it, and must not be a file."""
    full = Path(path).expanduser().absolute()
    if full.exists() and not full.is_dir():
        return f"{str(full)!r} is a file, not a folder"
    room = MAX_SOCKET_PATH - RAY_SOCKET_SUFFIX
    if len(str(full).encode()) > room:
        return (
            f"{str(full)!r} is {len(str(full).encode())} bytes; Ray's socket paths under it would pass the "
            f"{MAX_SOCKET_PATH}-byte limit of a Unix socket path: give a folder of at most {room} bytes "
            f"(e.g. /tmp/ray-$USER or /scratch/ray)"
        )
    return None


def apply_quiet_env() -> None:
    """Put ``QUIET_ENV`` into ``os.environ`` (inherited by every child process started afterwards)."""
    for k, v in QUIET_ENV.items():
        os.environ.setdefault(k, v)


def _reset_ray_auth() -> None:
    """Make this process read the authentication mode and token from the environment again (Ray caches
    both on first use; another embedded Ray in the same process has another token)."""
    try:
        from ray._raylet import AuthenticationTokenLoader, Config
    except ImportError:  # a Ray without token authentication
        return
    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


def auth_env(auth: str) -> dict[str, str]:
    """The environment of an embedded Ray with ``auth`` ("token": a fresh random token; "disabled")."""
    if auth == "disabled":
        return {"RAY_AUTH_MODE": "disabled"}
    import ray._raylet

    if not hasattr(ray._raylet, "AuthenticationTokenLoader"):
        raise RuntimeError(
            "cluster.ray_auth: token needs a Ray with token authentication (RAY_AUTH_MODE); upgrade Ray, or set "
            "cluster.ray_auth: disabled on a machine no one else uses"
        )
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}


@contextlib.contextmanager
def _patched_env(values: dict[str, str]) -> Iterator[None]:
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def node_addresses() -> list[str]:
    """``NodeManagerAddress`` of every alive node of the connected cluster."""
    import ray

    return [n["NodeManagerAddress"] for n in ray.nodes() if n.get("Alive")]


def disable_auto_connect() -> None:
    """Turn off Ray's implicit ``ray.init()`` (on the first ``ray.get``/``.remote``/Ray Data call) in this
    process, as ``RAY_ENABLE_AUTO_CONNECT=0`` does when set before ``ray`` is imported."""
    try:
        from ray._private import auto_init_hook
    except ImportError:  # a Ray without auto-connect
        return
    auto_init_hook.enable_auto_connect = False


def session_dir() -> Optional[str]:
    """The session folder (logs, sockets, spilled objects) of the Ray this process started or joined, if any."""
    from ray._private import worker

    node = getattr(worker, "_global_node", None)
    return node.get_session_dir_path() if node is not None else None


def _start_local(
    num_cpus: Optional[int],
    num_gpus: Optional[int],
    object_store_memory: Optional[int],
    log_to_driver: bool,
    temp_dir: Optional[str] = None,
) -> None:
    import ray
    from ray._private import ray_constants

    pythonpath = os.pathsep.join(p for p in (PROJECT_ROOT, os.environ.get("PYTHONPATH")) if p)
    saved = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False  # read by services.get_node_ip_address at call time
    try:
        with _patched_env({**_LOCAL_ENV, "PYTHONPATH": pythonpath}):  # raylet and workers inherit these
            ray.init(
                address="local",
                _node_ip_address=LOOPBACK,
                include_dashboard=False,
                num_cpus=num_cpus,
                num_gpus=num_gpus,
                object_store_memory=object_store_memory,
                log_to_driver=log_to_driver,
                configure_logging=False,
                **({"_temp_dir": temp_dir} if temp_dir else {}),
            )
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved
    bad = [a for a in node_addresses() if a != LOOPBACK]
    if bad:
        ray.shutdown()
        raise RuntimeError(
            f"embedded Ray came up on {bad}, not {LOOPBACK}; refusing to run "
            f"(set RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 before Python starts)"
        )


@contextlib.contextmanager
def ensure_ray(
    address: Optional[str] = None,
    *,
    num_cpus: Optional[int] = None,
    num_gpus: Optional[int] = None,
    object_store_memory: Optional[int] = None,
    log_to_driver: bool = True,
    auth: str = "token",
    temp_dir: Optional[str] = None,
) -> Iterator[None]:
    """Connect to ``address`` or start a local Ray bound to 127.0.0.1; undo only what was done here.

    ``num_cpus``/``num_gpus``/``object_store_memory``, ``auth`` (``cluster.ray_auth``: "token" or
    "disabled") and ``temp_dir`` (``cluster.ray_temp_dir``: where its session files go; None: Ray's default)
    apply to a local start only.
    """
    import ray

    apply_quiet_env()
    if ray.is_initialized():
        yield
        return
    disable_auto_connect()  # no default Ray (all interfaces) once the one started or joined here stops
    if address:
        # Inside a Ray job (`pt2i submit`) the job's runtime env already carries QUIET_ENV, and Ray refuses
        # a driver runtime env that repeats any of its keys.
        in_job = "RAY_JOB_CONFIG_JSON_ENV_VAR" in os.environ
        ray.init(
            address=address,
            runtime_env=None if in_job else {"env_vars": dict(QUIET_ENV)},
            log_to_driver=log_to_driver,
            configure_logging=False,
        )
        try:
            yield
        finally:
            ray.shutdown()
        return
    try:
        with _patched_env(auth_env(auth)):  # for as long as this Ray runs: its token
            _reset_ray_auth()
            try:
                if temp_dir:  # checked when the config loaded (ClusterConfig: ray_temp_dir_problem)
                    temp_dir = str(Path(temp_dir).expanduser().absolute())
                    Path(temp_dir).mkdir(parents=True, exist_ok=True)
                _start_local(num_cpus, num_gpus, object_store_memory, log_to_driver, temp_dir)
                yield
            finally:
                ray.shutdown()
    finally:
        _reset_ray_auth()


def alive_hosts() -> int:
    """Number of distinct machines among the alive nodes: nodes sharing an address (several Ray nodes
    on one machine) share its disks and its loopback interface."""
    return len(set(node_addresses()))


def cluster_gpus() -> float:
    """GPUs of the connected cluster (0 when it has none)."""
    import ray

    return float(ray.cluster_resources().get("GPU", 0))
