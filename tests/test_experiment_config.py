"""The CLI reports config errors with file and key path (the shipped configs: tests/test_configs.py)."""

from pathlib import Path

import pytest
import yaml

from core.config import ConfigError, read_yaml
from pipeline.cli import main
from pipeline.experiment import load_config

ROOT = Path(__file__).resolve().parents[1]


def test_preset_values_are_overridden_by_the_section(tmp_path):
    cfg = load_config(ROOT / "configs" / "tiny.yaml", ["model.layers=2"])
    assert cfg.model.layers == 2 and cfg.model.dim == 128  # dim from the tiny preset


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("model.layrs=3", "model.layrs: unknown key; did you mean 'layers'?"),
        ("train.max_text_len=8", "train.max_text_len: no longer a setting: set text_encoder.max_length"),
        ("train.p_error=1.5", "train.p_error: must be <= 1.0"),
        ("model.codebook_size=512", "model.codebook_size (512) != tokenizer.n_embed (256)"),
        ("model.text_dim=32", "model.text_dim (32) != text_encoder.dim (64)"),
        ("sample.order=sideways", "sample.order: must be one of"),
        ("data.download.image_size=abc", "data.download.image_size: expected an integer"),
    ],
)
def test_wrong_values_fail_at_load_with_path_and_file(override, fragment, capsys):
    with pytest.raises(ConfigError) as err:
        load_config(ROOT / "configs" / "tiny.yaml", [override])
    assert fragment in str(err.value) and "tiny.yaml" in str(err.value)
    assert main(["config", str(ROOT / "configs" / "tiny.yaml"), "--set", override]) == 2
    assert fragment in capsys.readouterr().err


def test_typo_in_a_yaml_file_names_file_and_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  stpes: 10\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: train.stpes: unknown key; did you mean 'steps'\?"):
        load_config(bad)
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")


def test_what_yaml_reads_loosely_is_read_as_meant_or_refused(tmp_path, capsys):
    """A float without a dot (PyYAML reads 3e-4 as a string) is a number; a key given twice, an empty file, a
    --set value that is not YAML, a --set without a key, an empty or blocked run_dir fail at load, one line each."""
    tiny = ROOT / "configs" / "tiny.yaml"
    assert load_config(tiny, ["train.lr=3e-4"]).train.lr == 3e-4
    (tmp_path / "f.yaml").write_text("train:\n  lr: 1E-3\n  steps: 5\n")
    assert load_config(tmp_path / "f.yaml").train.lr == 1e-3
    with pytest.raises(ConfigError, match="train.lr: expected a number, got '3e-4x'"):
        load_config(tiny, ["train.lr=3e-4x"])
    cases = {
        "dup.yaml": ("train:\n  lr: 1.0e-3\ntrain:\n  steps: 3\n", "'train' is given twice in this mapping, line 3"),
        "empty.yaml": ("\n", "the file is empty"),
        "syntax.yaml": ("train:\n  lr: [1,\n", "not valid YAML: expected the node content, but found '<stream end>'"),
    }
    for name, (text, fragment) in cases.items():
        (tmp_path / name).write_text(text)
        assert main(["config", str(tmp_path / name)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and str(tmp_path / name) in err, err
        assert fragment in err, err
    (tmp_path / "afile").write_text("x")
    refused = {
        "eval.metrics=[fid": "(--set) 'eval.metrics=[fid': not a valid YAML value (expected ',' or ']'",
        "=3": "(--set) '=3': no key before '='",
        "run_dir=": "run_dir: empty",
        f"run_dir={tmp_path / 'afile' / 'run'}": f"run_dir: {tmp_path / 'afile'} is a file, not a folder",
    }
    for override, fragment in refused.items():
        assert main(["config", str(tiny), "--set", override]) == 2
        err = capsys.readouterr().err
        assert fragment in err and err.count("\n") == 1, err
    (tmp_path / "merge.yaml").write_text("common: &c {steps: 5}\ntrain:\n  <<: *c\n  lr: 1e-3\n")
    assert read_yaml(tmp_path / "merge.yaml")["train"] == {"steps": 5, "lr": "1e-3"}  # YAML merge keys still work
    (tmp_path / "unhashable.yaml").write_text("? [1, 2]\n: v\n")
    with pytest.raises(ConfigError, match="unhashable.yaml: not valid YAML: found unhashable key, line 1"):
        read_yaml(tmp_path / "unhashable.yaml")
    assert main(["config", str(tmp_path)]) == 2 and "a folder, not a config file" in capsys.readouterr().err
    assert main(["status", str(tmp_path / "nowhere")]) == 2
    assert "no such config file or run directory" in capsys.readouterr().err
    run = [str(tiny), "--set", f"run_dir={tmp_path / 'run'}"]
    assert main(["run", *run, "--stage", "train", "--from", "sample"]) == 2
    assert "--stage and --from: give one" in capsys.readouterr().err
    sweep = str(ROOT / "configs" / "ablations" / "table3-orders.yaml")
    assert main(["sweep", sweep, "--jobs", "0"]) == 2 and "must be >= 1" in capsys.readouterr().err


def test_a_removed_setting_at_its_last_value_still_loads_and_keeps_the_stage_hashes(tmp_path):
    """A run folder's config.yaml written before a setting was removed holds it at its last value: it loads,
    and the stage hashes count it as before (the stages stay current); another value is refused."""
    from core.config import config_hash, to_dict

    old = to_dict(load_config(ROOT / "configs" / "tiny.yaml"))
    old["train"]["max_text_len"] = None
    old["train"]["order_learner"]["enabled"] = False
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(old))
    cfg = load_config(tmp_path / "config.yaml")
    assert config_hash(old["train"]) == config_hash(cfg.train)  # the hash of the section as it was written
    old["train"]["order_learner"]["enabled"] = True
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(old))
    with pytest.raises(ConfigError, match="train.order_learner.enabled: no longer a setting: train.order: learned"):
        load_config(tmp_path / "config.yaml")


def test_cli_config_prints_resolved_config(capsys):
    assert main(["config", str(ROOT / "configs" / "tiny.yaml"), "--set", "train.steps=7"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["train"]["steps"] == 7 and printed["model"]["dim"] == 128


@pytest.mark.parametrize(
    "override, key, message",
    [
        ("train.order=zigzag", "train.order", "unknown generation order 'zigzag'; known: anti_progressive"),
        ("train.stages=5", "train.stages", "T=5 does not divide L=64"),
        ("sample.steps=65", "sample.steps", "must be in 1..L=64"),
        ("tokenizer.n_embed=20000", "tokenizer.n_embed", "do not fit the token shards"),
        ("train.order_learner.stages=8", "train.order_learner.stages", "must equal train.stages (4)"),
        ("eval.metrics=[attributes]", "eval.metrics", None),
    ],
)
def test_cross_section_rules_fail_pt2i_config_naming_the_key(capsys, override, key, message):
    """Values that a stage would only reject deep in a run fail when the config loads, naming the key."""
    from pipeline.cli import main

    extra = ["--set", "train.order=learned"] if key.startswith("train.order_learner") else []
    if key == "eval.metrics":
        extra = ["--set", "data.download.source=laion", "--set", "data.download.url_list=/x"]
    assert main(["config", str(ROOT / "configs" / "tiny.yaml"), "--set", override, *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("config error: ") and f": {key}: " in err and (message is None or message in err), err


@pytest.mark.parametrize(
    "overrides, key",
    [
        (["train.order=learned", "sample.order=learned", "sample.guidance_scale=2.0"], "sample.guidance_scale"),
        (["train.order=learned", "sample.order=learned", "sample.revise=false"], "sample.revise"),
        (["train.order=learned", "sample.order=learned", "sample.temperature=1.0"], "sample.temperature"),
        (["train.mode=emage", "train.emage_state_weight=0"], "sample.order"),
        (["train.mode=emage", "train.emage_state_weight=0", "sample.order=confidence"], "sample.revise"),
    ],
)
def test_samplers_that_cannot_use_the_trained_model_fail_at_load(overrides, key):
    """The learned order samples with its rollouts' guidance, revision and temperature; an Emage run's
    untrained state head (emage_state_weight 0) can neither order the positions nor revise."""
    with pytest.raises(ConfigError, match=f": {key}: "):
        load_config(ROOT / "configs" / "tiny.yaml", overrides)


@pytest.mark.parametrize(
    "overrides",
    [
        ["train.order=learned", "sample.order=learned", "sample.temperature=0", "train.order_learner.revise=true"],
        ["train.mode=emage"],  # the head is trained by default
        ["train.mode=emage", "train.emage_state_weight=0", "sample.order=confidence", "sample.repredict=true"],
    ],
)
def test_samplers_that_can_use_the_trained_model_load(overrides):
    load_config(ROOT / "configs" / "tiny.yaml", overrides)


def _config_error(overrides: list[str], capsys) -> str:
    """``pt2i config configs/tiny.yaml --set ...`` fails with a config error (exit 2): its one line."""
    args = [a for o in overrides for a in ("--set", o)]
    assert main(["config", str(ROOT / "configs" / "tiny.yaml"), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("config error: ") and err.count("\n") == 1 and "tiny.yaml: " in err, err
    return err


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("train.p_error=.nan", "train.p_error: must be a finite number in [0.0, 1.0], got nan"),
        ("train.lr=.nan", "train.lr: must be a finite number >= 0.0, got nan"),
        ("model.dropout=.nan", "model.dropout: must be a finite number in [0.0, 1.0], got nan"),
        ("sample.revise_threshold=.nan", "sample.revise_threshold: must be a finite number in [0.0, 1.0], got nan"),
        ("train.lr=.inf", "train.lr: must be a finite number >= 0.0, got inf"),
        ("train.betas=[0.9, .nan]", "train.betas: must be a finite number in [0.0, 1.0), got nan"),
    ],
)
def test_nan_and_infinity_fail_the_range_checks(override, fragment, capsys):
    assert fragment in _config_error([override], capsys)


@pytest.mark.parametrize("key", ["seed", "train.seed", "sample.seed", "eval.prompt_seed", "sr.train.seed"])
def test_negative_seeds_fail_at_load(key, capsys):
    assert f": {key}: must be >= 0, got -1" in _config_error([f"{key}=-1"], capsys)
    load_config(ROOT / "configs" / "tiny.yaml", [f"{key}=0"])


@pytest.mark.parametrize(
    "overrides",
    [
        ["train.batch_size=63"],  # tiny: DeepSpeed, 1 node x 2 CPU ranks
        ["train.batch_size=4", "train.grad_accum=4"],  # 4 / 4 = 1 sample per step for 2 ranks
        ["cluster.launcher=ray", "cluster.procs_per_node=3"],  # 64 over 3 Ray Train workers
    ],
)
def test_a_train_batch_the_ranks_cannot_split_fails_at_load(overrides, capsys):
    """training.engine.micro_batch's rule, checked for the ranks the cluster section starts."""
    err = _config_error(overrides, capsys)
    assert ": train.batch_size: " in err and "is not divisible by the" in err, err
    assert (
        main(["launch-command", str(ROOT / "configs" / "tiny.yaml"), *[a for o in overrides for a in ("--set", o)]])
        == 2
    )


@pytest.mark.parametrize(
    "overrides",
    [
        ["train.batch_size=63", "cluster.launcher=local"],  # one process
        ["train.batch_size=63", "cluster.procs_per_node=1"],
        ["train.batch_size=66", "cluster.launcher=ray", "cluster.procs_per_node=3"],
    ],
)
def test_a_train_batch_the_ranks_can_split_loads(overrides):
    load_config(ROOT / "configs" / "tiny.yaml", overrides)


VQD = ["train.mode=vq_diffusion", "sample.sampler=vq_diffusion"]


@pytest.mark.parametrize(
    "overrides, key, fragment",
    [
        (["sample.n_candidates=2"], "sample.n_candidates", "needs a reranking scorer"),
        (["eval.metrics=[fid,speed]", "eval.speed_quality_images=1"], "eval", "speed_quality_images: 1 image per T"),
        (["eval.num_prompts=1"], "eval.num_prompts", "FID needs at least 2 generated images"),
        (["data.synthetic.n_eval=1"], "data.synthetic.n_eval", "FID needs at least 2"),
        (["data.synthetic.n_eval=0", "eval.metrics=[attributes]"], "data.synthetic.n_eval", "no prompt"),
        (["data.synthetic.n_train=0"], "data.synthetic.n_train", "set n_train >= 2"),
        (["text_encoder.kind=clip"], "text_encoder.kind", "kind 'clip' needs path"),
        (VQD + ["sample.steps=3"], "sample.steps", "T=3 does not divide L=64"),
        (VQD + ["sample.diffusion_strategy=reverse", "sample.steps=128"], "sample.steps", "must be in 1..100"),
        (["cluster.num_nodes=2", "cluster.hosts=[a]"], "cluster.hosts", "lists 1 host(s) for cluster.num_nodes 2"),
        (["cluster.num_nodes=2"], "cluster.hosts", "lists 0 host(s)"),
    ],
)
def test_values_a_stage_would_reject_fail_at_load(overrides, key, fragment, capsys):
    err = _config_error(overrides, capsys)
    assert f": {key}: " in err and fragment in err, err


@pytest.mark.parametrize(
    "overrides",
    [
        ["data.synthetic.n_eval=1", "eval.metrics=[attributes]"],  # no FID: one prompt is enough
        ["eval.metrics=[fid,speed]", "eval.speed_quality_images=0"],  # timing only
        ["eval.metrics=[fid,speed]", "eval.speed_quality_images=2"],
        ["data.synthetic.n_train=2"],
        ["text_encoder.kind=clip", "text_encoder.path=/models/clip.pt"],
        VQD + ["sample.diffusion_strategy=reverse", "sample.steps=100"],
        VQD + ["sample.diffusion_strategy=reverse", "sample.steps=3"],  # the reverse chain writes no stage sizes
        ["cluster.num_nodes=2", "cluster.hosts=[a,b]"],
        ["cluster.num_nodes=2", "cluster.address=auto"],  # hosts from the Ray cluster at run time
    ],
)
def test_values_the_stages_accept_load(overrides):
    load_config(ROOT / "configs" / "tiny.yaml", overrides)
