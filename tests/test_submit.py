"""``pt2i submit`` and ``pt2i sweep --address`` against a real Ray head started here on 127.0.0.1 (and stopped
by this module)."""

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


def test_the_job_reads_the_files_the_config_names_here(tmp_path, monkeypatch):
    """The job runs in its own copy of the packages: a path setting relative to the submitting directory that
    names a file there is made absolute (coco-paper.yaml's hostfile failed the train stage); URLs, absolute
    paths, names of files that exist only on the cluster and keywords stay as they are."""
    import yaml

    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "laion.parquet").write_text("x")
    monkeypatch.chdir(ROOT)
    here = os.path.relpath(tmp_path, ROOT)  # the url list, named from the submitting directory
    overrides = [
        f"run_dir={tmp_path / 'run'}",
        "data.download.source=sources",
        f"data.download.sources=[{{name: laion, kind: laion, url_list: {here}/lists/laion.parquet}}, "
        "{name: cc3m, kind: cc3m, url_list: s3://bucket/cc3m.tsv, eval_url_list: /data/cc3m-val.tsv}]",
        "eval.metrics=[clip_score]",
        "eval.clip_checkpoint=checkpoints/clip.bin",  # not here: on the cluster's storage
        "data.download.output_folder=shards/laion",  # written by the job: absolute though it does not exist yet
        "eval.fid_stats_cache=fid-stats",
    ]
    (tmp_path / "download").mkdir()  # a folder named as a keyword of eval.retrieval_images: the keyword stays
    monkeypatch.chdir(tmp_path)
    cfg = load_config(ROOT / "configs" / "coco-paper.yaml", overrides)
    job = yaml.safe_load(submitted_yaml(cfg, ROOT))
    assert job["cluster"]["hostfile"] == str(ROOT / "configs" / "cluster" / "hostfile-2x8")
    laion, cc3m = job["data"]["download"]["sources"]
    assert laion["url_list"] == str(tmp_path / "lists" / "laion.parquet")
    assert cc3m["url_list"] == "s3://bucket/cc3m.tsv" and cc3m["eval_url_list"] == "/data/cc3m-val.tsv"
    assert job["eval"]["clip_checkpoint"] == "checkpoints/clip.bin" and job["eval"]["retrieval_images"] == "download"
    assert job["data"]["download"]["output_folder"] == str(ROOT / "shards" / "laion")
    assert job["eval"]["fid_stats_cache"] == str(ROOT / "fid-stats")
    assert yaml.safe_load(submitted_yaml(cfg))["eval"]["retrieval_images"] == "download"  # from tmp_path
    assert cfg.cluster.hostfile == "configs/cluster/hostfile-2x8"  # the config itself is left alone
    monkeypatch.chdir(tmp_path)  # the job's directory: the hostfile is found, the master is its first host
    from cluster import deepspeed_launch as dl
    from cluster.config import ClusterConfig

    assert dl.master_addr(ClusterConfig(**job["cluster"])) == "node-0"


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
    out, err = capsys.readouterr()
    assert err.startswith(f"submit error: no Ray job server answered at {address} within 1.5 s")
    assert err.count("\n") == 1  # one line
    said = f"no answer yet from the Ray job server at {address} (ConnectionError); trying again for up to 1.5 s"
    assert out.count(said) == 1, out  # while it waits, once


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


@pytest.fixture(scope="module")
def ray_head():
    """The job server URL of a one-node Ray cluster started here on 127.0.0.1 (stopped after this module's
    tests: starting and stopping a head takes ~30 s)."""
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


SWEEP_SMALL = [
    "data.synthetic.n_train=100",
    "data.synthetic.n_eval=8",
    "data.download.samples_per_shard=20",
    "tokenizer.steps=10",
    "text_encoder.tiny_pretrain_steps=0",
    "cluster.launcher=local",
    "train.steps=4",
    "train.batch_size=8",
    "train.warmup_steps=1",
    "train.checkpoint_every=4",
    "train.sample_every=0",
    "eval.num_prompts=8",
    "eval.metrics=[attributes,token_nll]",
]


def job_spans(url: str, under: Path) -> dict[str, list[tuple[int, int]]]:
    """Run directory name -> the (start, end) in ms of each Ray job the head ran for a run directory in
    ``under`` (submit records the run directory in the job's metadata)."""
    from ray.job_submission import JobSubmissionClient

    spans: dict[str, list] = {}
    for job in JobSubmissionClient(url).list_jobs():
        run_dir = Path((job.metadata or {}).get("pt2i_run_dir", "/"))
        if run_dir.parent == under:
            spans.setdefault(run_dir.name, []).append((job.start_time, job.end_time))
    return {k: sorted(v) for k, v in spans.items()}


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_sweep_of_the_real_pipeline_as_ray_jobs_shares_the_data_stages(ray_head, tmp_path, capsys):
    """``pt2i sweep --address``: the stages both variants share run once, as one Ray job; then each variant
    runs as its own Ray job, both at once. The variants differ only in train.p_error, so they share every
    stage before train (one synthetic set, one download, one tokenizer, one tokenize); each is a run
    directory ``pt2i status`` finds current, and the table holds both rows with the measured metrics.
    (One after another in this process, and ``--jobs N`` child processes: tests/test_sweep.py.)"""
    from pipeline.cli import main

    sweep_dir = tmp_path / "sweep"
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(
        json.dumps(
            {
                "base": str(ROOT / "configs" / "tiny.yaml"),
                "name": "pipeline-sweep",
                "run_dir": str(sweep_dir),
                "columns": ["attribute_match", "token_nll", "passes", "seconds_per_image"],
                "variants": [
                    {"name": "p0", "set": {"train.p_error": 0.0}},
                    {"name": "p3", "set": {"train.p_error": 0.3}},
                ],
            }
        )
    )
    cmd = [str(BIN / "pt2i"), "sweep", str(sweep), "--address", ray_head, "--max-concurrent", "2"]
    cmd += [a for kv in SWEEP_SMALL for a in ("--set", kv)]
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=850)
    assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]
    spans = job_spans(ray_head, sweep_dir)
    # the shared stages' job goes through the first run's directory, then one job per run
    assert sorted((k, len(v)) for k, v in spans.items()) == [("p0-s0", 2), ("p3-s0", 1)]
    shared, p0, p3 = spans["p0-s0"][0], spans["p0-s0"][1], spans["p3-s0"][0]
    assert shared[1] <= min(p0[0], p3[0])  # the runs' jobs start once the shared stages are done
    assert max(p0[0], p3[0]) < min(p0[1], p3[1])  # and run at the same time

    store = sweep_dir / "stages"
    for name in ("synthetic", "text", "download", "tokenizer", "tokenize"):
        assert len(list((store / name).iterdir())) == 1, name  # one folder for both runs
    for name in ("train", "sample", "evaluate"):
        assert len(list((store / name).iterdir())) == 2, name
    logs = "".join((sweep_dir / r / "sweep-job.log").read_text() for r in ("p0-s0", "p3-s0"))
    assert logs.count("[tokenize] running") == 1 and logs.count("[train] running") == 2
    assert logs.count("SUCCEEDED") == 3  # each job's log streamed back into its run directory

    rows = {r["variant"]: r["values"] for r in json.loads((sweep_dir / "report.json").read_text())["rows"]}
    assert sorted(rows) == ["p0", "p3"]
    for v in rows.values():
        assert 0.0 <= v["attribute_match"]["mean"] <= 1.0 and v["token_nll"]["mean"] > 0
        assert v["passes"]["mean"] == 4 and v["seconds_per_image"]["mean"] > 0
    assert "| p0 |" in (sweep_dir / "report.md").read_text()

    capsys.readouterr()
    assert main(["status", str(sweep_dir / "p3-s0")]) == 0
    status = capsys.readouterr().out
    lines = [ln for ln in status.splitlines()[1:] if ln.strip() and ln.split()[1] != "disabled"]  # superres: off
    assert len(lines) == 8 and all(ln.split()[1] == "current" for ln in lines), status
