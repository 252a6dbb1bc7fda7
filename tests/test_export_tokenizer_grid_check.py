"""``training.export_loader.check_compatible``: a model is refused with a tokenizer whose token grid differs from
the one it writes even when the codebook sizes agree (a 16x16 model with the 512 px f16 tokenizer's 32x32 grid
would decode its tokens into the wrong places), naming both grids."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from tests.trainer_utils import tiny_model_dict
from training.export_loader import check_compatible
from training.model.config import model_config


def test_a_tokenizer_with_another_grid_is_refused():
    cfg = model_config(tiny_model_dict(grid_h=4, grid_w=4))
    same = SimpleNamespace(codebook_size=cfg.codebook_size, grid_size=(4, 4))
    check_compatible(cfg, same, cfg.text_dim)
    with pytest.raises(ValueError, match="4x4 token grid but the tokenizer's grid is 8x8"):
        check_compatible(cfg, SimpleNamespace(codebook_size=cfg.codebook_size, grid_size=(8, 8)))
    with pytest.raises(ValueError, match="text states of width"):
        check_compatible(cfg, same, cfg.text_dim + 1)
