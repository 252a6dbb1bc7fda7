"""The report's matplotlib figures draw in matplotlib's default style: a matplotlibrc cannot change them."""

import hashlib

import matplotlib
import pytest

from evaluation.figures import save_loss_curve
from pipeline.sweep_report import save_plot

RECORDS = [{"step": s, "loss": 5.0 / s, "token_acc": 0.1 * s} for s in range(1, 6)]
ROWS = [
    {"variant": v, "values": {"acc": {"mean": m, "sd": 0.01, "seeds": {"0": m - 0.01, "1": m + 0.01}}}}
    for v, m in (("a", 0.5), ("b", 0.7))
]


def _draw_both(folder):
    loss = save_loss_curve(RECORDS, folder / "loss.png")
    bars = save_plot(ROWS, "acc", "attribute match", "demo", folder / "bars.png")
    return [hashlib.sha256(p.read_bytes()).hexdigest() for p in (loss, bars)]


@pytest.fixture
def user_style():
    """What a matplotlibrc of the user's sets (read when pyplot is imported): a red face, thick lines."""
    with matplotlib.rc_context({"axes.facecolor": "red", "lines.linewidth": 6, "figure.dpi": 50}):
        yield


def test_a_user_matplotlibrc_changes_no_figure(tmp_path, user_style):
    (tmp_path / "styled").mkdir()
    styled = _draw_both(tmp_path / "styled")
    with matplotlib.rc_context(matplotlib.rcParamsDefault):
        (tmp_path / "plain").mkdir()
        plain = _draw_both(tmp_path / "plain")
    assert styled == plain
    assert matplotlib.rcParams["axes.facecolor"] == "red"  # the caller's style is left as it was
