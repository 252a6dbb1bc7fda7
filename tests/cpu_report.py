"""The tests that cost the most CPU, printed beside pytest's wall-clock durations at the end of a run.

A test's wall time in the suite says little about its cost: on 2 cores beside the other xdist worker, a
test whose work runs in Ray's workers (nice 15) waits for CPU far longer than it uses it. This counts each
test's CPU seconds (setup, call and teardown): its own process's and those of the child processes that ended
during it (``os.times``: a subprocess's, with the children it waited for). Ray's workers are children of its
raylet, counted when the session's Ray stops; a session fixture counts in the first test that uses it.
"""

from __future__ import annotations

import os

import pytest

TOP = 25
START = pytest.StashKey[float]()


def cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    item.stash[START] = cpu_seconds()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    if call.when == "teardown" and START in item.stash:
        outcome.get_result().user_properties.append(("cpu_s", cpu_seconds() - item.stash[START]))


def pytest_terminal_summary(terminalreporter):
    costs = [
        (value, report.nodeid)
        for reports in terminalreporter.stats.values()
        for report in reports
        if getattr(report, "when", None) == "teardown"
        for key, value in getattr(report, "user_properties", ())
        if key == "cpu_s"
    ]
    if not costs:
        return
    costs.sort(reverse=True)
    total = sum(c for c, _ in costs)
    shown = costs[:TOP]
    terminalreporter.write_sep("=", f"most CPU, {len(shown)} of {len(costs)} tests ({total:.0f} CPU-s in all)")
    for cost, nodeid in shown:
        terminalreporter.write_line(f"{cost:8.1f} CPU-s  {nodeid}")
