"""PDM Table 4 speed table: wall time per image of progressive decoding at several T vs the AR baseline.

    python benchmarks/speed_table.py --preset small --device cuda            # random weights, model size only
    python benchmarks/speed_table.py --export runs/tiny/train/export         # a trained export
    python benchmarks/speed_table.py --preset pdm-paper-appendix --device cuda --batch-size 16 --json out.json

Text states are random (the decoder's cost depends on their length, ``--text-len``, not on their values).
The AR baseline is ``--ar-export`` or a randomly initialised ARModel of the same size. Prints the
markdown table of ``evaluation.speed.speed_markdown`` (paper figures beside ours).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from evaluation.speed import speed_markdown, speed_table  # noqa: E402
from training.export_loader import load_exported_model  # noqa: E402
from training.model import build_model  # noqa: E402
from training.model.config import model_config  # noqa: E402
from training.model.sampling import SampleConfig  # noqa: E402


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    src = p.add_mutually_exclusive_group()
    src.add_argument("--export", help="an export folder (model.safetensors + config.yaml)")
    src.add_argument(
        "--preset", default="tiny", help="model preset with random weights (training.model.config.PRESETS)"
    )
    p.add_argument("--ar-export", help="export folder of a trained autoregressive baseline")
    p.add_argument("--no-ar", action="store_true", help="skip the autoregressive row")
    p.add_argument("--steps", type=int, nargs="+", default=[8, 16, 64, 256])
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--images", type=int, default=4, help="images timed one at a time (batch 1)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--text-len", type=int, default=32)
    p.add_argument("--guidance", type=float, default=1.0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    p.add_argument("--json", help="also write the rows here")
    a = p.parse_args(argv)
    dtype = getattr(torch, a.dtype)
    torch.manual_seed(0)
    if a.export:
        pdm, cfg, _ = load_exported_model(a.export, device=a.device)
    else:
        cfg = model_config(a.preset)
        pdm = build_model(cfg, "pdm").to(a.device).eval()
    ar = None
    if a.ar_export:
        ar = load_exported_model(a.ar_export, device=a.device)[0]
    elif not a.no_ar:
        ar = build_model(cfg, "ar").to(a.device).eval()
    pdm.to(dtype)
    if ar is not None:
        ar.to(dtype)
    n = max(a.batch_size, a.images)
    text = torch.randn(n, a.text_len, cfg.text_dim, device=a.device, dtype=dtype)
    mask = torch.ones(n, a.text_len, dtype=torch.bool, device=a.device)
    notes = {} if a.export or not a.preset else {"progressive": f"random weights, preset {a.preset}"}
    if ar is not None and not a.ar_export:
        notes["autoregressive"] = "random weights, same size as the progressive model"
    rows = speed_table(
        pdm,
        ar,
        text,
        mask,
        SampleConfig(guidance_scale=a.guidance, temperature=1.0),
        a.steps,
        a.batch_size,
        a.images,
        a.warmup,
        notes,
    )
    name = torch.cuda.get_device_name(a.device) if a.device.startswith("cuda") else a.device
    print("\n".join(speed_markdown(rows, cfg.seq_len, device_name=f"{name}, {a.dtype}")))
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=2))
    return rows


if __name__ == "__main__":
    main()
