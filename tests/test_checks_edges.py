"""Edges of the load-time checks (``pipeline.checks``, ``cluster.config``) and of the pre-run file check
(``pipeline.preflight``): cluster sampling within the codebook, known open_clip architectures, DeepSpeed hosts and
master address, the files a rule's message names, ``eval.ar_export`` and ``eval.retrieval_images``."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from core.config import ConfigError
from pipeline.experiment import load_config
from pipeline.preflight import missing_files

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny.yaml"


@pytest.fixture
def open_clip_names(monkeypatch):
    """open_clip's architectures, without importing it (seconds): a stand-in module listing a few."""
    monkeypatch.setitem(sys.modules, "open_clip", SimpleNamespace(list_models=lambda: ["RN50", "ViT-B-32"]))


def load(tmp_path: Path, *sets: str, path: Path = TINY):
    return load_config(path, [f"run_dir={tmp_path / 'run'}", *sets])


def refused(tmp_path: Path, *sets: str, path: Path = TINY) -> str:
    with pytest.raises(ConfigError) as exc:
        load(tmp_path, *sets, path=path)
    return str(exc.value)


def test_cluster_sampling_needs_at_most_one_cluster_per_code(tmp_path):
    err = refused(tmp_path, "sample.cluster_sampling=true", "sample.n_clusters=257")
    assert "tiny.yaml: sample.n_clusters: 257 clusters of the 256 codes" in err and "n_clusters <= 256" in err
    load(tmp_path, "sample.cluster_sampling=true", "sample.n_clusters=256", "sample.top_k=0")
    load(tmp_path, "sample.n_clusters=500")  # not read without cluster sampling


CLIP_EVAL = ["eval.metrics=[fid,clip_score]", "eval.clip_checkpoint=/models/clip.bin"]
CLIP_REWARD = ["train.order=learned", "train.order_learner.reward=clip"]
CLIP_TEXT = ["text_encoder.kind=clip", "text_encoder.path=/models/clip.pt"]


REFUSED = [
    (CLIP_EVAL + ["eval.clip_model=ViT-B-23"], "eval.clip_model"),
    (CLIP_REWARD + ["train.order_learner.clip_model=ViT-B-23"], "train.order_learner.clip_model"),
    (CLIP_TEXT + ["text_encoder.clip_model=ViT-B-23"], "text_encoder.clip_model"),
    (CLIP_TEXT + ["text_encoder.clip_model=ViT-B/32"], "text_encoder.clip_model"),  # read as is there
]
LOADS = [
    ["eval.clip_model=ViT-B-23"],  # no CLIP metric: never built
    ["eval.metrics=[fid,clip_score]", "eval.clip_model=ViT-B-23"],  # no checkpoint: a note, not a model
    CLIP_EVAL + ["eval.clip_model=ViT-B/32"],  # open_clip reads '/' as '-' when it builds the model
    CLIP_EVAL + ["eval.clip_model=local-dir:/models/clip", "eval.clip_checkpoint=null"],
    CLIP_REWARD + ["train.order_learner.clip_model=hf-hub:org/clip"],
    CLIP_TEXT + ["text_encoder.clip_model=mine", "text_encoder.clip_model_config=/models/mine.json"],
]


def test_an_open_clip_architecture_is_checked_where_it_is_used(tmp_path, open_clip_names):
    for sets, key in REFUSED:
        err = refused(tmp_path, *sets)
        assert f"tiny.yaml: {key}: unknown open_clip architecture" in err and "did you mean 'ViT-B-32'?" in err, err
    for sets in LOADS:
        load(tmp_path, *sets)


def test_only_the_text_encoder_registers_its_clip_model_config(tmp_path, open_clip_names):
    """The file's stem names an architecture for the text encoder (which registers it); the evaluation's CLIP never
    sees that file, so the same name there fails in the stage: refused at load, without the hint to register it."""
    err = refused(tmp_path, *CLIP_EVAL, "eval.clip_model=mine", "text_encoder.clip_model_config=/models/mine.json")
    assert "tiny.yaml: eval.clip_model: unknown open_clip architecture 'mine'" in err and "register" not in err


def test_open_clip_architectures_are_listed_without_importing_it(monkeypatch):
    from pipeline.checks import _open_clip_architectures

    monkeypatch.delitem(sys.modules, "open_clip", raising=False)
    names = _open_clip_architectures()
    assert {"ViT-B-32", "RN50", "ViT-L-14"} <= names and "open_clip" not in sys.modules


DEEPSPEED = ["cluster.launcher=deepspeed", "cluster.num_nodes=2"]


def test_deepspeed_hosts_are_unique_and_named(tmp_path):
    err = refused(tmp_path, *DEEPSPEED, "cluster.hosts=[node-0, node-0]")
    assert "tiny.yaml: cluster.hosts[1]: 'node-0' is listed twice" in err
    assert "tiny.yaml: cluster.hosts[0]: empty" in refused(tmp_path, *DEEPSPEED, "cluster.hosts=['', node-1]")
    assert "cluster.hosts[1]: empty" in refused(tmp_path, *DEEPSPEED, "cluster.hosts=[node-0, ' ']")
    load(tmp_path, *DEEPSPEED, "cluster.hosts=[node-0, node-1]")


def test_an_empty_master_address_is_refused_for_deepspeed(tmp_path):
    assert "tiny.yaml: cluster: master_addr is empty" in refused(tmp_path, "cluster.master_addr=''")  # deepspeed
    load(tmp_path, "cluster.launcher=local", "cluster.master_addr=''")  # never read: a saved config still loads


def test_a_rule_names_the_files_of_the_other_keys_its_message_names(tmp_path):
    child = tmp_path / "child.yaml"
    child.write_text(f"base: {TINY}\ncluster: {{launcher: deepspeed, num_nodes: 3, hosts: [a, b, c]}}\n")
    err = refused(tmp_path, path=child)
    assert f"{TINY} and {child}: train.batch_size: " in err and "cluster.num_nodes 3" in err, err


def test_the_ar_export_is_checked_when_speed_is_measured(tmp_path):
    gone = tmp_path / "ar" / "export"
    cfg = load(tmp_path, "eval.metrics=[fid,speed]", f"eval.ar_export={gone}")
    assert missing_files(cfg, ["evaluate"]) == [f"eval.ar_export: {gone} (read by the evaluate stage)"]
    assert missing_files(load(tmp_path, f"eval.ar_export={gone}"), ["evaluate"]) == []  # no speed: not read


def test_retrieval_shards_are_checked_and_a_mistyped_keyword_is_named(tmp_path, open_clip_names, monkeypatch):
    ckpt = tmp_path / "clip.bin"
    ckpt.write_text("x")
    retrieval = ["eval.metrics=[fid,retrieval]", f"eval.clip_checkpoint={ckpt}"]

    def missing(images: str) -> list[str]:
        return missing_files(load(tmp_path, *retrieval, f"eval.retrieval_images={images}"), ["evaluate"])

    assert missing("downlaod") == [
        "eval.retrieval_images: downlaod not found (a folder of .tar shards, or a brace pattern of them) "
        "(read by the evaluate stage; did you mean 'download'?)"
    ]
    assert missing("auto") == missing("download") == missing("synthetic") == []
    shards = tmp_path / "shards"
    assert missing(str(shards)) == [
        f"eval.retrieval_images: {shards} not found (a folder of .tar shards, or a brace pattern of them) "
        "(read by the evaluate stage)"
    ]
    shards.mkdir()  # what the evaluate stage refuses, refused before the run: a folder without shards
    assert missing(str(shards)) == [f"eval.retrieval_images: no .tar shards in {shards} (read by the evaluate stage)"]
    (tmp_path / "0.tar").write_text("")
    pattern = f"{tmp_path}/{{0..1}}.tar"
    assert missing(pattern) == [
        f"eval.retrieval_images: 1 of 2 shards of {pattern} not found, e.g. {tmp_path / '1.tar'} "
        "(read by the evaluate stage)"
    ]
    (tmp_path / "1.tar").write_text("")
    assert missing(pattern) == [] and missing(str(tmp_path)) == []
    monkeypatch.setenv("HOME", str(tmp_path))
    assert missing("~/{0..1}.tar") == [] and missing("~/") == []  # the reader expands ~ like every path setting
    assert missing("s3://bucket/{0..1}.tar") == []  # URLs are left to the stage


@pytest.mark.parametrize("prefix, sets", [("tokenizer", ()), ("sr.tokenizer", ("sr.enabled=true",))])
def test_a_gumbel_tokenizer_needs_its_weights(tmp_path, prefix, sets):
    """Gumbel VQ-GANs are inference-only: without ckpt_path the tokenizer stage would fail after download."""
    err = refused(tmp_path, *sets, f"{prefix}.kind=gumbel")
    assert f"tiny.yaml: {prefix}.ckpt_path: {prefix}.kind: gumbel is loaded from its weights" in err
    weights = tmp_path / "gumbel.ckpt"
    load(tmp_path, *sets, f"{prefix}.kind=gumbel", f"{prefix}.ckpt_path={weights}")  # the file is preflight's


def test_an_unused_gumbel_sr_tokenizer_loads(tmp_path):
    assert not load(tmp_path, "sr.tokenizer.kind=gumbel").sr.enabled


LEARNED_CLIP = ["train.order=learned", "train.stages=16", "train.order_learner.reward=clip"]


@pytest.mark.parametrize("weights", ["null", "''"])
def test_a_learned_order_clip_reward_needs_weights(tmp_path, weights):
    """open_clip builds the reward's CLIP randomly initialised without weights: the policy would chase noise."""
    err = refused(tmp_path, *LEARNED_CLIP, f"train.order_learner.clip_pretrained={weights}")
    assert "tiny.yaml: train.order_learner.clip_pretrained: not set: reward: clip would score with a randomly" in err
    load(tmp_path, *LEARNED_CLIP, "train.order_learner.clip_pretrained=laion2b_s34b_b79k")
    load(tmp_path, *LEARNED_CLIP, "train.order_learner.clip_model=local-dir:/models/clip")  # carries its weights
    load(tmp_path, *LEARNED_CLIP, "train.order_learner.clip_model=hf-hub:org/clip")
    load(tmp_path, "train.order_learner.reward=clip")  # no policy is trained without order: learned
