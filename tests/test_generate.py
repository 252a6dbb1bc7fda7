"""``pt2i generate``: your own prompts through the sample stage's path (``evaluation.generate``), on the tiny
hand-built run of ``tests.eval_utils`` (a random export: these tests pin which images come out, not how good
they are; the sample stage's learning tests bound that)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from pipeline import cli
from tests.eval_utils import N_EVAL, make_run, run


@pytest.fixture
def sampled_run(tmp_path):
    cfg = make_run(tmp_path)
    run(cfg, "sample")
    return tmp_path / "run"


def _eval_prompts(rd, path):
    prompts = [json.loads(line)["prompt"] for line in (rd / "sample" / "prompts.jsonl").read_text().splitlines()]
    path.write_text("\n".join(prompts) + "\n")
    return prompts


def test_the_eval_prompts_give_the_sample_stage_s_images_and_a_second_call_samples_nothing(
    sampled_run, tmp_path, capsys
):
    rd = sampled_run
    prompts = _eval_prompts(rd, tmp_path / "prompts.txt")
    assert cli.main(["generate", str(rd), "--prompts-file", str(tmp_path / "prompts.txt"), "--name", "ev"]) == 0
    out = rd / "generate" / "ev"
    for i in range(N_EVAL):  # chunks of sample.batch_size seeded from (sample.seed, chunk), as in the stage
        name = f"images/{i:08d}.png"
        assert (out / name).read_bytes() == (rd / "sample" / name).read_bytes(), name
    assert np.array_equal(np.load(out / "tokens.npy"), np.load(rd / "sample" / "tokens.npy"))
    assert [json.loads(x)["prompt"] for x in (out / "prompts.jsonl").read_text().splitlines()] == prompts
    grid = Image.open(out / "samples_grid.png")
    assert grid.size[0] > 3 * 128 and (out / "progression.png").is_file() and (out / "progression.gif").is_file()
    job = json.loads((out / "job.json").read_text())
    stage_job = json.loads((rd / "sample" / "job.json").read_text())
    assert job["sample"] == stage_job["sample"] and job["inputs"] == stage_job["inputs"]
    assert "sample:" in (out / "config.yaml").read_text()  # the resolved config beside the images
    text = capsys.readouterr().out
    assert f"[generate] {N_EVAL} prompt(s) x 1 from {rd / 'train' / 'export'} into {out}" in text
    assert "3 chunk(s) of 4, 3 to do" in text
    assert "[generate] note: the train stage is stale (" in text  # this hand-built run's manifests are fakes
    assert f"{N_EVAL} images in {out}/images ({N_EVAL} sampled now" in text

    before = {p: p.stat().st_mtime_ns for p in (out / "images").iterdir()}
    assert cli.main(["generate", str(rd), "--prompts-file", str(tmp_path / "prompts.txt"), "--name", "ev"]) == 0
    assert "(0 sampled now in" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in (out / "images").iterdir()} == before


def test_copies_settings_and_folders(sampled_run, capsys):
    rd = sampled_run
    base = ["generate", str(rd), "--prompt", "a small red circle at the top left", "--prompt", "a large blue square"]
    assert cli.main(base + ["--copies", "3"]) == 0
    (first,) = (rd / "generate").iterdir()  # named by a hash of what the images depend on
    recs = [json.loads(x) for x in (first / "prompts.jsonl").read_text().splitlines()]
    assert [r["prompt"].split()[2] for r in recs] == ["red"] * 3 + ["blue"] * 3 and [r["index"] for r in recs] == [
        0,
        1,
        2,
        3,
        4,
        5,
    ]
    tokens = np.load(first / "tokens.npy")
    assert tokens.shape[0] == 6 and len({t.tobytes() for t in tokens}) == 6  # each copy its own draws

    assert cli.main(base + ["--copies", "3", "--set", "sample.seed=7"]) == 0  # another setting: another folder
    folders = sorted((rd / "generate").iterdir())
    assert len(folders) == 2
    (second,) = [f for f in folders if f != first]
    assert json.loads((second / "job.json").read_text())["sample"]["seed"] == 7
    assert not np.array_equal(np.load(second / "tokens.npy"), tokens)

    capsys.readouterr()
    out = rd / "elsewhere"
    assert cli.main(base + ["--out", str(out)]) == 0
    assert cli.main(base + ["--out", str(out), "--set", "sample.steps=2"]) == 0  # same folder, other sampler
    assert "[generate] model, prompts or sampler changed: removing old images, tokens, steps" in capsys.readouterr().out
    assert len(list((out / "images").iterdir())) == 2
    assert len(np.load(out / "steps" / "chunk_00000.npz")["tokens"][0]) == 2  # T = 2 step maps


def test_per_prompt_rng_gives_a_prompt_its_image_alone_or_in_any_company(sampled_run):
    """``--set sample.rng=per_prompt``: the first prompt's image is the same asked with two others in chunks of 2,
    with two other ones, or alone; the default (per chunk) draws it with its chunk, another one alone."""
    rd = sampled_run
    a, b, c = "a small red circle at the top left", "a large blue square", "a green triangle"

    def first_image(prompts, *sets):
        name = f"n{abs(hash((tuple(prompts), sets)))}"
        args = ["generate", str(rd), "--name", name] + [x for p in prompts for x in ("--prompt", p)]
        assert cli.main(args + [x for kv in sets for x in ("--set", kv)]) == 0
        return (rd / "generate" / name / "images" / "00000000.png").read_bytes()

    per_prompt = "sample.rng=per_prompt"
    alone = first_image([a], per_prompt)
    assert first_image([a, b, c], per_prompt, "sample.batch_size=2") == alone
    assert first_image([a, c, b], per_prompt) == alone
    assert first_image([a, b, c]) != first_image([a])  # per chunk: the chunk's size changes its draws


@pytest.mark.parametrize(
    "args,code,err",
    [
        (["--prompt", "x", "--set", "train.lr=1e-3"], 2, "--set train.lr: generate takes sample.* and eval.use_ema"),
        (["--set", "sample.steps=2"], 2, "give at least one non-empty prompt"),
        (["--prompt", "x", "--prompts-file", "/nonexistent/p.txt"], 2, "--prompts-file /nonexistent/p.txt: no such"),
        (["--prompt", "x", "--copies", "0"], 2, "--copies must be >= 1"),
        (["--prompt", "x", "--name", "a", "--out", "b"], 2, "--name names a folder under RUN_DIR/generate/"),
        (["--prompt", "x", "--name", "../up"], 2, "a folder name, without '/'"),
        (["--prompt", "x", "--device", "tpu"], 2, "--device tpu: give cpu, cuda or cuda:N"),
        (["--prompt", "x", "--device", "cuda:99"], 2, "--device cuda:99: torch sees"),
        (["--prompt", "x", "--set", "sample.temperature=-1"], 2, "sample.temperature"),
        (["--prompt", "x", "--set", "sample.n_candidates=3"], 2, "sample.n_candidates: 3: more than one candidate"),
    ],
)
def test_bad_arguments_are_one_line_usage_errors(sampled_run, capsys, args, code, err):
    assert cli.main(["generate", str(sampled_run)] + args) == code
    msg = capsys.readouterr().err
    assert err in msg and len(msg.strip().splitlines()) == 1, msg
    assert "does not load as it is" not in msg  # the run's own config loads: the error is the argument's
    assert not (sampled_run / "generate").exists()


def test_a_run_without_its_models_says_which_stage_to_run(sampled_run, tmp_path, capsys):
    rd = sampled_run
    (rd / "train" / "export" / "model.safetensors").unlink()
    assert cli.main(["generate", str(rd), "--prompt", "x"]) == 1
    assert "model.safetensors is missing: rerun the train stage" in capsys.readouterr().err
    (rd / "text" / "manifest.json").unlink()
    assert cli.main(["generate", str(rd), "--prompt", "x"]) == 1
    assert "text has no finished output: run `pt2i run CONFIG --stage text` first" in capsys.readouterr().err
    assert cli.main(["generate", str(tmp_path / "nowhere"), "--prompt", "x"]) == 2
    assert "nowhere: no such run directory or experiment file" in capsys.readouterr().err
    assert not (rd / "generate").exists()


def test_the_experiment_file_of_a_run_samples_as_its_run_directory(sampled_run, tmp_path, capsys):
    """``pt2i generate CONFIG``: the config's run_dir and sample section, as ``pt2i status CONFIG`` reads it; a
    config whose run has not started says to run it."""
    import yaml

    rd = sampled_run
    exp = tmp_path / "experiment.yaml"
    exp.write_text((rd / "sample" / "config.yaml").read_text())  # run_dir: the run's folder
    prompt = ["--prompt", "a small red circle at the top left", "--copies", "2"]
    assert cli.main(["generate", str(exp), *prompt, "--name", "from_config"]) == 0
    assert cli.main(["generate", str(rd), *prompt, "--name", "from_folder"]) == 0
    a, b = (rd / "generate" / "from_config"), (rd / "generate" / "from_folder")
    assert np.array_equal(np.load(a / "tokens.npy"), np.load(b / "tokens.npy"))
    assert (a / "images" / "00000001.png").read_bytes() == (b / "images" / "00000001.png").read_bytes()

    cfg = yaml.safe_load(exp.read_text())
    exp.write_text(yaml.safe_dump({**cfg, "run_dir": str(tmp_path / "not_run")}))
    capsys.readouterr()
    assert cli.main(["generate", str(exp), "--prompt", "x"]) == 2
    err = capsys.readouterr().err
    assert f"run_dir {tmp_path / 'not_run'} does not exist: run `pt2i run {exp}` first" in err, err
    assert not (tmp_path / "not_run").exists()


def test_a_kept_checkpoint_samples_with_its_own_weights(sampled_run, tmp_path, capsys):
    """``--checkpoint``: the weights of a complete training checkpoint (its model.safetensors and config.yaml are an
    export's) instead of the final export; the same images as an export of those weights, in a folder of their own."""
    from tests.eval_utils import load, write_model_export

    rd = sampled_run
    cfg = load(rd)
    ckpts = rd / "train" / "checkpoints"
    write_model_export(ckpts / "step_00000002", cfg, seed=1)  # other weights than the export's (seed 0)
    (ckpts / "step_00000002" / "COMPLETE").write_text(json.dumps({"step": 2, "world_size": 1, "time": 1.0}))
    (ckpts / "step_00000003").mkdir()  # no COMPLETE: never sampled
    base = ["generate", str(rd), "--prompt", "a small red circle at the top left", "--copies", "2"]
    assert cli.main(base + ["--checkpoint", "2", "--name", "ck"]) == 0
    assert f"from {ckpts / 'step_00000002'} into" in capsys.readouterr().out
    assert json.loads((rd / "generate" / "ck" / "job.json").read_text())["inputs"]["checkpoint"]["tag"] == (
        "step_00000002"
    )
    assert cli.main(base + ["--name", "final"]) == 0
    ck, final = (np.load(rd / "generate" / n / "tokens.npy") for n in ("ck", "final"))
    assert not np.array_equal(ck, final)
    write_model_export(rd / "train" / "export", cfg, seed=1)  # now the export holds the checkpoint's weights
    assert cli.main(base + ["--out", str(tmp_path / "same")]) == 0
    assert np.array_equal(np.load(tmp_path / "same" / "tokens.npy"), ck)

    capsys.readouterr()
    assert cli.main(["status", str(rd)]) == 0
    listed = [line.split(None, 1)[1] for line in capsys.readouterr().out.splitlines() if line.startswith("generate ")]
    assert listed == ["ck: 2/2 images, T=4, checkpoint step_00000002", "final: 2/2 images, T=4"], listed
    for tag in ("3", "step_00000009"):
        assert cli.main(base + ["--checkpoint", tag]) == 2
        err = capsys.readouterr().err
        assert "no complete checkpoint" in err and "(kept: step_00000002)" in err, err


def test_a_checkpoint_pruned_while_it_loads_is_named_in_one_line(sampled_run, monkeypatch, capsys):
    """A training still running drops its oldest checkpoints (train.keep_last): one removed between the check and
    the load fails in one line naming the checkpoints kept now, not with a file error."""
    import shutil

    import training.export_loader as export_loader
    from tests.eval_utils import load, write_model_export

    rd = sampled_run
    cfg = load(rd)
    ckpts = rd / "train" / "checkpoints"
    for step in (2, 4):
        write_model_export(ckpts / f"step_0000000{step}", cfg, seed=step)
        (ckpts / f"step_0000000{step}" / "COMPLETE").write_text(json.dumps({"step": step, "world_size": 1}))
    real = export_loader.load_exported_model

    def pruned_first(export_dir, *args, **kw):
        shutil.rmtree(ckpts / "step_00000002")  # the training's prune, just before the load
        return real(export_dir, *args, **kw)

    monkeypatch.setattr(export_loader, "load_exported_model", pruned_first)
    capsys.readouterr()
    assert cli.main(["generate", str(rd), "--prompt", "a small red circle", "--checkpoint", "2"]) == 2
    err = capsys.readouterr().err
    assert "--checkpoint 2: no complete checkpoint step_00000002" in err and "(kept: step_00000004)" in err, err
    assert "Traceback" not in err


def test_a_run_with_a_trained_model_ends_with_the_generate_command(sampled_run, tmp_path, monkeypatch, capsys):
    import shlex

    import pipeline.runner
    from core.config import to_yaml
    from tests.eval_utils import load

    config = tmp_path / "run.yaml"
    config.write_text(to_yaml(load(sampled_run)))
    monkeypatch.setattr(pipeline.runner, "run_stages", lambda *a, **k: None)  # the stages are finished already
    assert cli.main(["run", str(config)]) == 0
    first = json.loads((sampled_run / "sample" / "prompts.jsonl").read_text().splitlines()[0])["prompt"]
    hint = f"your own prompts: pt2i generate {sampled_run} --prompt {shlex.quote(first)}"
    assert capsys.readouterr().out.splitlines()[-1] == hint
    args = shlex.split(hint.split(": ", 1)[1])[1:]
    assert cli.main(args) == 0 and (sampled_run / "generate").is_dir()  # the command it prints works
