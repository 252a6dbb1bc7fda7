"""``pt2i submit`` against a real Ray head started here on 127.0.0.1 (and stopped by this test)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from cluster.submit import job_entrypoint, job_runtime_env
from pipeline.experiment import load_config, submitted_yaml
from tests.ray_nodes import BIN
from tests.ray_nodes import ray_head as start_ray_head

ROOT = Path(__file__).resolve().parents[1]


def test_job_entrypoint_and_runtime_env(tmp_path):
    cfg = load_config(ROOT / "configs" / "tiny.yaml", [f"run_dir={tmp_path}"])
    assert job_entrypoint(["train"], None, False) == "python -m pipeline.cli run env:PT2I_CONFIG_YAML --stage train"
    env = job_runtime_env(submitted_yaml(cfg))
    assert env["working_dir"] == str(ROOT)
    shipped = env["env_vars"]["PT2I_CONFIG_YAML"]
    assert f"run_dir: {tmp_path}" in shipped and "address: auto" in shipped  # absolute run dir; join the job's cluster


def test_unreachable_head_fails_within_the_connect_timeout(tmp_path, capsys):
    """A closed loopback port: a one-line error naming the address after --connect-timeout, not a hang."""
    import time

    from cluster.submit import SubmitError, submit
    from pipeline.cli import main
    from tests.ray_nodes import free_port

    address = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    t0 = time.time()
    with pytest.raises(SubmitError, match=f"no Ray job server answered at {address} within 2 s"):
        submit("run_dir: x\n", str(tmp_path), address, connect_timeout_s=2.0)
    assert 2.0 <= time.time() - t0 < 10
    argv = ["submit", str(ROOT / "configs" / "tiny.yaml"), "--address", address, "--connect-timeout", "1.5"]
    assert main(argv + ["--set", f"run_dir={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"submit error: no Ray job server answered at {address} within 1.5 s")
    assert err.count("\n") == 1  # one line


def _shipped(root: Path, tmp_path: Path) -> set[str]:
    """The files Ray's own packaging puts in the job's working_dir upload for ``root`` with our excludes."""
    import zipfile

    from ray._private.runtime_env.packaging import create_package

    zip_path = tmp_path / f"{root.name}.zip"
    create_package(str(root), zip_path, include_gitignore=True, excludes=job_runtime_env("x: 1")["excludes"])
    with zipfile.ZipFile(zip_path) as z:
        return {n for n in z.namelist() if not n.endswith("/")}


def test_submit_ships_the_packages_and_nothing_else(tmp_path):
    """Run directories, data, environments, notes: nothing but the project's packages travels with a job."""
    root = tmp_path / "checkout"
    files = [
        "core/config.py",
        "training/model/pdm.py",
        "pipeline/cli.py",
        "evaluation/humaneval/static/app.js",
        "pyproject.toml",
        "runs/tiny/train/checkpoints/step_00000004/rank_00000.pt",
        "data/laion/part-00000.parquet",
        "my_run/download/train/00000.tar",
        ".venv/lib/site.py",
        ".git/HEAD",
        "tests/test_x.py",
        "configs/tiny.yaml",
        "notes.txt",
        "training/__pycache__/pdm.cpython-311.pyc",
    ]
    for f in files:
        (root / f).parent.mkdir(parents=True, exist_ok=True)
        (root / f).write_text("x")
    (root / "training" / "scratch").mkdir()
    (root / ".gitignore").write_text("scratch/\n")
    (root / "training" / "scratch" / "big.bin").write_text("x")
    assert _shipped(root, tmp_path) == {
        "core/config.py",
        "training/model/pdm.py",
        "pipeline/cli.py",
        "evaluation/humaneval/static/app.js",
        "pyproject.toml",
    }
    tops = {n.split("/")[0] for n in _shipped(ROOT, tmp_path)}  # this checkout
    assert tops == {"core", "cluster", "tokenization", "training", "evaluation", "pipeline", "pyproject.toml"}


@pytest.fixture
def ray_head():
    """The job server URL of a one-node Ray cluster started here on 127.0.0.1 (stopped at teardown)."""
    with start_ray_head(cpus=2) as (_, url, _):
        yield url


STAGES = ("synthetic", "text", "download", "tokenizer", "tokenize", "train", "sample", "evaluate")
SMALL = [
    "data.synthetic.n_train=96",
    "data.synthetic.n_eval=8",
    "data.download.samples_per_shard=32",
    "tokenizer.steps=10",
    "text_encoder.tiny_pretrain_steps=0",  # plumbing only: tests/test_t5_pretrain.py pretrains
    "train.steps=6",
    "train.batch_size=8",
    "train.warmup_steps=1",
    "train.checkpoint_every=6",
    "train.log_every=3",
    "train.sample_every=0",
    "sample.batch_size=8",
]


def run_ids(run_dir: Path) -> dict:
    return {s: json.loads((run_dir / s / "manifest.json").read_text())["run_id"] for s in STAGES}


@pytest.mark.slow
def test_submit_runs_the_whole_tiny_pipeline_as_a_ray_job_then_one_stage_alone(ray_head, tmp_path):
    run_dir = tmp_path / "run"
    pt2i = [
        str(BIN / "pt2i"),
        "submit",
        str(ROOT / "configs" / "tiny.yaml"),
        "--address",
        ray_head,
        "--set",
        f"run_dir={run_dir}",
    ] + [a for kv in SMALL for a in ("--set", kv)]
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    first = subprocess.run(pt2i, env=env, capture_output=True, text=True, timeout=1200)
    assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-3000:]
    assert "SUCCEEDED" in first.stdout and "report:" in first.stdout  # the job's log is streamed back
    before = run_ids(run_dir)  # every stage ran in the job and wrote at the absolute run dir
    assert (run_dir / "evaluate" / "report.md").is_file() and (
        run_dir / "train" / "export" / "model.safetensors"
    ).is_file()
    again = subprocess.run(
        pt2i + ["--stage", "evaluate", "--force"], env=env, capture_output=True, text=True, timeout=600
    )
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    after = run_ids(run_dir)
    assert [s for s in STAGES if after[s] != before[s]] == ["evaluate"]  # only the rerun stage ran
    failing = subprocess.run(
        pt2i + ["--set", f"run_dir={tmp_path / 'empty'}", "--stage", "tokenize"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert failing.returncode == 1 and "FAILED" in failing.stdout  # missing inputs: the job's exit status comes back
