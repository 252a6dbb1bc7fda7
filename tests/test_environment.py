"""What an output was made with (``core.environment``): recorded in every manifest and the evaluate report, named by
``pt2i status`` where it differs from this machine's, and never a reason to redo a stage."""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
from importlib.metadata import version

import pytest
import torch

from core import environment as envmod
from core.environment import ROOT
from pipeline import cli
from tests.eval_utils import make_run, run


def test_the_code_is_its_commit_its_changes_and_a_digest_of_its_sources(tmp_path):
    (tmp_path / "core").mkdir()
    (tmp_path / "core" / "a.py").write_text("x = 1\n")
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'p'\n")
    first = envmod.code_identity(tmp_path)
    assert set(first) == {"sources"}  # a copy without .git (a Ray job's shipped packages): the digest alone
    (tmp_path / "core" / "a.py").write_text("x = 2\n")
    assert envmod.code_identity(tmp_path)["sources"] != first["sources"]
    (tmp_path / "notes.txt").write_text("not a source")
    assert envmod.code_identity(tmp_path)["sources"] == envmod.source_digest(tmp_path)
    if shutil.which("git") is None:
        pytest.skip("no git")
    git = ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(git[:3] + ["init", "-q"], check=True)
    subprocess.run(git + ["add", "core", "pyproject.toml"], check=True)
    subprocess.run(git + ["commit", "-q", "-m", "c"], check=True)
    head = subprocess.run(git[:3] + ["rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert envmod.code_identity(tmp_path) == {
        "sources": envmod.source_digest(tmp_path),
        "commit": head,
        "changed": False,
    }
    (tmp_path / "core" / "a.py").write_text("x = 3\n")
    assert envmod.code_identity(tmp_path)["changed"] is True


def test_what_differs_between_two_environments():
    now = envmod.environment()
    assert now["python"] == platform.python_version() and now["packages"]["torch"] == version("torch")
    assert envmod.changes(None, now) == [] and envmod.changes(now, now) == []
    shipped = {**now, "code": {"sources": now["code"]["sources"]}}  # a Ray job's copy: no .git, the same sources
    assert envmod.changes(shipped, now) == []
    made = json.loads(json.dumps(now))
    made["packages"]["torch"] = "2.0.0"
    made["packages"].pop("deepspeed")
    made["code"] = {"sources": "0" * 16, "commit": "a" * 40, "changed": True}
    made["machine"]["gpus"] = ["NVIDIA A100-SXM4-80GB"]  # a difference only where this machine sees GPUs too
    seen = now["machine"].get("gpus")
    assert envmod.changes(made, now) == [
        f"code aaaaaaaaaa with changes -> {envmod._code_text(now['code'])}",
        f"deepspeed absent -> {now['packages']['deepspeed']}",
        f"torch 2.0.0 -> {now['packages']['torch']}",
    ] + ([f"GPUs NVIDIA A100-SXM4-80GB -> {', '.join(seen)}"] if seen else [])
    assert f"torch {version('torch')}" in envmod.summary(now) and f"Python {platform.python_version()}" in (
        envmod.summary(now)
    )


def test_the_cpu_s_instruction_sets_and_kernels_are_recorded_and_told_apart():
    # Two CPUs of one model name ("AMD EPYC"), with and without AVX-512, train other weights at equal code and seed.
    now = json.loads(json.dumps(envmod.environment()))  # torch is imported here: its CPU kernels are recorded
    m = now["machine"]
    assert set(m["cpu_isa"]) <= set(envmod.ISA_FLAGS) and m["cpu_kernels"] == torch.backends.cpu.get_cpu_capability()
    assert f"{m['cpu']} ({m['cpu_kernels']} kernels)" in envmod.summary({**now, "machine": {**m, "gpus": []}})
    made = json.loads(json.dumps(now))
    made["machine"].update(cpu_isa=["avx2"], cpu_kernels="AVX2", kernel_env={"ATEN_CPU_CAPABILITY": "avx2"})
    now["machine"].update(cpu_isa=["avx2", "avx512f", "avx512_bf16"], cpu_kernels="AVX512")
    now["machine"].pop("kernel_env", None)
    assert envmod.changes(made, now) == [
        "CPU instruction sets avx2 -> avx2 avx512f avx512_bf16",
        "ATEN_CPU_CAPABILITY avx2 -> unset",
        "CPU kernels AVX2 -> AVX512",
    ]
    older = json.loads(json.dumps(made))  # recorded before the instruction sets were: only what both record
    for key in ("cpu_isa", "cpu_kernels", "kernel_env"):
        older["machine"].pop(key)
    assert envmod.changes(older, now) == []


def test_a_process_whose_cpu_kernels_are_held_down_records_it():
    # ATEN_CPU_CAPABILITY=default is below every x86 and Arm CPU's own: torch dispatches to its plain kernels.
    code = "import json, torch; from core import environment as e; print(json.dumps(e.environment()['machine']))"
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "default"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True, cwd=ROOT)
    m = json.loads(out.stdout)
    assert m["cpu_kernels"] == "DEFAULT" and m["kernel_env"] == {"ATEN_CPU_CAPABILITY": "default"}
    here = envmod.environment()["machine"]
    if here["cpu_kernels"] != "DEFAULT":
        assert envmod.changes({"machine": m}, {"machine": here})[-1] == f"CPU kernels DEFAULT -> {here['cpu_kernels']}"


def test_manifests_and_the_report_record_it_and_status_names_a_change_without_making_the_stage_stale(tmp_path, capsys):
    cfg = make_run(tmp_path)
    rd = tmp_path / "run"
    trained = json.loads((rd / "train" / "manifest.json").read_text())
    other = [{"ranks": "0-1", "host": "a"}, {"ranks": "2-3", "host": "b", "differs": ["torch 2.14.1 -> 2.15.0"]}]
    trained.update(trainer_environment=envmod.environment(), trainer_ranks=other)  # as a 2-node train stage records
    (rd / "train" / "manifest.json").write_text(json.dumps(trained))
    run(cfg, "sample")
    run(cfg, "evaluate")
    for stage in ("sample", "evaluate"):
        env = json.loads((rd / stage / "manifest.json").read_text())["environment"]
        assert env == json.loads(json.dumps(envmod.environment())), stage
    report = (rd / "evaluate" / "report.md").read_text()
    assert f"- evaluated with: {envmod.summary(envmod.environment())}" in report
    here = envmod.summary(envmod.environment())
    assert f"- trained with: {here}; ranks on 2 hosts; ranks 2-3 on b: torch 2.14.1 -> 2.15.0\n" in report

    path = rd / "sample" / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["environment"]["packages"]["torch"] = "2.0.0"  # as if made under another torch
    path.write_text(json.dumps(manifest))
    assert cli.main(["status", str(rd)]) == 0
    lines = capsys.readouterr().out.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("sample "))
    assert lines[at].split()[1] == "current"  # recorded, never compared
    assert lines[at + 1].strip() == f"made with another environment: torch 2.0.0 -> {version('torch')}"
    assert not any("another environment" in line for line in lines[at + 2 :])
    at = next(i for i, line in enumerate(lines) if line.startswith("train "))
    assert lines[at + 1].strip() == "trained on ranks that differ from rank 0: ranks 2-3 on b: torch 2.14.1 -> 2.15.0"
