"""``evaluation.coco.sample_prompts``: the prompt is a seeded random one of the image's captions (not always the
same position), chosen per image (the same whatever ``n``), and the draw's order is prefix-stable."""

import json

from evaluation.coco import sample_prompts


def _captions(tmp_path, n_images=40, per_image=5):
    images = [{"id": i, "file_name": f"COCO_val2014_{i:012d}.jpg"} for i in range(1, n_images + 1)]
    anns = [
        {"image_id": i, "id": 100 * i + k, "caption": f"image {i} caption {k}"}
        for i in range(1, n_images + 1)
        for k in range(per_image)
    ]
    path = tmp_path / "captions_val2014.json"
    path.write_text(json.dumps({"images": images, "annotations": anns}))
    return path


def test_prompt_is_a_random_caption_of_its_image_independent_of_n(tmp_path):
    path = _captions(tmp_path)
    every = sample_prompts(path, 40, seed=3)
    positions = [p.refs.index(p.prompt) for p in every]
    # 40 images, 5 captions each: a seeded random pick uses more than one position (all-equal: 5 * 0.2**40)
    assert len(set(positions)) >= 3, positions
    few = sample_prompts(path, 5, seed=3)
    assert few == every[:5]
    # the caption picked for an image depends on the seed and the image, not on where it lands in the draw
    other_seed = {p.image_id: p.prompt for p in sample_prompts(path, 40, seed=4)}
    assert any(other_seed[p.image_id] != p.prompt for p in every)
