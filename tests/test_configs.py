"""Every file under configs/ explains itself (its header) and loads; ``base:`` extends an experiment file."""

import re
from dataclasses import asdict
from pathlib import Path

import pytest
import yaml

from core.config import ConfigError, from_dict, read_yaml
from pipeline.cli import main
from pipeline.experiment import ExperimentConfig, load_config
from training.model.config import ModelConfig, count_parameters, model_config

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted(p for p in (ROOT / "configs").rglob("*") if p.is_file())
EXPERIMENTS = sorted((ROOT / "configs").glob("*.yaml"))
MODELS = sorted((ROOT / "configs" / "models").glob("*.yaml"))
SWEEPS = sorted((ROOT / "configs" / "ablations").glob("*.yaml"))
FIELDS = ("command", "use", "hardware", "time", "expect", "params")
REQUIRED = {  # by folder under configs/ (docs/CONVENTIONS.md, "Config headers")
    "configs": {"command", "hardware", "time", "expect"},
    "models": {"use", "hardware", "params"},
    "cluster": {"use", "hardware"},
    "ablations": {"command", "hardware", "time", "expect"},  # sweeps (pt2i sweep)
}


def read_header(path: Path) -> dict[str, str]:
    """The leading ``# field: value`` lines (a value goes on over lines of ``#`` and 2+ spaces)."""
    fields: dict[str, str] = {}
    last = None
    for line in path.read_text().splitlines():
        field = re.fullmatch(r"# ([a-z]+): +(\S.*)", line)
        more = re.fullmatch(r"#  +(\S.*)", line)
        if field:
            assert field[1] not in fields, f"{path}: header field {field[1]!r} twice"
            last = field[1]
            fields[last] = field[2]
        elif more and last:
            fields[last] += " " + more[1]
        else:
            assert line == "#" or not line.startswith("#"), f"{path}: the header must end with a line '#'"
            return fields
    return fields


def test_there_are_configs():
    assert any(p.name == "tiny.yaml" for p in EXPERIMENTS) and MODELS and len(SHIPPED) > len(EXPERIMENTS + MODELS)


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(ROOT / "configs")))
def test_every_shipped_file_has_a_header(path):
    header = read_header(path)
    assert set(header) <= set(FIELDS), f"{path}: unknown header field(s) {set(header) - set(FIELDS)}"
    missing = REQUIRED[path.parent.name] - set(header)
    assert not missing, f"{path}: header lacks {sorted(missing)}"
    if "command" in header:
        assert str(path.relative_to(ROOT)) in header["command"], f"{path}: the command must name this file"
    if "time" in header:
        assert re.search(r"\b(measured|estimate)\b", header["time"]), f"{path}: say whether the time is measured"
    if "expect" in header and path.parent.name in ("configs", "ablations"):
        assert "(source: " in header["expect"], f"{path}: the expected metric needs its source"


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.name)
def test_experiment_yaml_loads(path):
    cfg = load_config(path)
    assert isinstance(cfg, ExperimentConfig) and Path(cfg.run_dir).is_absolute()


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.name)
def test_sweep_yaml_loads_every_variant(path, monkeypatch):
    """Every shipped sweep resolves each variant's experiment (a wrong key fails naming the variant)."""
    from pipeline.sweep_config import load_sweep

    monkeypatch.chdir(ROOT)
    cfg, runs = load_sweep(path)
    assert runs and len(runs) == len(cfg.seeds) * len({r.variant.name for r in runs})
    assert "pt2i sweep" in read_header(path)["command"]


def test_the_paper_configs_run_the_papers_method():
    """coco-paper.yaml and pdm-1.2b.yaml train and sample the learned order at T = 64 with the paper's
    optimiser and its 120 epochs (Table 1's row), and say which contradicting values they chose."""
    for name in ("coco-paper.yaml", "pdm-1.2b.yaml"):
        cfg = load_config(ROOT / "configs" / name)
        t, s = cfg.train, cfg.sample
        assert (t.order, s.order, t.stages, s.steps, t.p_error) == ("learned", "learned", 64, 64, 0.3)
        assert s.rng == "per_prompt"  # the FID's images do not depend on the GPUs' batch size
        assert (t.lr, t.betas, t.schedule, t.order_learner.reward) == (1e-4, [0.9, 0.96], "cosine", "clip")
        assert cfg.model.seq_len == 1024 and t.steps * t.batch_size >= 120 * 20_000_000
        text = (ROOT / "configs" / name).read_text()
        assert "p_error 0.3" in text and "CC3M" in text


@pytest.mark.parametrize("path", MODELS, ids=lambda p: p.name)
def test_model_yaml_is_its_preset_and_header_counts_its_parameters(path):
    cfg = from_dict(ModelConfig, read_yaml(path), source=str(path))
    assert asdict(cfg) == asdict(model_config(cfg.preset)), path
    stated = int(re.match(r"[\d,]+", read_header(path)["params"])[0].replace(",", ""))
    assert stated == count_parameters(cfg.preset), path


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


BASE = """name: base
train: {steps: 10, lr: 0.1, betas: [0.9, 0.96]}
eval: {metrics: [fid, attributes]}
"""


def test_base_is_deep_merged_lists_replaced_and_overrides_applied_last(tmp_path):
    write(tmp_path / "base.yaml", BASE)
    child = write(tmp_path / "child.yaml", "base: base.yaml\nname: child\ntrain: {steps: 5}\neval: {metrics: [fid]}\n")
    cfg = load_config(child)
    assert (cfg.name, cfg.train.steps, cfg.train.lr, cfg.train.betas) == ("child", 5, 0.1, [0.9, 0.96])
    assert cfg.eval.metrics == ["fid"]
    assert load_config(child, ["train.steps=7", "train.lr=0.2"]).train.steps == 7


def test_base_chain_paths_are_relative_to_the_file_naming_them(tmp_path, monkeypatch):
    write(tmp_path / "common" / "root.yaml", BASE)
    write(tmp_path / "common" / "mid.yaml", "base: root.yaml\ntrain: {lr: 0.5}\n")
    child = write(tmp_path / "exp" / "child.yaml", "base: ../common/mid.yaml\ntrain: {steps: 3}\n")
    monkeypatch.chdir(ROOT)
    cfg = load_config(child)
    assert (cfg.name, cfg.train.steps, cfg.train.lr, cfg.eval.metrics) == ("base", 3, 0.5, ["fid", "attributes"])


def test_base_cycle_and_missing_base_name_both_files(tmp_path):
    a = write(tmp_path / "a.yaml", "base: b.yaml\n")
    write(tmp_path / "b.yaml", "base: a.yaml\n")
    with pytest.raises(ConfigError, match=r"b\.yaml: base: a\.yaml: the bases form a cycle .*a\.yaml -> .*b\.yaml"):
        load_config(a)
    lone = write(tmp_path / "lone.yaml", "base: nothere.yaml\n")
    with pytest.raises(ConfigError, match=r"lone\.yaml: base: .*nothere\.yaml: file not found"):
        load_config(lone)


def test_a_wrong_key_is_reported_in_the_file_that_sets_it(tmp_path):
    write(tmp_path / "root.yaml", "train: {stpes: 1}\n")
    write(tmp_path / "mid.yaml", "base: root.yaml\nmodel: {preset: huge}\n")
    child = write(tmp_path / "child.yaml", "base: mid.yaml\ntrain: {lr: 0.1}\n")
    with pytest.raises(ConfigError, match=r"mid\.yaml: model\.preset: unknown preset 'huge'"):
        load_config(child)
    write(tmp_path / "mid.yaml", "base: root.yaml\n")
    with pytest.raises(ConfigError, match=r"root\.yaml: train\.stpes: unknown key; did you mean 'steps'"):
        load_config(child)
    write(tmp_path / "child.yaml", "base: mid.yaml\ntrain: {stpes: 2}\n")
    with pytest.raises(ConfigError, match=r"child\.yaml: train\.stpes: unknown key"):
        load_config(child)
    write(tmp_path / "root.yaml", "train: {steps: 1}\n")
    write(tmp_path / "child.yaml", "base: mid.yaml\n")
    with pytest.raises(ConfigError, match=r"child\.yaml: train\.steps: must be >= 1"):  # --set: the file named
        load_config(child, ["train.steps=0"])


def test_cross_section_and_section_errors_name_the_file_that_set_the_key(tmp_path):
    """A rule across sections names the file that set its key, a section's cross-field error the file(s) of the
    keys behind it, not the top file or the last one that touched the section."""
    tiny = ROOT / "configs" / "tiny.yaml"
    base, child = tmp_path / "base.yaml", tmp_path / "child.yaml"
    for in_base, in_child, error in [
        ("sample: {steps: 3}", "sample: {temperature: 0.5}", "sample.steps: T=3 does not divide L=64"),
        ("train: {offload_optimizer: nvme}", "train: {lr: 0.002}", "train.offload_optimizer: offload to nvme needs"),
        # both keys behind it: grad_accum's file (base) and batch_size's (tiny), the section as the label
        ("train: {grad_accum: 3}", "train: {lr: 0.002}", f" and {tiny}: train: batch_size (64) must be divisible"),
        ("model: {codebook_size: 512}", "name: child", "model.codebook_size (512) != tokenizer.n_embed (256)"),
    ]:
        write(base, f"base: {tiny}\n{in_base}\n")
        write(child, f"base: base.yaml\n{in_child}\n")
        with pytest.raises(ConfigError) as err:
            load_config(child)
        assert str(err.value).startswith(f"{base}{error if error.startswith(' and ') else ': ' + error}"), str(
            err.value
        )
    write(child, "base: base.yaml\ntokenizer: {n_embed: 128}\n")  # both files set a key the rule names
    with pytest.raises(ConfigError, match=rf"^{re.escape(f'{base} and {child}: model.codebook_size (512) != ')}"):
        load_config(child)
    write(base, f"base: {tiny}\n")
    write(child, "base: base.yaml\n")
    with pytest.raises(ConfigError, match=rf"^{re.escape(f'{child}: sample.steps: T=3')}"):  # --set: the file named
        load_config(child, ["sample.steps=3"])


def test_cli_config_prints_the_resolved_config_without_base(tmp_path, capsys):
    write(tmp_path / "base.yaml", BASE)
    child = write(tmp_path / "child.yaml", "base: base.yaml\ntrain: {steps: 5}\n")
    assert main(["config", str(child)]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert "base" not in printed
    assert (printed["name"], printed["train"]["steps"], printed["train"]["lr"]) == ("base", 5, 0.1)
