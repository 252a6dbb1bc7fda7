"""Where a stage may write when its work runs on several machines: storage that every machine sees.

    require_shared(out, machines=alive_hosts(), key="run_dir")

passes on one machine, for a remote fsspec URL (``s3://...``) and for a network mount (NFS, Lustre, ...);
on a local disk of a cluster spanning several machines it raises ``ValueError`` naming the setting to change,
since each node's output would land on its own disk.
"""

from __future__ import annotations

import os

NETWORK_FS = (
    "nfs",
    "nfs4",
    "cifs",
    "smb3",
    "smbfs",
    "lustre",
    "gpfs",
    "beegfs",
    "glusterfs",
    "ceph",
    "cephfs",
    "9p",
    "virtiofs",
    "afs",
    "fuse.",  # sshfs, s3fs, gcsfuse, juicefs, ...: but not the local ones below
)
LOCAL_FUSE = ("fuse.fuse-overlayfs", "fuse.lxcfs", "fuse.snapfuse", "fuse.gvfsd-fuse", "fuse.portal", "fuse.appimage")


def url_to_fs(url: str):
    """(fsspec filesystem, path inside it) of a path or URL."""
    import fsspec

    return fsspec.core.url_to_fs(url)


def is_local_fs(fs) -> bool:
    protocols = fs.protocol if isinstance(fs.protocol, (tuple, list)) else (fs.protocol,)
    return "file" in protocols or "local" in protocols


def mount_fstype(path: str) -> str:
    """The filesystem type of the mount holding ``path`` ("" when unknown)."""
    best, kind = "", ""
    try:
        with open("/proc/mounts") as f:
            for line in f:
                parts = line.split()
                if (
                    len(parts) >= 3
                    and (path == parts[1] or path.startswith(parts[1].rstrip("/") + "/"))
                    and len(parts[1]) > len(best)
                ):
                    best, kind = parts[1], parts[2]
    except OSError:
        pass
    return kind


def require_shared(out: str, machines: int, key: str) -> None:
    """Raise ValueError when ``out`` is on a local disk while the work spans ``machines`` > 1 machines."""
    if machines <= 1:
        return
    fs, path = url_to_fs(out)
    kind = mount_fstype(os.path.realpath(path)) if is_local_fs(fs) else "remote"  # where a symlink's data lands
    if is_local_fs(fs) and (not kind.startswith(NETWORK_FS) or kind.lower().startswith(LOCAL_FUSE)):
        raise ValueError(
            f"the Ray cluster spans {machines} machines but {out} is on a local disk ({kind or 'unknown'} "
            f"filesystem): each node's output would land on its own disk. Set {key} to shared storage (a "
            f"mount every node sees at the same path, or an fsspec URL such as s3://bucket/run)"
        )
