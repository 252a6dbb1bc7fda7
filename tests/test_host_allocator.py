"""``cluster.host_allocator``: with ``keep`` a buffer freed and allocated again (as ZeRO-3's gathered
parameters and gradient partitions are, every step) reuses the process's memory instead of faulting in fresh
zeroed pages; glibc's default returns it to the kernel. Counted in minor page faults (immune to load)."""

from __future__ import annotations

import platform
import resource

import pytest
import torch

from training.host_allocator import host_allocator, resolve

MIB = 1 << 20


def faults_of_second_use(nbytes: int) -> int:
    """Minor page faults while allocating and writing ``nbytes`` a second time, the first copy freed."""
    x = torch.empty(nbytes, dtype=torch.uint8)
    x.fill_(1)
    del x
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    y = torch.empty(nbytes, dtype=torch.uint8)
    y.fill_(2)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    del y
    return after - before


def test_auto_keeps_freed_memory_on_cpu_ranks_that_offload_nothing():
    assert resolve("auto", "cpu", offload=False) == "keep"
    assert resolve("auto", "cpu", offload=True) == "system"  # RAM is the limit there
    assert resolve("auto", "cuda", offload=False) == "system"
    assert resolve("system", "cpu", offload=False) == "system" and resolve("keep", "cuda", True) == "keep"


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_keep_reuses_a_freed_64_mib_buffer_without_page_faults():
    pages = 64 * MIB // resource.getpagesize()
    assert faults_of_second_use(64 * MIB) > 0.9 * pages  # glibc's default: a fresh mmap, every page faulted
    with host_allocator("keep") as applied:
        assert applied
        # the first uses grow the heap (3-4 of them here, as the first steps of a training run); then none
        faults = [faults_of_second_use(64 * MIB) for _ in range(8)]
    assert max(faults[-3:]) < 0.05 * pages, faults
    with host_allocator("system") as applied:
        assert not applied


class FaultCountingEncoder(torch.nn.Module):
    """The tests' tiny text encoder, which also counts, at each batch of a training run, the page faults of a
    64 MiB buffer allocated a second time (what ZeRO-3 does with its gathered parameters every step)."""

    def __init__(self, cfg):
        super().__init__()
        from tests.trainer_utils import tiny_text_encoder

        self.inner = tiny_text_encoder(cfg)
        self.faults: list[int] = []

    def encode(self, ids, mask):
        self.faults.append(faults_of_second_use(64 * MIB))
        return self.inner.encode(ids, mask)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
@pytest.mark.parametrize("mode", ["keep", "system"])
def test_the_trainer_runs_its_steps_under_the_configured_allocator(tmp_path, mode):
    """``TrainJob.host_allocator`` (from ``cluster.host_allocator``) is in force inside ``run_training``."""
    import dataclasses

    from pipeline.experiment import load_config
    from tests.trainer_utils import make_job, make_shards, write_config
    from training.trainer import run_training

    shards = make_shards(tmp_path / "shards", n_shards=1, per_shard=16)
    job = dataclasses.replace(make_job(tmp_path, shards, steps=6), host_allocator=mode)
    encoder = FaultCountingEncoder(load_config(write_config(tmp_path, {"steps": 6})))
    old = torch.get_num_threads()
    try:
        run_training(job, text_encoder=encoder, log=lambda m: None)
    finally:
        torch.set_num_threads(old)
    pages = 64 * MIB // resource.getpagesize()
    assert len(encoder.faults) >= 6, encoder.faults
    if mode == "keep":  # the heap grows over the first steps, then every step reuses it
        assert max(encoder.faults[-3:]) < 0.05 * pages, encoder.faults
    else:
        assert min(encoder.faults) > 0.9 * pages, encoder.faults
    # and glibc's default is back once training returns
    assert faults_of_second_use(64 * MIB) > 0.9 * pages
