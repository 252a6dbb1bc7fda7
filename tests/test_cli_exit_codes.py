"""``pt2i``'s exit codes and one-line messages: 2 for a usage or config error (a non-positive
--connect-timeout or --max-concurrent, before anything connects or runs), 130 for Ctrl-C, 1 for any other
error, whose first line is shown with the hint to --debug."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline import cli

ROOT = Path(__file__).resolve().parents[1]


def test_bad_counts_and_timeouts_are_usage_errors(tmp_path, capsys):
    tiny = str(ROOT / "configs" / "tiny.yaml")
    argv = ["submit", tiny, "--address", "http://127.0.0.1:1", "--connect-timeout", "0", "--set", f"run_dir={tmp_path}"]
    assert cli.main(argv) == 2
    assert capsys.readouterr().err == "config error: --connect-timeout must be > 0, got 0\n"
    sweep = str(ROOT / "configs" / "ablations" / "table3-orders.yaml")
    assert cli.main(["sweep", sweep, "--max-concurrent", "0", "--plan"]) == 2
    assert "--jobs and --max-concurrent must be >= 1, got 1 and 0" in capsys.readouterr().err


def test_a_run_dir_that_cannot_be_created_is_a_config_error(capsys):
    tiny = ROOT / "configs" / "tiny.yaml"
    assert cli.main(["run", str(tiny), "--stage", "synthetic", "--set", "run_dir=/proc/pt2i-run"]) == 2
    err = capsys.readouterr().err
    assert err == f"config error: {tiny}: run_dir: cannot create /proc/pt2i-run (No such file or directory)\n", err


@pytest.mark.parametrize(
    "exc, code, err",
    [
        (KeyboardInterrupt(), 130, "interrupted\n"),
        (RuntimeError("the launcher exited with 1\ndetail"), 1, "error (RuntimeError): the launcher exited with 1\n"),
        (OSError(), 1, "error (OSError): OSError\n"),
    ],
)
def test_exit_codes_of_interrupts_and_errors(monkeypatch, capsys, exc, code, err):
    def boom(args):
        raise exc

    monkeypatch.setitem(cli.COMMANDS, "stages", boom)
    assert cli.main(["stages"]) == code
    got = capsys.readouterr().err
    assert got.startswith(err) and (code == 130 or got.endswith("(pt2i --debug ... shows the traceback)\n"))
    with pytest.raises(type(exc)):
        cli.main(["--debug", "stages"])  # --debug: the traceback


def test_status_of_a_run_directory_reads_its_last_runs_config(tmp_path, capsys):
    import os

    from core.config import to_yaml
    from pipeline.experiment import load_config

    text = to_yaml(load_config(ROOT / "configs" / "tiny.yaml", [f"run_dir={tmp_path}"]))
    assert cli.main(["status", str(tmp_path)]) == 2
    assert "no stage has run in this directory" in capsys.readouterr().err
    (tmp_path / "config.yaml").write_text(text)
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "config.yaml").write_text(text)
    os.utime(tmp_path / "config.yaml", (1, 1))  # older than the stage's copy: the run's own still wins
    assert cli.main(["status", str(tmp_path)]) == 0
    assert capsys.readouterr().out.splitlines()[0] == f"run directory {tmp_path} (config: {tmp_path / 'config.yaml'})"
    (tmp_path / "config.yaml").unlink()
    assert cli.main(["status", str(tmp_path)]) == 0
    assert f"(config: {tmp_path / 'train' / 'config.yaml'})" in capsys.readouterr().out.splitlines()[0]


def test_status_of_a_run_directory_whose_config_no_longer_loads_says_what_to_give_instead(tmp_path, capsys):
    """A run directory written by another version (a key since renamed) or edited by hand: one line naming the
    file and the key, and the way out."""
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "config.yaml").write_text("name: old\ntrain:\n  renamed_key: 1\n")
    assert cli.main(["status", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"config error: {tmp_path / 'train' / 'config.yaml'}") and "renamed_key" in err, err
    assert f"give the experiment YAML instead (pt2i {{status,run}} CONFIG --set run_dir={tmp_path})" in err
    assert len(err.strip().splitlines()) == 1


def test_run_on_a_run_directory_runs_again_with_its_last_config(tmp_path, monkeypatch, capsys):
    """``pt2i run RUN_DIR`` (and ``submit``): the resume after a failure or Ctrl-C, with the config that run used
    (and --set)."""
    import pipeline.runner as runner
    from core.config import to_yaml
    from pipeline.experiment import load_config

    seen = []
    monkeypatch.setattr(runner, "run_stages", lambda cfg, run_dir, stages, **kw: seen.append((cfg, stages)) or [])
    moved = tmp_path / "moved"  # the folder was renamed since: its own place wins over the recorded run_dir
    moved.mkdir()
    cfg = load_config(ROOT / "configs" / "tiny.yaml", [f"run_dir={tmp_path / 'old'}", "train.lr=0.00123"])
    (moved / "config.yaml").write_text(to_yaml(cfg))
    assert cli.main(["run", str(moved), "--stage", "train", "--set", "train.steps=7"]) == 0
    ((got, stages),) = seen
    assert got.train.lr == 0.00123 and got.train.steps == 7 and Path(got.run_dir) == moved.resolve()
    assert [st.name for st in stages] == ["train"]
    assert f"[run] {moved} with the config of its last run ({moved / 'config.yaml'})" in capsys.readouterr().out
    import cluster.submit as submit_module

    sent = []
    monkeypatch.setattr(submit_module, "submit", lambda text, run_dir, *a, **kw: sent.append((text, run_dir)) or 0)
    assert cli.main(["submit", str(moved), "--address", "http://127.0.0.1:1", "--set", "train.steps=9"]) == 0
    ((text, run_dir),) = sent  # the job's config: the run's last one, --set on top
    assert Path(run_dir) == moved.resolve() and "lr: 0.00123" in text and "steps: 9" in text
    assert f"[submit] {moved} with the config of its last run" in capsys.readouterr().out
    assert cli.main(["run", str(tmp_path / "empty_does_not_exist")]) == 2
    (tmp_path / "empty").mkdir()
    assert cli.main(["run", str(tmp_path / "empty")]) == 2
    assert "no stage has run in this directory" in capsys.readouterr().err


def test_status_of_a_folder_of_runs_gives_a_line_each(tmp_path, capsys):
    """A sweep's run_dir (or a runs/ folder): each run's stages in one line, with what stopped one of them."""
    import os
    import socket

    from core.config import to_yaml
    from pipeline.experiment import load_config
    from pipeline.failures import record_failure

    for name in ("a-s0", "b-s0"):
        cfg = load_config(ROOT / "configs" / "tiny.yaml", [f"run_dir={tmp_path / name}"])
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.yaml").write_text(to_yaml(cfg))
    (tmp_path / "store").mkdir()  # no config.yaml: not a run
    (tmp_path / "b-s0" / "train").mkdir()  # a run stopped inside it
    record_failure(tmp_path / "b-s0", "train", "RuntimeError: the DeepSpeed launcher exited with 1")
    assert cli.main(["status", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"2 run directories in {tmp_path} (pt2i status RUN_DIR for one of them)"
    assert lines[1].startswith("a-s0: 0/8 stages current; missing: synthetic, download, text, tokenizer,")
    assert lines[2].startswith("b-s0: 0/8 stages current; unfinished: train (failed 20")
    assert lines[2].split("; missing: ")[0].endswith(": RuntimeError: the DeepSpeed launcher exited with 1)")
    assert len(lines) == 3 and "using it now" not in lines[1]
    from pipeline.runner import run_lock

    with run_lock(tmp_path / "a-s0"):  # a run in progress there
        assert cli.main(["status", str(tmp_path)]) == 0
    line = capsys.readouterr().out.splitlines()[1]
    assert line.endswith(f"; a run is using it now (pid {os.getpid()} on {socket.gethostname()})"), line
    assert cli.main(["status", str(tmp_path / "b-s0")]) == 0  # a run directory itself: its stages, one a line
    assert (
        capsys.readouterr().out.splitlines()[0]
        == f"run directory {tmp_path / 'b-s0'} (config: {tmp_path / 'b-s0' / 'config.yaml'})"
    )
