"""The stage runner: manifests, skipping finished stages, declared inputs only, order and status."""

import os
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


def test_a_rerun_removes_the_half_written_files_of_a_stopped_one(tmp_path):
    """A killed writer's temporary file carries its pid in its name: no later run would reuse it. The next run
    of the stage deletes every one in its folder (a tokenize run killed with 64 actors leaves 64 partial shards)."""
    from core.files import temp_name

    calls, logs = [], []
    first = make_stages(calls)[0]
    left = [temp_name(tmp_path / "first" / "x.txt"), temp_name(tmp_path / "first" / "train" / "laion" / "00000.tar")]
    for p in left:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"0" * 1024)
    (tmp_path / "first" / ".hidden").write_text("kept")
    run_stage(Cfg(), tmp_path, first, log=logs.append)
    assert not any(p.exists() for p in left) and (tmp_path / "first" / ".hidden").is_file()
    assert "[first] removed 2 temporary file(s) (0.0 MiB) a stopped run left half-written" in logs, logs


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


def test_status_says_current_stale_and_why(tmp_path, capsys):
    """``pt2i status CONFIG``: current stages, a stale one naming the changed key, unfinished, missing."""
    from pipeline.experiment import load_config
    from pipeline.runner import registry

    root = __import__("pathlib").Path(__file__).resolve().parents[1]
    cfg = load_config(root / "configs" / "tiny.yaml", [f"run_dir={tmp_path}"])
    reg = registry()
    fake = Stage("synthetic", lambda ctx: {"counts": {"train": 3}, "identity": "same"}, (), reg["synthetic"].sections)
    run_stage(cfg, tmp_path, fake, log=lambda m: None)
    (tmp_path / "download").mkdir()
    config = root / "configs" / "tiny.yaml"
    assert main(["status", str(config), "--set", f"run_dir={tmp_path}"]) == 0
    out = capsys.readouterr().out
    assert "synthetic    current" in out and '"train": 3' in out
    assert "download     unfinished" in out and "train        missing" in out
    assert main(["status", str(config), "--set", f"run_dir={tmp_path}", "--set", "data.synthetic.n_train=7"]) == 0
    out = capsys.readouterr().out
    assert "synthetic    stale" in out and "n_train: 3000 -> 7" in out
    fake_download = Stage("download", lambda ctx: {"counts": {"count": 3}}, ("synthetic",), reg["download"].sections)
    run_stage(cfg, tmp_path, fake_download, log=lambda m: None)
    assert main(["status", str(config), "--set", f"run_dir={tmp_path}"]) == 0
    assert "download     current" in capsys.readouterr().out  # its input is as it recorded
    assert main(["status", str(config), "--set", f"run_dir={tmp_path}", "--set", "data.synthetic.n_train=7"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("download"))
    assert line.split()[1] == "current" and line.endswith(  # now, but not once synthetic is redone
        "(until synthetic is redone: a run redoes synthetic first, then this stage if synthetic's output changes)"
    ), line
    from pipeline.status_runs import run_line  # the same in the one line per run of a folder of runs

    changed = load_config(config, [f"run_dir={tmp_path}", "data.synthetic.n_train=7"])
    line = run_line(tmp_path, lambda rd: changed)
    assert "1/8 stages current; current until synthetic is redone: download; stale: synthetic; missing: " in line
    line = run_line(tmp_path, lambda rd: cfg).split(": ", 1)[1]  # after the folder's name
    assert line.startswith("2/8 stages current; missing: ") and "until" not in line and "stale" not in line, line
    assert main(["status", str(tmp_path)]) == 0  # a run directory: its last config
    out = capsys.readouterr().out
    assert "synthetic    current" in out and "a run is using it now" not in out
    from pipeline.runner import run_lock

    with run_lock(tmp_path):  # a run in progress: status says so (its stage shows as unfinished either way)
        assert main(["status", str(tmp_path)]) == 0
    assert f"a run is using it now: pid {os.getpid()} on " in capsys.readouterr().out
    assert main(["status", str(tmp_path)]) == 0 and "a run is using it now" not in capsys.readouterr().out


def test_force_starts_from_an_empty_folder(tmp_path):
    def writes(ctx):
        (ctx.out_dir / f"made-{ctx.config.a.n}.txt").write_text("x")
        return {}

    st = Stage("w", writes, (), ("a",))
    run_stage(Cfg(), tmp_path, st, log=lambda m: None)
    (tmp_path / "w" / "leftover.tmp").write_text("debris")
    run_stage(Cfg(a=Sec(2)), tmp_path, st, force=True, log=lambda m: None)
    assert sorted(p.name for p in (tmp_path / "w").iterdir()) == ["config.yaml", "made-2.txt", "manifest.json"]
    assert not list(tmp_path.glob(".w.replaced-*"))  # the old folder is gone once the new one is complete

    def fails(ctx):
        raise RuntimeError("half way")

    with pytest.raises(RuntimeError):
        run_stage(Cfg(), tmp_path, Stage("w", fails, (), ("a",)), force=True, log=lambda m: None)
    (aside,) = tmp_path.glob(".w.replaced-*")  # a failed redo keeps the old output aside
    assert (aside / "made-2.txt").is_file()
    run_stage(Cfg(), tmp_path, st, force=True, log=lambda m: None)
    assert not list(tmp_path.glob(".w.replaced-*"))


def test_a_truncated_manifest_is_unfinished_and_an_identity_keeps_readers_current(tmp_path):
    calls = []
    first, second, _ = make_stages(calls)
    same = Stage("first", lambda ctx: {"identity": "content-1"}, (), ("a",))
    run_stage(Cfg(), tmp_path, same, log=lambda m: None)
    run_stage(Cfg(), tmp_path, Stage("second", lambda ctx: {}, ("first",), ("b",)), log=lambda m: None)
    second_done = Stage("second", lambda ctx: {}, ("first",), ("b",))
    run_stage(Cfg(), tmp_path, same, force=True, log=lambda m: None)  # redone, same content
    assert is_finished(Cfg(), tmp_path, second_done)  # its reader stays current
    (tmp_path / "first" / "manifest.json").write_text('{"stage": "fir')  # cut by a crash
    from pipeline.runner import stage_state

    assert stage_state(Cfg(), tmp_path, same).state == "unfinished"
    assert stage_state(Cfg(), tmp_path, second_done).state == "stale"


def test_an_upstream_change_with_the_same_output_keeps_its_readers_current(tmp_path):
    """A setting that does not change what a stage produces (an actor count, a timeout) reruns that stage, which
    says its output is the same, and leaves the stages that read it current; a change of its output does not."""
    made = []

    def upstream(ctx):  # its output depends on a.n's parity only
        made.append(ctx.config.a.n)
        return {"identity": f"content-{ctx.config.a.n % 2}"}

    first = Stage("first", upstream, (), ("a",))
    reader = Stage("second", lambda ctx: {}, ("first",), ("b",))
    logs: list[str] = []
    run_stage(Cfg(), tmp_path, first, log=logs.append)
    run_stage(Cfg(), tmp_path, reader, log=logs.append)
    assert not any("same output" in m for m in logs)  # a first run says nothing of the kind

    cfg = Cfg(a=Sec(n=3))  # another setting, the same output
    assert not is_finished(cfg, tmp_path, first) and is_finished(cfg, tmp_path, reader)
    run_stage(cfg, tmp_path, first, log=logs.append)
    assert made == [1, 3] and is_finished(cfg, tmp_path, first) and is_finished(cfg, tmp_path, reader)
    assert any(m.startswith("[first] the same output as before") for m in logs)

    cfg = Cfg(a=Sec(n=4))  # another output: its reader must run again
    logs.clear()
    run_stage(cfg, tmp_path, first, log=logs.append)
    assert not any("same output" in m for m in logs)
    from pipeline.runner import stage_state

    assert stage_state(cfg, tmp_path, reader).why == "input first was redone"


def test_needs_and_enabled(tmp_path):
    seen = []
    reads = Stage("r", lambda ctx: seen.append(ctx.config.a.n), ("x",), ("a",), needs=lambda cfg: ())
    off = Stage("x", lambda ctx: seen.append("x"), (), ("a",), enabled=lambda cfg: cfg.a.n == 1)
    run_stages(Cfg(a=Sec(2)), tmp_path, [off, reads], log=lambda m: None)
    assert seen == [2]  # x is not part of this run and r does not need it


def test_a_second_run_on_the_same_folder_is_refused(tmp_path):
    from pipeline.runner import run_lock

    with run_lock(tmp_path):
        with pytest.raises(StageError, match=rf"in use by pid {__import__('os').getpid()}"):
            run_stages(Cfg(), tmp_path, [Stage("x", lambda ctx: {})], log=lambda m: None)
    run_stages(Cfg(), tmp_path, [Stage("x", lambda ctx: {})], log=lambda m: None)  # released


def test_a_status_probe_at_the_instant_a_run_starts_does_not_refuse_the_run(tmp_path):
    """``pt2i status`` probes the lock with a shared lock held for an instant: a run starting then waits it out
    instead of failing as "in use" (here the probe is held for 30 ms)."""
    import fcntl
    import threading
    import time

    from pipeline.runner import LOCK, lock_holder, run_lock

    with run_lock(tmp_path):
        pass
    assert lock_holder(tmp_path) is None
    fd = os.open(tmp_path / LOCK, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    release = threading.Timer(0.03, os.close, (fd,))
    release.start()
    t0 = time.time()
    with run_lock(tmp_path):
        assert time.time() - t0 >= 0.02
    release.join()


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


def test_errors_end_pt2i_with_one_line_and_stages_can_be_listed_after_one_flag(tmp_path, capsys):
    from pipeline.cli import build_parser

    args = build_parser().parse_args(["run", "c.yaml", "--stage", "tokenize", "train", "--stage", "sample"])
    assert args.stage == ["tokenize", "train", "sample"]
    root = __import__("pathlib").Path(__file__).resolve().parents[1]
    config = [str(root / "configs" / "tiny.yaml"), "--set", f"run_dir={tmp_path}"]
    assert main(["run", *config, "--stage", "train"]) == 1  # its inputs never ran
    err = capsys.readouterr().err
    assert err.startswith("error (StageError): stage 'train' needs stage 'tokenize' first") and "Traceback" not in err
    assert main(["run", str(tmp_path / "missing.yaml")]) == 2
    assert "config error:" in capsys.readouterr().err
    for flags in (["--stage", "tokenise"], ["--from", "tokenise"]):  # a misspelt stage: a usage error, as a key's
        assert main(["run", *config, *flags]) == 2
        err = capsys.readouterr().err
        head, _, known = err.partition("; known: ")
        assert head == f"config error: {flags[0]}: unknown stage 'tokenise'" and err.count("\n") == 1
        names = known.strip().split(", ")  # in an order the stages can run in (text and tokenizer: either first)
        assert names[:2] == ["synthetic", "download"]
        assert names.index("tokenize") > max(names.index("text"), names.index("tokenizer"))
        assert names.index("evaluate") > names.index("sample") > names.index("train") > names.index("tokenize")
    sweep = [str(root / "configs" / "ablations" / "table3-orders.yaml"), "--plan"]
    assert main(["sweep", *sweep, "--jobs", "2", "--address", "http://127.0.0.1:1"]) == 2  # --jobs is local only
    assert "--max-concurrent" in capsys.readouterr().err
    with pytest.raises(StageError):  # --debug: the exception itself, with its traceback
        main(["--debug", "run", *config, "--stage", "train"])


def test_a_missing_file_fails_the_run_before_its_first_stage(tmp_path):
    """A local path a stage of this run reads (a checkpoint, weights, a url list) is checked before any stage
    starts; a stage that will not run (current, and nothing it reads runs) and a setting the run does not read
    (FID weights without FID) are not checked."""
    from pathlib import Path

    from pipeline.experiment import load_config

    root = Path(__file__).resolve().parents[1]
    calls = []

    def text(ctx):
        calls.append("text")

    def evaluate(ctx):
        ctx.input_dir("text")
        calls.append("evaluate")

    stages = [Stage("text", text, (), ("text_encoder",)), Stage("evaluate", evaluate, ("text",), ("eval",))]

    def cfg(*overrides):
        return load_config(root / "configs" / "tiny.yaml", [f"run_dir={tmp_path}", *overrides])

    weights, t5 = f"eval.inception_weights={tmp_path / 'inception.pth'}", f"text_encoder.path={tmp_path / 't5'}"
    with pytest.raises(StageError) as err:
        run_stages(cfg(weights, t5), tmp_path, stages, log=lambda m: None)
    assert str(err.value) == (
        f"2 file(s) this run reads do not exist: text_encoder.path: {tmp_path / 't5'} (read by the text stage); "
        f"eval.inception_weights: {tmp_path / 'inception.pth'} (read by the evaluate stage). Fix the path, or "
        "unset the setting if this run does not need it"
    )
    assert calls == [] and not (tmp_path / "text").exists()
    run_stages(cfg(), tmp_path, stages[:1], log=lambda m: None)  # text is current from here on
    with pytest.raises(StageError, match="^1 file.*eval.inception_weights"):
        run_stages(cfg(weights), tmp_path, stages, log=lambda m: None)
    coco = [f"eval.coco_captions={tmp_path / 'captions.json'}", f"eval.coco_images={tmp_path / 'val2014'}"]
    run_stages(cfg(weights, "eval.metrics=[attributes]", *coco), tmp_path, stages, log=lambda m: None)  # no FID,
    # and the synthetic source is evaluated on its own eval split, never on COCO
    assert calls == ["text", "evaluate"]
    (tmp_path / "inception.pth").write_text("x")
    run_stages(cfg(weights), tmp_path, stages, log=lambda m: None)
    assert calls == ["text", "evaluate", "evaluate"]
    (tmp_path / "inception.pth").unlink()
    run_stages(cfg(weights), tmp_path, stages, log=lambda m: None)  # both current: nothing runs, nothing checked
    with pytest.raises(StageError, match="^1 file.*eval.inception_weights"):  # evaluate reads text, which reruns
        run_stages(cfg(weights, "text_encoder.tiny_max_captions=7"), tmp_path, stages, log=lambda m: None)
    assert calls == ["text", "evaluate", "evaluate"]


def test_every_file_the_preflight_checks_is_a_path_setting():
    """The preflight's list and the path marks that ``pt2i submit`` makes absolute name the same settings."""
    import dataclasses
    import typing

    from pipeline.experiment import ExperimentConfig
    from pipeline.preflight import NEEDED

    def field_of(cls, dotted: str):
        for part in dotted.replace("[]", "").split("."):
            f = {f.name: f for f in dataclasses.fields(cls)}[part]
            tp = typing.get_type_hints(cls)[part]
            args = [a for a in typing.get_args(tp) if dataclasses.is_dataclass(a)]
            cls = args[0] if args else tp
        return f

    for _, dotted, _ in NEEDED:
        assert field_of(ExperimentConfig, dotted).metadata.get("path"), dotted
