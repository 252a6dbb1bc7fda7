"""``tokenization.synthetic``: the eval split (seed + 1) is not the train split (seed) shifted by one image, which
a scene seeded by ``seed + index`` would make it (every eval caption then a train caption: the evaluation would
score memorised pairs); ``canonical_caption`` restates the shapes in ``POSITIONS`` order, top left first."""

from __future__ import annotations

from tokenization.synthetic import POSITIONS, canonical_caption, caption, parse_caption, scene_for


def test_eval_scenes_are_not_the_train_scenes_shifted():
    train = [caption(scene_for(0, i, 1, 4)) for i in range(1, 41)]
    evals = [caption(scene_for(1, i, 1, 4)) for i in range(40)]
    assert sum(a == b for a, b in zip(train, evals)) < 5  # shapes of up to 4 objects rarely agree by chance


def test_canonical_caption_orders_the_shapes_top_left_first():
    text = (
        "a large blue square at the bottom right and a small red circle at the top right and "
        "a large green triangle at the bottom left and a small yellow square at the top left"
    )
    canon = canonical_caption(text)
    assert [s.position for s in parse_caption(canon).shapes] == list(POSITIONS)
    assert canon.startswith("a small yellow square at the top left and a small red circle at the top right")
    assert canonical_caption("a small red circle at the bottom left and a large blue square at the top right") == (
        "a large blue square at the top right and a small red circle at the bottom left"
    )
