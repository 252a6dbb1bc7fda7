"""The Table 4 speed table: which T are timed, counted sequential passes (T progressive, L autoregressive),
the quality columns per T, the markdown beside the paper's figures, and the benchmark script."""

import numpy as np
import pytest
import torch

from evaluation.speed import count_passes, paper_steps, sample_batches, speed_markdown, speed_steps, speed_table
from tests.eval_utils import one_thread  # noqa: F401
from training.model.ar_model import ARModel
from training.model.config import model_config
from training.model.pdm import PDM
from training.model.sampling import SampleConfig

TINY = dict(codebook_size=32, grid_h=4, grid_w=4, text_dim=16, dim=32, layers=1, heads=2, ffn_dim=64)


def test_speed_steps_are_divisors_of_L_plus_L():
    assert speed_steps(64, [8, 16, 64, 256]) == [8, 16, 64]
    assert speed_steps(1024, [8, 16, 64, 256]) == [8, 16, 64, 256, 1024]
    assert speed_steps(48, [8, 16, 5]) == [8, 16, 48]
    assert paper_steps(16, 64) == 256 and paper_steps(64, 64) == 1024 and paper_steps(3, 64) == 48


@pytest.mark.parametrize("guidance", [1.0, 3.0])
def test_rows_and_pass_counts(guidance):
    torch.manual_seed(0)
    cfg = model_config(TINY)
    pdm, ar = PDM(cfg).eval(), ARModel(cfg).eval()
    text, mask = torch.randn(3, 5, 16), torch.ones(3, 5, dtype=torch.bool)
    rows = speed_table(
        pdm,
        ar,
        text,
        mask,
        SampleConfig(guidance_scale=guidance, record_steps=True, n_candidates=1),
        steps=[2, 4, 8, 3],
        batch_size=5,
        n_single=2,
        warmup=1,
        notes={"autoregressive": "random"},
    )
    assert [(r["method"], r["steps"]) for r in rows] == [
        ("progressive", 2),
        ("progressive", 4),
        ("progressive", 8),
        ("progressive", 16),
        ("autoregressive", 16),
    ]
    for r in rows:  # one decoder pass per step, batched or not (CFG: both branches in one forward)
        assert r["sequential_passes"] == r["steps"] == r["batched_passes"]
        assert r["seconds_per_image"] > 0 and r["seconds_per_image_batched"] > 0 and r["batch_size"] == 5
        assert r["tokens_per_step"] == 16 // r["steps"]
    assert rows[-1]["note"] == "random" and rows[0]["note"] == ""
    md = "\n".join(speed_markdown(rows, 16))
    assert "| autoregressive (KV cache) | 16 | 1 | 16 |" in md and "Note: autoregressive: random" in md
    assert "| progressive | 4 | 4 | 4 |" in md and "| 256 | 12.73 | 78.5 | 3.3× |" in md  # 4/16 of L = paper T 256
    assert "| 1024 | 12.51 | 79.8 | 1.0× |" in md and "L = 16" in md


def test_quality_per_row_and_its_columns():
    """``quality(method, model, cfg)`` gets the row's model and sampler settings; its dict is the row's quality."""
    torch.manual_seed(0)
    cfg = model_config(TINY)
    pdm, ar = PDM(cfg).eval(), ARModel(cfg).eval()
    text, mask = torch.randn(2, 5, 16), torch.ones(2, 5, dtype=torch.bool)
    calls = []

    def quality(method, model, row_cfg, generate_kwargs):
        calls.append((method, model, row_cfg.sampler, row_cfg.steps, row_cfg.n_candidates))
        assert generate_kwargs == {}
        return {"fid": 100.0 / row_cfg.steps, "attribute_match": 0.25, "num_images": 3} if model is pdm else None

    rows = speed_table(
        pdm,
        ar,
        text,
        mask,
        SampleConfig(n_candidates=2),
        steps=[4],
        batch_size=2,
        n_single=1,
        warmup=0,
        quality=quality,
    )
    assert calls == [
        ("progressive", pdm, "progressive", 4, 1),
        ("progressive", pdm, "progressive", 16, 1),
        ("autoregressive", ar, "autoregressive", 16, 1),
    ]
    assert [r.get("quality", {}).get("fid") for r in rows] == [25.0, 6.25, None]
    md = "\n".join(speed_markdown(rows, 16))
    assert "| method | T (steps) | FID (↓) | attribute match (↑) | N (quality) | tokens / step |" in md
    assert (
        "| progressive | 4 | 25.00 | 0.250 | 3 | 4 | 4 |" in md
        and "| progressive | 16 | 6.25 | 0.250 | 3 | 1 | 16 |" in md
    )
    assert "| autoregressive (KV cache) | 16 | – | – | – | 1 | 16 |" in md and "Quality: the first N" in md
    assert "FID (↓)" not in "\n".join(speed_markdown([{k: v for k, v in r.items() if k != "quality"} for r in rows]))


class RasterPolicyOrder:
    """A stand-in for ``training.model.order_learner.Learned``: a per-step order hook (raster priorities)."""

    per_step = True

    def __init__(self):
        self.calls = 0

    def priority(self, tokens, hidden, token_logits, state_logits, t, T, gumbel_scale=0.0, generator=None):
        self.calls += 1
        B, L = tokens.shape
        return torch.arange(L, 0, -1, dtype=torch.float32).expand(B, L)


def test_learned_order_drives_the_progressive_rows_only():
    """sample.order: learned: the policy order goes to every progressive generate (timing and quality); the
    autoregressive row runs in raster order instead of failing the config check."""
    torch.manual_seed(0)
    cfg = model_config(TINY)
    pdm, ar = PDM(cfg).eval(), ARModel(cfg).eval()
    text, mask = torch.randn(2, 5, 16), torch.ones(2, 5, dtype=torch.bool)
    order, seen = RasterPolicyOrder(), []
    rows = speed_table(
        pdm,
        ar,
        text,
        mask,
        SampleConfig(order="learned"),
        steps=[4],
        batch_size=2,
        n_single=1,
        warmup=0,
        order=order,
        quality=lambda m, model, c, kw: seen.append((m, c.order, kw)),
    )
    assert [(r["method"], r["sequential_passes"]) for r in rows] == [
        ("progressive", 4),
        ("progressive", 16),
        ("autoregressive", 16),
    ]
    assert order.calls == (4 + 4) + (16 + 16)  # one priority per step: batch-1 run and batched run
    assert seen == [
        ("progressive", "learned", {"order": order}),
        ("progressive", "learned", {"order": order}),
        ("autoregressive", "raster", {}),
    ]


def test_sample_batches_are_the_generated_tokens_decoded():
    """One generator for all batches, T decoder passes per batch, the tokens decoded as they are."""
    from training.model.sampling import generate

    torch.manual_seed(0)
    pdm = PDM(model_config(TINY)).eval()
    text, mask = torch.randn(5, 3, 16), torch.ones(5, 3, dtype=torch.bool)
    cfg = SampleConfig(steps=4, temperature=1.0, batch_size=3)

    def decode(ids):  # a stand-in for the VQ decoder: [B, 16] ids -> uint8 [B, 4, 4, 3]
        return ids.reshape(-1, 4, 4, 1).repeat(1, 1, 1, 3).to(torch.uint8).numpy()

    batches = [(text[:3], mask[:3]), (text[3:], mask[3:])]
    with count_passes(pdm) as passes:
        got = np.concatenate(list(sample_batches(pdm, decode, iter(batches), cfg, seed=7)))
    assert got.shape == (5, 4, 4, 3) and passes[0] == 2 * 4
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        want = [generate(pdm, t, m, cfg, generator=g).tokens for t, m in batches]
    assert np.array_equal(got, decode(torch.cat(want)))
    again = np.concatenate(list(sample_batches(pdm, decode, iter(batches), cfg, seed=7)))
    other = np.concatenate(list(sample_batches(pdm, decode, iter(batches), cfg, seed=8)))
    assert np.array_equal(got, again) and not np.array_equal(got, other)


def test_count_passes_counts_forwards():
    torch.manual_seed(0)
    pdm = PDM(model_config(TINY)).eval()
    with count_passes(pdm) as n, torch.no_grad():
        for _ in range(3):
            pdm(torch.zeros(2, 16, dtype=torch.long), torch.randn(2, 3, 16), torch.ones(2, 3, dtype=torch.bool))
    assert n[0] == 3


def test_benchmark_script(tmp_path, capsys):
    import importlib.util
    import json
    from pathlib import Path

    script = Path(__file__).parents[1] / "benchmarks" / "speed_table.py"
    spec = importlib.util.spec_from_file_location("speed_table", script)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    rows = mod.main(
        [
            "--preset",
            "tiny",
            "--steps",
            "16",
            "32",
            "--batch-size",
            "2",
            "--images",
            "1",
            "--warmup",
            "0",
            "--json",
            str(tmp_path / "rows.json"),
            "--device",
            "cpu",
        ]
    )
    assert [(r["method"], r["sequential_passes"]) for r in rows] == [
        ("progressive", 16),
        ("progressive", 32),
        ("progressive", 64),
        ("autoregressive", 64),
    ]
    assert "Speed: effect of iterative steps" in capsys.readouterr().out
    assert len(json.loads((tmp_path / "rows.json").read_text())) == 4
