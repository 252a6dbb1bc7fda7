"""Host-value collectives over two real gloo ranks (CPU): a one-rank group cannot tell a sum from a max, a
reduced value from the rank's own, or the ranks' order in a gather. The trainer sums its metric sums and bad-shard
counts with ``all_reduce_host`` (``training.trainer._all_reduce``), and the learned order averages the policy's
gradients over the ranks (``training.order_learner_hooks._all_reduce_grads``) so its replicas stay identical."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_two_ranks(body: str, tmp_path: Path) -> list[str]:
    """Run ``body`` in two processes joined by a gloo group (a file store to meet, gloo's own sockets on the
    loopback interface: never this machine's network address); their stdouts."""
    code = (
        textwrap.dedent(
            f"""
        import sys, torch, torch.distributed as dist
        rank = int(sys.argv[1])
        dist.init_process_group("gloo", init_method="file://{tmp_path / "store"}", rank=rank, world_size=2)
        """
        )
        + textwrap.dedent(body)
        + "\ndist.destroy_process_group()\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(r)], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        for r in range(2)
    ]
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err.decode()[-3000:]
        outs.append(out.decode().strip())
    return outs


def test_host_values_are_summed_maxed_and_gathered_in_rank_order(tmp_path):
    body = """
    from training.collectives import all_gather_host, all_reduce_host
    from training.trainer import _all_reduce, _slowest_epoch

    def t():
        return torch.tensor([1.0 + rank, 10.0 * (1 - rank)], dtype=torch.float64)

    mine = t()
    s = all_reduce_host(mine)
    assert mine.tolist() == t().tolist(), "the input was reduced in place"
    assert s.tolist() == [3.0, 10.0] and s.device.type == "cpu" and s.dtype == torch.float64, s
    assert all_reduce_host(t(), dist.ReduceOp.MAX).tolist() == [2.0, 10.0]
    assert _all_reduce([1.0 + rank, 5.0], True) == [3.0, 10.0]
    assert _all_reduce([1.0 + rank, 5.0 - rank], True, "max") == [2.0, 5.0]
    assert _slowest_epoch(4 - rank, True) == 3 and _slowest_epoch(7, False) == 7  # rank 0 is ahead: the min
    parts = all_gather_host(torch.full((2, 3), float(rank)).t())  # non-contiguous, as a shard view can be
    assert [p.tolist() for p in parts] == [[[0.0, 0.0]] * 3, [[1.0, 1.0]] * 3], parts
    print("ok", rank)
    """
    assert run_two_ranks(body, tmp_path) == ["ok 0", "ok 1"]


def test_policy_gradients_are_averaged_over_the_ranks(tmp_path):
    """The mean, not the sum (the sum would scale the policy's learning rate by the rank count); a parameter
    without a gradient on one rank counts as zero there, so every rank ends with the same gradients."""
    body = """
    from training.order_learner_hooks import _all_reduce_grads

    a = torch.nn.Parameter(torch.zeros(2))
    b = torch.nn.Parameter(torch.zeros(1))
    a.grad = torch.tensor([2.0, 4.0]) * (rank + 1)  # rank 0: [2, 4]; rank 1: [4, 8]
    if rank == 1:
        b.grad = torch.tensor([6.0])  # rank 0 has none
    _all_reduce_grads([a, b])
    assert a.grad.tolist() == [3.0, 6.0], a.grad
    assert b.grad.tolist() == [3.0], b.grad
    print("ok", rank)
    """
    assert run_two_ranks(body, tmp_path) == ["ok 0", "ok 1"]


def test_every_ranks_environment_is_gathered_and_a_difference_said(tmp_path):
    """Rank 1 holds its CPU kernels down as rank 0 does not (a launch that did not carry the setting): rank 0's log
    names it, and both ranks record the same groups."""
    body = """
    import json, os
    if rank == 1:
        os.environ["ATEN_CPU_CAPABILITY"] = "default"
    else:
        os.environ.pop("ATEN_CPU_CAPABILITY", None)
    from training.rank_environments import gather_rank_environments

    said = []
    groups = gather_rank_environments(2, said.append)
    print(json.dumps([groups, said]))
    """
    outs = [json.loads(o) for o in run_two_ranks(body, tmp_path)]
    assert outs[0] == outs[1]  # every rank gathers the same record; the trainer's say is rank 0's log only
    groups, said = outs[0]
    host = socket.gethostname()
    assert groups[0] == {"ranks": "0", "host": host} and groups[1]["ranks"] == "1" and len(groups) == 2
    differs = groups[1]["differs"]  # torch reads the setting when first asked: rank 1 runs its default kernels
    assert differs[0] == "ATEN_CPU_CAPABILITY unset -> default"
    assert all(d.startswith("CPU kernels ") and d.endswith(" -> DEFAULT") for d in differs[1:]), differs
    assert said == [f"[train] ranks 1 on {host} differ from rank 0: {'; '.join(differs)}"]
