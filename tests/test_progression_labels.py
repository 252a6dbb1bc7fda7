"""The progression figure (``evaluation.figures.save_progression_rows``) labels its columns with 1-based step
numbers: the first column is step 1, the last step T (the final sample), whichever steps are shown."""

from __future__ import annotations

import numpy as np
import pytest


def _rows(n_rows: int, n_steps: int) -> list[list[np.ndarray]]:
    rng = np.random.default_rng(0)
    return [[rng.integers(0, 256, (8, 8, 3), dtype=np.uint8) for _ in range(n_steps)] for _ in range(n_rows)]


@pytest.mark.parametrize(
    "n_steps, max_columns, shown",
    [
        (4, 8, "1, 2, 3, 4"),  # every step
        (10, 4, "1, 4, 7, 10"),  # pick_steps(10, 4) = [0, 3, 6, 9]: first and last step included
    ],
)
def test_progression_rows_label_their_steps_from_one(tmp_path, monkeypatch, n_steps, max_columns, shown):
    import evaluation.figures as figures

    texts = []
    real = figures._captioned

    def spy(frame, text, *args, **kwargs):
        texts.append(text)
        return real(frame, text, *args, **kwargs)

    monkeypatch.setattr(figures, "_captioned", spy)
    captions = ["a red square", "a blue circle"]
    paths = figures.save_progression_rows(
        _rows(2, n_steps), captions, tmp_path / "p.png", tmp_path / "p.gif", max_columns=max_columns
    )
    assert paths["png"].is_file() and paths["gif"].is_file()
    strip_labels = [t for t in texts if "(steps" in t]
    assert strip_labels == [f"{c} (steps {shown})" for c in captions]
