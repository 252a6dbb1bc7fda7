"""The speed table's per-image times and speed-ups: with a fake clock where every ``generate`` call takes one
second, batch-1 time is 1 s per image whatever ``n_single`` is, the batched time is 1 s / B, and the markdown's
speed-ups are (time at T = L) / (time of the row) and (AR time) / (time of the row)."""

import torch

import evaluation.speed as speed
from evaluation.speed import speed_markdown, time_generate
from tests.eval_utils import one_thread  # noqa: F401
from training.model.config import model_config
from training.model.pdm import PDM
from training.model.sampling import SampleConfig

TINY = dict(codebook_size=32, grid_h=4, grid_w=4, text_dim=16, dim=32, layers=1, heads=2, ffn_dim=64)


def test_seconds_per_image_from_a_fake_clock(monkeypatch):
    import training.model.sampling as sampling

    clock = [0.0]
    real = sampling.generate

    def one_second_generate(*args, **kwargs):
        clock[0] += 1.0
        return real(*args, **kwargs)

    monkeypatch.setattr(sampling, "generate", one_second_generate)
    monkeypatch.setattr(speed.time, "perf_counter", lambda: clock[0])
    torch.manual_seed(0)
    pdm = PDM(model_config(TINY)).eval()
    text, mask = torch.randn(3, 5, 16), torch.ones(3, 5, dtype=torch.bool)
    r = time_generate(pdm, text, mask, SampleConfig(steps=4), batch_size=4, n_single=3, warmup=0)
    assert r["seconds_per_image"] == 1.0  # three calls of one prompt each: 3 s / 3 images
    assert r["seconds_per_image_batched"] == 0.25  # one call of 4 prompts
    assert r["sequential_passes"] == 4 == r["batched_passes"]


def test_speed_ups_are_ratios_of_batch_1_times():
    def row(method, steps, seconds):
        return {
            "method": method,
            "steps": steps,
            "tokens_per_step": 16 // steps,
            "sequential_passes": steps,
            "seconds_per_image": seconds,
        }

    rows = [row("progressive", 4, 1.0), row("progressive", 16, 4.0), row("autoregressive", 16, 8.0)]
    lines = speed_markdown(rows, 16)
    row4 = next(line for line in lines if line.startswith("| progressive | 4 |"))
    cells = [c.strip() for c in row4.strip("|").split("|")]
    header = [c.strip() for c in next(line for line in lines if line.startswith("| method")).strip("|").split("|")]
    assert cells[header.index("speed-up vs T=16")] == "4.0×"  # 4 s at T = L over 1 s at T = 4
    assert cells[header.index("speed-up vs AR")] == "8.0×"
    assert cells[header.index("s / image (batch 1)")] == "1.0000"
