"""The `synthetic` stage: writes the built-in shapes dataset (`data.synthetic`) as `train/` and `eval/`.

Each split is a folder made by `tokenization.synthetic.write_dataset` (`images/NNNNNNNN.png`,
`urls.parquet` with URL/TEXT/WIDTH/HEIGHT, `meta.json`); the download stage reads the url lists.
Train uses `seed`, eval `seed + 1`. Rerunning keeps images already written.
"""

from __future__ import annotations

from pathlib import Path

from core.config import config_hash
from core.stage import StageContext, stage
from tokenization.synthetic import SyntheticConfig, attributes_match, load_images, write_dataset


def run_synthetic(cfg: SyntheticConfig, out_dir: str | Path, check: int = 64) -> dict:
    """Write both splits under out_dir; self-check that the first `check` eval images read back exactly."""
    out = Path(out_dir)
    splits = {"train": (cfg.n_train, cfg.seed), "eval": (cfg.n_eval, cfg.seed + 1)}
    for name, (n, seed) in splits.items():
        write_dataset(
            out / name,
            n,
            seed,
            cfg.image_size,
            base_url=cfg.base_url,
            min_objects=cfg.min_objects,
            max_objects=cfg.max_objects,
        )
    images, captions = load_images(out / "eval")
    k = min(check, len(captions))
    readable = sum(attributes_match(images[i], captions[i]) for i in range(k)) / max(k, 1)
    if k and readable < 1.0:
        raise RuntimeError(f"synthetic self-check failed: only {readable:.0%} of {k} eval images read back")
    return {
        "counts": {name: n for name, (n, _) in splits.items()},
        "metrics": {"self_check_images": k, "self_check_match": readable},
        "outputs": {name: str(out / name) for name in splits},
    }


def uses_synthetic(cfg) -> bool:
    return cfg.data.download.source == "synthetic"


@stage("synthetic", sections=("data.synthetic",), enabled=uses_synthetic)
def synthetic_stage(ctx: StageContext) -> dict:
    """Render the synthetic shapes dataset (train/ and eval/ url lists + PNGs)."""
    out = run_synthetic(ctx.config.data.synthetic, ctx.out_dir)
    return {**out, "identity": config_hash(ctx.config.data.synthetic)}  # the images follow from the config
