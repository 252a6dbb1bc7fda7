"""``training.ds_offload.offload_settings``: the DeepSpeed entries each offload choice adds. The NVMe parameter
swap buffer must hold one rank's whole partition of the largest parameter (rounded up: DeepSpeed pads the last
rank's partition), locked pages are asked for only where a GPU copies from them, and the async-I/O section and
the NVMe-only knobs appear only when something is offloaded to NVMe."""

from __future__ import annotations

from types import SimpleNamespace

from training.ds_offload import AIO, offload_settings


def train(optimizer: str = "none", params: str = "none") -> SimpleNamespace:
    return SimpleNamespace(offload_optimizer=optimizer, offload_params=params, nvme_path="/nvme")


def test_nvme_param_buffers_hold_a_whole_partition_rounded_up():
    zero, top = offload_settings(train("nvme", "nvme"), world_size=4, device_type="cpu", biggest=10)
    assert zero["offload_param"]["buffer_size"] == 3  # ceil(10 / 4): 2 would cut the padded partition
    zero, _ = offload_settings(train("nvme", "nvme"), world_size=3, device_type="cpu", biggest=3 * 7 + 1)
    assert zero["offload_param"]["buffer_size"] == 8
    zero, _ = offload_settings(train(params="nvme"), world_size=4, device_type="cpu", biggest=0)
    assert "buffer_size" not in zero["offload_param"]  # DeepSpeed's default when the size is unknown


def test_pinned_memory_only_for_gpu_ranks():
    for device, pin in (("cpu", False), ("cuda", True)):
        zero, _ = offload_settings(train("cpu", "nvme"), world_size=2, device_type=device, biggest=8)
        assert zero["offload_optimizer"]["pin_memory"] is pin
        assert zero["offload_param"]["pin_memory"] is pin


def test_cpu_offload_adds_no_nvme_settings():
    zero, top = offload_settings(train("cpu", "cpu"), world_size=2, device_type="cpu", biggest=8)
    assert top == {}
    assert zero == {
        "offload_optimizer": {"device": "cpu", "pin_memory": False},
        "offload_param": {"device": "cpu", "pin_memory": False},
    }
    assert offload_settings(train(), world_size=2, device_type="cpu") == ({}, {})
    zero, top = offload_settings(train(optimizer="nvme"), world_size=2, device_type="cpu")
    assert top == {"aio": AIO} and top["aio"] is not AIO  # a copy: a caller's edit cannot change the module's
    assert zero["offload_optimizer"]["nvme_path"] == "/nvme" and "offload_param" not in zero
    assert "stage3_max_reuse_distance" not in zero  # only for parameters swapped to NVMe
