"""Which stages a rerun redoes and what it says: the reason a stage runs again, a failed redo never leaving the
old manifest to vouch for a half-rewritten folder, a lineage of exactly the inputs read, ``will_run`` with
``--force`` and disabled stages, ``--stage``/``--from`` selection, and hashes that ignore mapping order."""

from __future__ import annotations

import pytest

from core.config import config_hash, to_yaml
from core.stage import Stage, read_manifest
from pipeline.runner import config_changes, is_finished, run_stage, run_stages, stage_state, will_run
from tests.test_stage_runner import Cfg, Sec


def quiet(_msg: str) -> None:
    pass


def test_a_rerun_says_which_setting_or_input_changed(tmp_path):
    first = Stage("first", lambda ctx: {}, (), ("a",))
    second = Stage("second", lambda ctx: {}, ("first",), ("b",))
    run_stage(Cfg(), tmp_path, first, log=quiet)
    run_stage(Cfg(), tmp_path, second, log=quiet)
    logs: list[str] = []
    cfg = Cfg(a=Sec(2))
    run_stage(cfg, tmp_path, first, log=logs.append)
    run_stage(cfg, tmp_path, second, log=logs.append)
    assert "[first] stale: config changed (a.n: 1 -> 2)" in logs
    assert "[second] stale: input first was redone" in logs


def test_a_failed_redo_leaves_the_stage_unfinished_and_its_readers_stale(tmp_path):
    """While a stale stage runs again its folder is being rewritten: the old manifest must not keep vouching
    for it, or a crash leaves its readers current on a half-rewritten input."""

    def writes(ctx):
        (ctx.out_dir / "data.txt").write_text(str(ctx.config.a.n))
        if ctx.config.a.n == 2:
            raise RuntimeError("crash half way")
        return {}

    first = Stage("first", writes, (), ("a",))
    second = Stage("second", lambda ctx: {}, ("first",), ("b",))
    run_stage(Cfg(), tmp_path, first, log=quiet)
    run_stage(Cfg(), tmp_path, second, log=quiet)
    with pytest.raises(RuntimeError, match="crash"):
        run_stage(Cfg(a=Sec(2)), tmp_path, first, log=quiet)
    assert (tmp_path / "first" / "data.txt").read_text() == "2"  # rewritten in place
    assert read_manifest(tmp_path / "first") == {}
    assert stage_state(Cfg(), tmp_path, first).state == "unfinished"  # even under the config it was made with
    state = stage_state(Cfg(), tmp_path, second)
    assert state.state == "stale" and state.why == "input first is not finished"
    logs: list[str] = []
    run_stage(Cfg(), tmp_path, first, log=logs.append)  # the rerun says why the stage runs again
    assert (
        logs[0]
        == "[first] unfinished: a run before stopped inside it (killed, interrupted or failed); running it again"
    )


def test_a_stage_that_stops_reading_an_input_runs_again(tmp_path):
    x = Stage("x", lambda ctx: {}, (), ("a",))
    r = Stage("r", lambda ctx: {}, ("x",), ("a",), needs=lambda cfg: ("x",) if cfg.b.n == 1 else ())
    run_stage(Cfg(), tmp_path, x, log=quiet)
    run_stage(Cfg(), tmp_path, r, log=quiet)
    assert is_finished(Cfg(), tmp_path, r)
    state = stage_state(Cfg(b=Sec(2)), tmp_path, r)  # r's sections are unchanged; what it reads is not
    assert state.state == "stale" and state.why == "no longer reads x"


def test_the_lineage_holds_exactly_the_inputs_the_stage_reads_with_its_config(tmp_path):
    x = Stage("x", lambda ctx: {}, (), ("a",))
    y = Stage("y", lambda ctx: {}, (), ("b",))
    r = Stage("r", lambda ctx: {}, ("x", "y"), ("a",), needs=lambda cfg: ("x",))
    run_stage(Cfg(), tmp_path, x, log=quiet)
    m = run_stage(Cfg(), tmp_path, r, log=quiet)  # y never ran: r does not read it with this config
    assert m["inputs"] == {"x": read_manifest(tmp_path / "x")["fingerprint"]}
    assert is_finished(Cfg(), tmp_path, r)
    run_stage(Cfg(), tmp_path, y, log=quiet)
    run_stage(Cfg(), tmp_path, y, force=True, log=quiet)  # a stage r does not read: r stays current
    assert is_finished(Cfg(), tmp_path, r)


def test_will_run_counts_force_and_leaves_out_disabled_stages(tmp_path):
    a = Stage("a", lambda ctx: {}, (), ("a",))
    off = Stage("off", lambda ctx: {}, (), ("b",), enabled=lambda cfg: False)
    c = Stage("c", lambda ctx: {}, ("a",), ("b",))
    stages = [a, off, c]
    assert will_run(Cfg(), tmp_path, stages) == ["a", "c"]
    run_stages(Cfg(), tmp_path, stages, log=quiet)
    assert will_run(Cfg(), tmp_path, stages) == []
    assert will_run(Cfg(), tmp_path, stages, force=True) == ["a", "c"]
    assert will_run(Cfg(b=Sec(2)), tmp_path, stages) == ["c"]
    assert will_run(Cfg(a=Sec(2)), tmp_path, stages) == ["a", "c"]  # c reads a, which runs before it


def test_a_run_records_its_config_in_the_run_directory_even_when_every_stage_is_current(tmp_path):
    a = Stage("a", lambda ctx: {}, (), ("a",))
    run_stages(Cfg(), tmp_path, [a], log=quiet)
    assert (tmp_path / "config.yaml").read_text() == to_yaml(Cfg())
    run_stages(Cfg(b=Sec(5)), tmp_path, [a], log=quiet)  # a is current (it does not read b)
    assert (tmp_path / "config.yaml").read_text() == to_yaml(Cfg(b=Sec(5)))


def test_stage_and_from_select_stages_in_pipeline_order():
    from pipeline.cli import _named_stages
    from pipeline.runner import order_stages

    assert [s.name for s in order_stages(["train", "tokenize"])] == ["tokenize", "train"]
    assert [s.name for s in _named_stages(["evaluate", "sample"])] == ["sample", "evaluate"]
    every = [s.name for s in order_stages()]
    chosen = [s.name for s in _named_stages(None, "train")]
    assert chosen == every[every.index("train") :]
    assert chosen[0] == "train" and "tokenize" not in chosen and {"sample", "evaluate"} <= set(chosen)


def test_hashes_ignore_the_order_of_a_mapping_setting():
    """``data.mixing.weights`` written in another order in the YAML is the same setting: no stage reruns."""
    from tokenization.source_config import MixingConfig

    a = MixingConfig(rule="weighted", weights={"laion": 1.0, "cc3m": 2.0})
    b = MixingConfig(rule="weighted", weights={"cc3m": 2.0, "laion": 1.0})
    assert config_hash(a) == config_hash(b)
    assert config_hash(a) != config_hash(MixingConfig(rule="weighted", weights={"laion": 2.0, "cc3m": 1.0}))


def test_the_change_message_tells_a_new_or_removed_key_from_a_none_value():
    assert config_changes({"s": {"k": None}}, {"s": {}}) == "s.k: None -> '(unset)'"
    assert config_changes({"s": {}}, {"s": {"k": None}}) == "s.k: '(unset)' -> None"
    assert config_changes({"s": {"k": 1, "j": 2}}, {"s": {"k": 1, "j": 3}}) == "s.j: 2 -> 3"
