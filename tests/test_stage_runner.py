"""The stage runner: manifests, skipping finished stages, declared inputs only, order and status."""

import json
from dataclasses import dataclass, field

import pytest

from core.stage import Stage, StageError
from pipeline.cli import main
from pipeline.runner import is_finished, order_stages, run_stage, run_stages


@dataclass
class Sec:
    n: int = 1


@dataclass
class Cfg:
    a: Sec = field(default_factory=Sec)
    b: Sec = field(default_factory=Sec)


def make_stages(calls):
    def first(ctx):
        calls.append("first")
        (ctx.out_dir / "x.txt").write_text(str(ctx.config.a.n))
        return {"counts": {"written": 1}}

    def second(ctx):
        calls.append("second")
        src = ctx.input_dir("first") / "x.txt"
        return {"counts": {"read": int(src.read_text())}}

    def sneaky(ctx):
        ctx.input_dir("first")  # not declared

    return (
        Stage("first", first, (), ("a",)),
        Stage("second", second, ("first",), ("b",)),
        Stage("sneaky", sneaky, (), ()),
    )


def test_manifest_skip_force_and_inputs(tmp_path):
    calls = []
    first, second, sneaky = make_stages(calls)
    cfg = Cfg()
    with pytest.raises(StageError, match="needs stage 'first' first"):
        run_stage(cfg, tmp_path, second)
    m = run_stage(cfg, tmp_path, first)
    assert m["counts"] == {"written": 1} and m["config_hash"] and (tmp_path / "first" / "config.yaml").is_file()
    run_stage(cfg, tmp_path, second)
    assert calls == ["first", "second"]
    run_stage(cfg, tmp_path, first)  # finished: skipped
    run_stage(cfg, tmp_path, second)
    assert calls == ["first", "second"]
    run_stage(cfg, tmp_path, first, force=True)  # redone -> its fingerprint changes -> second is stale
    assert not is_finished(cfg, tmp_path, second)
    run_stage(cfg, tmp_path, second)
    assert calls == ["first", "second", "first", "second"]
    cfg.b.n = 2  # only second's section changed
    assert is_finished(cfg, tmp_path, first) and not is_finished(cfg, tmp_path, second)
    with pytest.raises(StageError, match="did not declare 'first'"):
        run_stage(cfg, tmp_path, sneaky)


def test_a_failed_stage_leaves_no_manifest(tmp_path):
    def boom(ctx):
        raise RuntimeError("half way")

    with pytest.raises(RuntimeError):
        run_stage(Cfg(), tmp_path, Stage("boom", boom))
    assert (tmp_path / "boom").is_dir() and not (tmp_path / "boom" / "manifest.json").exists()


def test_real_stages_are_in_dependency_order():
    names = [s.name for s in order_stages()]
    for before, after in [
        ("synthetic", "download"),
        ("download", "tokenize"),
        ("tokenizer", "tokenize"),
        ("text", "tokenize"),
        ("tokenize", "train"),
    ]:
        assert names.index(before) < names.index(after)
    with pytest.raises(StageError, match="unknown stage"):
        order_stages(["nope"])


def test_status_command(tmp_path, capsys):
    (tmp_path / "synthetic").mkdir()
    (tmp_path / "synthetic" / "manifest.json").write_text(json.dumps({"seconds": 1.5, "counts": {"train": 3}}))
    (tmp_path / "download").mkdir()
    assert main(["status", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "synthetic    finished" in out and '"train": 3' in out and "download     started" in out


def test_one_ray_session_for_the_whole_run_started_only_when_a_ray_stage_runs(tmp_path):
    import contextlib

    events = []

    @contextlib.contextmanager
    def ray_session():
        events.append("ray up")
        yield
        events.append("ray down")

    def step(name):
        def fn(ctx):
            events.append(name)

        return fn

    plain = Stage("plain", step("plain"))
    on_ray = [Stage(n, step(n), uses_ray=lambda cfg: cfg.a.n == 1) for n in ("ray1", "ray2")]
    stages = [plain, on_ray[0], Stage("middle", step("middle")), on_ray[1]]
    run_stages(Cfg(), tmp_path, stages, log=lambda *_: None, ray_session=ray_session)
    assert events == ["plain", "ray up", "ray1", "middle", "ray2", "ray down"]  # once, from the first Ray stage on

    events.clear()  # everything finished: nothing runs, no Ray starts
    run_stages(Cfg(), tmp_path, stages, log=lambda *_: None, ray_session=ray_session)
    assert events == []
    events.clear()  # a config under which no stage needs Ray
    run_stages(Cfg(a=Sec(2)), tmp_path / "other", stages, log=lambda *_: None, ray_session=ray_session)
    assert events == ["plain", "ray1", "middle", "ray2"]


def test_real_stages_say_when_they_run_on_ray(tmp_path):
    from pipeline.experiment import load_config
    from pipeline.runner import registry

    root = __import__("pathlib").Path(__file__).resolve().parents[1]
    reg = registry()
    local = load_config(root / "configs" / "tiny.yaml", [f"run_dir={tmp_path}"])
    assert [n for n, st in reg.items() if st.uses_ray(local)] == ["tokenize"]  # the demo: one Ray stage
    remote = load_config(
        root / "configs" / "tiny.yaml", [f"run_dir={tmp_path}", "cluster.address=auto", "cluster.launcher=ray"]
    )
    assert {n for n, st in reg.items() if st.uses_ray(remote)} >= {"download", "tokenize", "train", "sample"}
