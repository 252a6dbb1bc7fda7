"""``heldout_images`` empties its folder first: images of an earlier, larger held-out set never linger beside the
new ones (the folder is the FID reference set and the prompts' ground truth)."""

from __future__ import annotations

import numpy as np

from evaluation.heldout import heldout_images
from tests.image_shard_utils import write_download
from tests.own_data import texture


def test_the_folder_holds_only_this_calls_images(tmp_path):
    rng = np.random.default_rng(0)
    images = np.stack([texture(i % 9, rng) for i in range(5)])
    manifest = write_download(tmp_path, {"eval": (images, [f"caption {i}" for i in range(5)])})
    folder = tmp_path / "heldout"
    heldout_images(manifest, folder, 32, 5)
    assert len(list(folder.iterdir())) == 5
    out = heldout_images(manifest, folder, 32, 3)
    assert sorted(p.name for p in folder.iterdir()) == sorted(p.name for p in out.values())
    assert len(out) == 3
