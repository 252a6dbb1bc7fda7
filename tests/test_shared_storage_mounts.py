"""``cluster.shared_storage.mount_fstype`` reads /proc/mounts itself (the other tests replace it): the mount
holding a path is the longest mount point that is the path or a folder above it, never a mount point that
merely starts with the same letters, whatever the order of the lines."""

from __future__ import annotations

import io

import cluster.shared_storage as ss

MOUNTS = """\
overlay / overlay rw 0 0
/dev/sda1 /net/scratch ext4 rw 0 0
nfshost:/export /net nfs4 rw 0 0
/dev/sdb1 /network ext4 rw 0 0
lxcfs /var/lib/lxcfs fuse.lxcfs rw 0 0
"""


def test_the_longest_mount_point_above_the_path_decides(monkeypatch):
    monkeypatch.setattr(ss, "open", lambda path, *a, **k: io.StringIO(MOUNTS), raising=False)
    assert ss.mount_fstype("/net") == "nfs4"
    assert ss.mount_fstype("/net/run") == "nfs4"
    assert ss.mount_fstype("/net/scratch/run") == "ext4"  # a local disk mounted inside the share
    assert ss.mount_fstype("/net/scratchy/run") == "nfs4"  # not below /net/scratch
    assert ss.mount_fstype("/networkx/run") == "overlay"  # /network is not a folder above it, nor /net
    assert ss.mount_fstype("/tmp/x") == "overlay"
