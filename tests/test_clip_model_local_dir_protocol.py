"""A ``local-dir:/folder`` CLIP model's protocol hashes the folder (config and weights): the retrieval baseline keys
its embedding cache by the protocol (``embeddings/<protocol hash>``), and CLIP scores of two models must not
carry the same one (it recorded no weights hash at all for such a model)."""

from __future__ import annotations

import json

from evaluation.clip_model import ClipEncoder


def test_local_dir_protocol_changes_with_the_folders_weights(tmp_path):
    folder = tmp_path / "my-clip"
    folder.mkdir()
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": {"embed_dim": 16}}))
    weights = folder / "open_clip_model.safetensors"
    weights.write_bytes(b"weights one")
    before = ClipEncoder(f"local-dir:{folder}", None, device="cpu").protocol
    weights.write_bytes(b"weights two")
    after = ClipEncoder(f"local-dir:{folder}", None, device="cpu").protocol
    assert before != after
    (folder / ".cache").mkdir()  # a hub download's metadata: not the model
    (folder / ".cache" / "x.lock").write_text("1")
    (folder / ".lock").write_text("2")
    assert ClipEncoder(f"local-dir:{folder}", None, device="cpu").protocol == after
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": {"embed_dim": 32}}))
    assert ClipEncoder(f"local-dir:{folder}", None, device="cpu").protocol != after
