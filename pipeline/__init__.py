"""The pipeline: typed experiment config, stage registry and runner, the ``pt2i`` command line."""

import os as _os

# Everything this project loads comes from local paths; nothing may phone home.
for _k, _v in {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
    "NO_ALBUMENTATIONS_UPDATE": "1",
    "WANDB_SILENT": "true",
}.items():
    _os.environ.setdefault(_k, _v)
