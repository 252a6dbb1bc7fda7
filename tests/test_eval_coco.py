"""COCO prompt loading: layout checks, seeded choice, one prompt and all references per image."""

import json

import pytest

from evaluation.coco import CocoLayoutError, image_paths, sample_prompts


def _write(path, data):
    path.write_text(json.dumps(data))
    return path


@pytest.fixture
def captions(tmp_path):
    images = [{"id": i, "file_name": f"COCO_val2014_{i:012d}.jpg", "height": 480, "width": 640} for i in range(1, 21)]
    anns = [
        {"image_id": i, "id": 100 * i + k, "caption": f"image {i} caption {k} \n"}
        for i in range(1, 21)
        for k in range(5)
    ]
    anns.append({"image_id": 3, "id": 9999, "caption": "image 3 caption 5"})  # a sixth caption
    return _write(tmp_path / "captions_val2014.json", {"info": {}, "images": images, "annotations": anns})


def test_seeded_choice_one_prompt_all_refs(captions):
    a, b = sample_prompts(captions, 8, seed=1), sample_prompts(captions, 8, seed=1)
    assert a == b and len({p.image_id for p in a}) == 8
    assert sample_prompts(captions, 8, seed=2) != a
    for p in a:
        assert p.prompt in p.refs and len(p.refs) == (6 if p.image_id == 3 else 5)
        assert p.prompt.startswith(f"image {p.image_id} caption") and not p.prompt.endswith(" ")
        assert p.file_name == f"COCO_val2014_{p.image_id:012d}.jpg"
    assert sample_prompts(captions, 3, seed=1) == a[:3]  # prefix-stable


def test_image_paths(captions, tmp_path):
    prompts = sample_prompts(captions, 2)
    with pytest.raises(FileNotFoundError, match="2 of 2 COCO images missing"):
        image_paths(prompts, tmp_path)
    for p in prompts:
        (tmp_path / p.file_name).write_bytes(b"x")
    assert [x.name for x in image_paths(prompts, tmp_path)] == [p.file_name for p in prompts]


@pytest.mark.parametrize(
    "data, match",
    [
        ([{"image_id": 1, "caption": "x"}], "top level is a list"),
        ({"annotations": []}, "missing the list 'images'"),
        (
            {"images": [{"id": 1, "file_name": "a.jpg"}], "annotations": [{"image_id": 1, "bbox": [0, 0, 1, 1]}]},
            "instances/keypoints",
        ),
        ({"images": [{"id": 1}], "annotations": []}, "file_name"),
        ({"images": [{"id": 1, "file_name": "a.jpg"}], "annotations": [{"image_id": 2, "caption": "x"}]}, "image_id 2"),
        ({"images": [{"id": 1, "file_name": "a.jpg"}], "annotations": []}, "no captions"),
    ],
)
def test_wrong_layout_is_a_clear_error(tmp_path, data, match):
    path = _write(tmp_path / "bad.json", data)
    with pytest.raises(CocoLayoutError, match=match) as exc:
        sample_prompts(path, 1)
    assert "captions_val2014.json layout" in str(exc.value)


def test_other_errors(captions, tmp_path):
    with pytest.raises(ValueError, match="prompt set would be empty"):
        sample_prompts(captions, 0)
    with pytest.raises(ValueError, match="only 20 captioned images"):
        sample_prompts(captions, 21)
    with pytest.raises(FileNotFoundError, match="eval.coco_captions"):
        sample_prompts(tmp_path / "nope.json", 1)
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(CocoLayoutError, match="not valid JSON"):
        sample_prompts(tmp_path / "broken.json", 1)
