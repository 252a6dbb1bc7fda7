"""The run summary's time column and its total: a reused stage shows the time it took when it ran but is not
time spent in this run; a stage that never ran shows no time."""

from __future__ import annotations

from pipeline.summary import StageRow, format_table


def test_the_total_counts_only_what_ran_here():
    rows = [
        StageRow("synthetic", "reused", 9.1, "3000 train / 64 eval images"),
        StageRow("train", "ran", 2.0),
        StageRow("evaluate", "failed", 1.5),
        StageRow("sample", "not run", 7.0),
    ]
    lines = format_table(rows).splitlines()
    assert lines[1] == "synthetic  reused       9.1s  3000 train / 64 eval images"
    assert lines[3] == "evaluate   failed       1.5s  "
    assert lines[4] == "sample     not run            "
    assert lines[5].split() == ["3.5s", "time", "spent", "in", "this", "run"]
