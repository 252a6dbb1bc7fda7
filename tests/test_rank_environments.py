"""Each host's ranks and how its environment differs from rank 0's (``training.rank_environments``); the gather
over two real ranks is in tests/test_collectives_two_gloo_ranks.py, the record of a real run in
tests/test_trainer_ray.py."""

from __future__ import annotations

import copy

from core.environment import environment
from training.rank_environments import gather_rank_environments, group_by_host, rank_ranges, ranks_text


def test_rank_ranges():
    assert rank_ranges([0]) == "0"
    assert rank_ranges([5, 0, 1, 2, 7, 8]) == "0-2,5,7-8"


def test_hosts_group_their_ranks_and_name_what_differs_from_rank_0():
    env = environment()
    other = copy.deepcopy(env)
    other["packages"]["torch"] = "9.9.9"
    other["machine"].update(cpu_kernels="NOT_" + str(env["machine"].get("cpu_kernels")), cpu="Other CPU")
    records = [{"host": "a", "environment": env}] * 2 + [{"host": "b", "environment": env}] * 2
    records += [{"host": "c", "environment": other}, {"host": "a", "environment": env}]
    groups = group_by_host(records)
    assert groups[:2] == [{"ranks": "0-1,5", "host": "a"}, {"ranks": "2-3", "host": "b"}]
    assert groups[2]["ranks"] == "4" and groups[2]["host"] == "c"
    differs = groups[2]["differs"]
    assert (
        f"torch {env['packages']['torch']} -> 9.9.9" in differs
        and f"CPU {env['machine']['cpu']} -> Other CPU" in differs
    )
    assert any(d.startswith("CPU kernels") for d in differs)


def test_one_rank_records_its_host_and_says_nothing():
    said = []
    groups = gather_rank_environments(1, said.append)
    assert len(groups) == 1 and groups[0]["ranks"] == "0" and "differs" not in groups[0] and said == []


def test_the_reports_trained_with_line_names_other_hosts_and_their_differences():
    assert ranks_text([{"ranks": "0-1", "host": "a"}]) == ""
    two = [{"ranks": "0-7", "host": "a"}, {"ranks": "8-15", "host": "b"}]
    assert ranks_text(two) == "; ranks on 2 hosts"
    two[1]["differs"] = ["torch 2.14.1 -> 2.15.0", "CPU kernels AVX512 -> AVX2"]
    assert ranks_text(two) == "; ranks on 2 hosts; ranks 8-15 on b: torch 2.14.1 -> 2.15.0, CPU kernels AVX512 -> AVX2"
    assert ranks_text([{"ranks": "0", "host": "a"}, {"ranks": "1", "host": "a", "differs": ["x"]}]) == (
        "; ranks on 1 host; ranks 1 on a: x"
    )
