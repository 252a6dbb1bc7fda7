"""Rules that span config sections, checked when an experiment loads (a component sees only its own section,
so nothing deeper in a run can check these). Each rule returns ``(dotted key, what is wrong and what to do)``
or None; ``check_experiment`` raises the first failure as a ``ConfigError`` naming the file and the key.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Optional

from core.config import ConfigError
from core.config_base import Layers

Problem = Optional[tuple[str, str]]


def _orders() -> list[str]:
    import training.model.order_learner  # noqa: F401  (registers "learned")
    from training.model.orders import ORDERS

    return sorted(ORDERS)


def train_order_is_known(cfg) -> Problem:
    names = _orders()
    if cfg.train.order not in names:
        return "train.order", f"unknown generation order {cfg.train.order!r}; known: {', '.join(names)}"
    return None


def _stage_sizes_problem(L: int, T: int, schedule: str) -> Optional[str]:
    from training.model.orders import stage_sizes

    try:
        stage_sizes(L, T, schedule)
    except ValueError as exc:
        return str(exc)
    return None


def train_stages_fit_the_grid(cfg) -> Problem:
    if cfg.train.mode == "autoregressive":
        return None
    why = _stage_sizes_problem(cfg.model.seq_len, cfg.train.stages, cfg.train.stage_schedule)
    return ("train.stages", f"{why} (train.stage_schedule {cfg.train.stage_schedule!r})") if why else None


def sample_steps_fit_the_grid(cfg) -> Problem:
    """``sample.steps`` as the sampler plans them: the progressive sampler and VQ-Diffusion's token-writing
    strategies write ``plan_steps(L, steps, schedule)`` tokens per step, the reverse chain walks
    ``reverse_timesteps(model.diffusion.timesteps, steps)``."""
    s = cfg.sample
    if s.sampler == "autoregressive":
        return None
    if s.sampler == "vq_diffusion" and s.diffusion_strategy == "reverse":
        from training.model.sampling.diffusion import reverse_timesteps

        try:
            reverse_timesteps(cfg.model.diffusion.timesteps, s.steps)
        except ValueError as exc:
            return "sample.steps", str(exc)
        return None
    from training.model.sampling.progressive import plan_steps

    try:
        plan_steps(cfg.model.seq_len, s.steps, s.schedule)
    except ValueError as exc:
        strategy = f", sample.diffusion_strategy {s.diffusion_strategy!r}" if s.sampler == "vq_diffusion" else ""
        return "sample.steps", f"{exc} (sample.schedule {s.schedule!r}{strategy})"
    return None


def codebooks_fit_the_token_shards(cfg) -> Problem:
    from tokenization.shards import MAX_CODEBOOK

    for key, k in (("tokenizer.n_embed", cfg.tokenizer.n_embed), ("model.codebook_size", cfg.model.codebook_size)):
        if k > MAX_CODEBOOK:
            return key, f"{k} codes do not fit the token shards (int16 token ids, at most {MAX_CODEBOOK} codes)"
    return None


def cluster_sampling_fits_the_codebook(cfg) -> Problem:
    """Cluster sampling groups the codebook's vectors by k-means (``kmeans_codebook``): at most one cluster per
    code."""
    s, k = cfg.sample, cfg.model.codebook_size
    if s.cluster_sampling and s.n_clusters > k:
        return "sample.n_clusters", (
            f"{s.n_clusters} clusters of the {k} codes of model.codebook_size (sample.cluster_sampling: true); "
            f"set n_clusters <= {k}"
        )
    return None


def gumbel_tokenizers_are_loaded(cfg) -> Problem:
    """A Gumbel VQ-GAN is inference-only here (``train_tokenizer`` trains ``kind: vq``): it needs its weights."""
    for name, tok, used in (("tokenizer", cfg.tokenizer, True), ("sr.tokenizer", cfg.sr.tokenizer, cfg.sr.enabled)):
        if used and tok.kind == "gumbel" and not tok.ckpt_path:
            return f"{name}.ckpt_path", (
                f"{name}.kind: gumbel is loaded from its weights, never trained here: set the checkpoint's path, "
                f"or kind: vq to train a tokenizer"
            )
    return None


CLIP_SCHEMAS = ("hf-hub:", "local-dir:")  # open_clip's names of a model by where it lies, not by architecture
REGISTERS = "text_encoder.clip_model_config"  # a JSON architecture file: its stem is the name it registers


def _clip_uses(cfg) -> list[tuple[str, str, bool]]:
    """``(key, open_clip architecture name, whether open_clip reads '/' as '-')`` of each CLIP this run builds by
    name: the evaluation's (``evaluation.clip_model``: only with a checkpoint), the order learner's reward and the
    text encoder (``tokenization.text``: exact names). The ``hf-hub:`` and ``local-dir:`` forms are left to the
    stage (the text encoder refuses them there)."""
    ev, oc, te = cfg.eval, cfg.train.order_learner, cfg.text_encoder
    uses = [
        ("eval.clip_model", ev.clip_model, True, {"clip_score", "retrieval"} & set(ev.metrics) and ev.clip_checkpoint),
        ("train.order_learner.clip_model", oc.clip_model, True, cfg.train.order == "learned" and oc.reward == "clip"),
        ("text_encoder.clip_model", te.clip_model, False, te.kind == "clip"),
    ]
    return [(k, name, slash) for k, name, slash, used in uses if used and not name.startswith(CLIP_SCHEMAS)]


def _open_clip_architectures() -> Optional[set[str]]:
    """open_clip's architecture names: its own list once it is imported (with those registered in this process),
    else the stems of the model configs it ships, read without importing it (that takes seconds, on every
    ``pt2i config`` and ``status``); None without open_clip."""
    if "open_clip" in sys.modules:
        return set(sys.modules["open_clip"].list_models())
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        return None
    return {p.stem for folder in spec.submodule_search_locations for p in Path(folder, "model_configs").glob("*.json")}


def clip_models_are_known(cfg) -> Problem:
    """open_clip builds each CLIP from its architecture name when the stage starts; a mistyped name would fail
    only then. Known: open_clip's architectures, and for the text encoder the file stem of
    ``text_encoder.clip_model_config`` (which only the text encoder registers, when it loads)."""
    uses = _clip_uses(cfg)
    known = _open_clip_architectures() if uses else None
    if known is None:
        return None
    for key, name, slash in uses:
        registers = key == "text_encoder.clip_model" and cfg.text_encoder.clip_model_config
        own = {Path(cfg.text_encoder.clip_model_config).stem} if registers else set()
        if name not in known | own and not (slash and name.replace("/", "-") in known):
            close = difflib.get_close_matches(name, sorted(known), n=1)
            hint = f"did you mean {close[0]!r}?" if close else "see open_clip.list_models()"
            how = f"; or register one with {REGISTERS}" if key == "text_encoder.clip_model" else ""
            return key, f"unknown open_clip architecture {name!r}; {hint}{how}"
    return None


def learned_order_clip_reward_has_weights(cfg) -> Problem:
    """reward: clip with no weights: open_clip builds ``clip_model`` randomly initialised unless the name is a folder
    or hub repository that carries them (its ``pretrained`` argument is then ignored)."""
    t, ol = cfg.train, cfg.train.order_learner
    if (
        t.order == "learned"
        and ol.reward == "clip"
        and not ol.clip_pretrained
        and not ol.clip_model.startswith(CLIP_SCHEMAS)
    ):
        return "train.order_learner.clip_pretrained", (
            f"not set: reward: clip would score with a randomly initialised {t.order_learner.clip_model}; "
            "set it to an open_clip weights file or tag (or name a 'local-dir:' or 'hf-hub:' clip_model: "
            "it carries its weights)"
        )
    return None


def learned_order_trains_progressively(cfg) -> Problem:
    t = cfg.train
    if t.order != "learned":
        return None
    if t.mode != "progressive":
        return "train.order", f"learned needs train.mode: progressive, got {t.mode!r}"
    oc = t.order_learner
    if oc.stages not in (None, t.stages):
        return "train.order_learner.stages", f"{oc.stages} must equal train.stages ({t.stages}) or be left unset"
    if oc.schedule != t.stage_schedule:
        return "train.order_learner.schedule", f"{oc.schedule!r} must equal train.stage_schedule {t.stage_schedule!r}"
    return None


def sampler_matches_the_trained_model(cfg) -> Problem:
    from training.model import KIND_SAMPLERS, model_kind

    want = KIND_SAMPLERS[model_kind(cfg.train.mode)]
    if cfg.sample.sampler != want:
        return "sample.sampler", (
            f"{cfg.sample.sampler!r} cannot sample a model trained with train.mode {cfg.train.mode!r}; set "
            f"sample.sampler: {want}"
        )
    if cfg.sample.order == "learned" and cfg.train.order != "learned":
        return "sample.order", (
            f"learned samples with the position policy of a train.order: learned run, but train.order is "
            f"{cfg.train.order!r}; choose another sample.order or train the order"
        )
    return None


def learned_order_samples_as_it_was_trained(cfg) -> Problem:
    """The policy reads at sampling time what its training rollouts gave it: same guidance, revision and
    token temperature (``training.model.order_learner.rollout``)."""
    if cfg.sample.order != "learned" or cfg.train.order != "learned":
        return None
    s, oc = cfg.sample, cfg.train.order_learner
    rollout_temperature = 0.0 if oc.token_mode == "argmax" else oc.temperature
    for key, trained, sampled, learner_keys in (
        ("guidance_scale", oc.guidance_scale, s.guidance_scale, "guidance_scale"),
        ("revise", oc.revise, s.revise, "revise"),
        ("revise_threshold", oc.revise_threshold, s.revise_threshold, "revise_threshold"),
        ("temperature", rollout_temperature, s.temperature, "token_mode, train.order_learner.temperature"),
    ):
        if trained != sampled:
            return f"sample.{key}", (
                f"{sampled!r}, but the position policy was trained on rollouts with {trained!r} "
                f"(train.order_learner.{learner_keys}): the policy would read other features than it learned "
                f"from; make the two equal"
            )
    return None


def emage_state_head_is_trained(cfg) -> Problem:
    """Emage's loss trains the state head only with train.emage_state_weight > 0; an untrained head can
    neither order the positions nor revise."""
    t, s = cfg.train, cfg.sample
    if t.mode != "emage" or t.emage_state_weight > 0 or s.sampler != "progressive":
        return None
    if s.order == "state":
        return "sample.order", (
            "state: the state head of a train.mode: emage run with train.emage_state_weight: 0 is untrained; "
            "use sample.order: confidence (Emage), or train the head with train.emage_state_weight > 0"
        )
    if s.revise and not s.repredict:
        return "sample.revise", (
            "the untrained state head of a train.mode: emage run (train.emage_state_weight: 0) cannot revise; "
            "set sample.repredict: true (Emage Algorithm 3) or sample.revise: false, or train the head"
        )
    return None


def vq_diffusion_has_no_order_and_no_speed_table(cfg) -> Problem:
    if cfg.train.mode != "vq_diffusion":
        return None
    if cfg.train.order == "learned":
        return "train.order", "learned trains a position policy for PDM; train.mode vq_diffusion has no order"
    if "speed" in cfg.eval.metrics:
        return "eval.metrics", (
            "'speed' times the progressive and autoregressive samplers (Table 4); remove it for train.mode vq_diffusion"
        )
    return None


def super_resolution_fits_the_generator(cfg) -> Problem:
    from training.superres_config import check_super_resolution

    try:
        check_super_resolution(cfg.sr, cfg.model, cfg.tokenizer, cfg.data.download.source)
    except ValueError as exc:
        return "", str(exc)
    return None


def evaluation_fits_the_data(cfg) -> Problem:
    from tokenization.download_sources import has_eval_split

    synthetic = cfg.data.download.source == "synthetic"
    if "attributes" in cfg.eval.metrics and not synthetic:
        return "eval.metrics", "'attributes' reads the synthetic shapes back: only with data.download.source: synthetic"
    if "fd_vq" in cfg.eval.metrics and not synthetic:
        return (
            "eval.metrics",
            "'fd_vq' compares with the synthetic eval images: only with data.download.source: synthetic",
        )
    if not synthetic and not cfg.eval.coco_captions and not has_eval_split(cfg.data.download):
        return "data.download.eval_split", (
            "the evaluation prompts of a non-synthetic source come from its held-out split or MS COCO: hold out "
            "some of the url lists (e.g. data.download.eval_split: 0.01, or an eval_url_list), or set "
            "eval.coco_captions to captions_val2014.json"
        )
    return None


def train_batch_splits_over_the_ranks(cfg) -> Problem:
    """The engine's rule (``training.engine.micro_batch``) for the ranks the launcher starts: one process for
    ``local``, ``cluster.deepspeed_launch.world_size`` (DeepSpeed, Slurm) / ``cluster.ray_train.num_workers``."""
    from training.engine import micro_batch

    c = cfg.cluster
    if c.launcher == "local":
        ranks = 1
    elif c.launcher in ("deepspeed", "slurm"):
        from cluster.deepspeed_launch import world_size

        ranks = world_size(c)
    else:
        from cluster.ray_train import num_workers

        ranks = num_workers(c)[0]
    try:
        micro_batch(cfg.train, ranks)
    except ValueError as exc:
        per_node = (
            f"cluster.gpus_per_node {c.gpus_per_node}"
            if c.gpus_per_node > 0
            else f"cluster.procs_per_node {c.procs_per_node}"
        )
        return "train.batch_size", (
            f"{exc} (cluster.launcher {c.launcher}: cluster.num_nodes {c.num_nodes} x {per_node}); use a multiple of "
            f"{ranks} x train.grad_accum ({ranks * cfg.train.grad_accum})"
        )
    return None


def deepspeed_hosts_fit_the_nodes(cfg) -> Problem:
    """The DeepSpeed launcher writes its hostfile from ``cluster.hosts``: one host per node
    (``cluster.deepspeed_launch.plan``). Hosts left to a Ray ``cluster.address`` are only known at run time."""
    from cluster.deepspeed_launch import needs_hostfile

    c = cfg.cluster
    if c.launcher != "deepspeed" or c.hostfile is not None or not needs_hostfile(c):
        return None
    if not c.hosts and c.address:
        return None  # cluster.deepspeed_launch.with_ray_hosts takes them from the Ray cluster's alive nodes
    for i, host in enumerate(c.hosts):  # DeepSpeed's hostfile parser refuses an empty or repeated host
        if not host.strip():
            return f"cluster.hosts[{i}]", "empty: give the host name of one node"
        if host in c.hosts[:i]:
            return f"cluster.hosts[{i}]", f"{host!r} is listed twice: list each node once, one per cluster.num_nodes"
    if len(c.hosts) != c.num_nodes:
        return "cluster.hosts", (
            f"lists {len(c.hosts)} host(s) for cluster.num_nodes {c.num_nodes}: list one per node, give a "
            "cluster.hostfile, or leave hosts empty and set cluster.address to take them from the Ray cluster's "
            "alive nodes"
        )
    return None


def sample_stage_draws_one_candidate(cfg) -> Problem:
    """The sample stage has no reranking scorer (``evaluation.sample_stage``)."""
    if cfg.sample.n_candidates > 1:
        return "sample.n_candidates", (
            f"{cfg.sample.n_candidates}: more than one candidate per prompt needs a reranking scorer, which the "
            "sample stage does not provide; set sample.n_candidates: 1"
        )
    return None


FID_MIN_IMAGES = 2  # evaluation.fid.FIDEvaluator.features: a covariance needs two images


def evaluation_has_enough_prompts(cfg) -> Problem:
    """The sample stage draws the first ``eval.num_prompts`` eval captions (of ``data.synthetic.n_eval`` for the
    synthetic source), one image each; FID needs at least two images (``evaluation.fid``)."""
    ev, syn = cfg.eval, cfg.data.synthetic
    fid = "fid" in ev.metrics
    if fid and ev.num_prompts < FID_MIN_IMAGES:
        return "eval.num_prompts", f"{ev.num_prompts}: FID needs at least {FID_MIN_IMAGES} generated images"
    need = FID_MIN_IMAGES if fid else 1
    if cfg.data.download.source == "synthetic" and syn.n_eval < need:
        why = f"FID needs at least {FID_MIN_IMAGES} images" if fid else "the sample stage has no prompt"
        return "data.synthetic.n_eval", (
            f"{syn.n_eval}: the evaluation prompts are the synthetic eval captions and {why}; set n_eval >= {need}"
        )
    return None


def synthetic_train_split_can_train(cfg) -> Problem:
    """The tokenizer trains on the downloaded train images and holds one out (``tokenization.vqgan.train``);
    the tokenize and train stages need at least one."""
    if cfg.data.download.source != "synthetic":
        return None
    need = 1 if cfg.tokenizer.ckpt_path else 2
    n = cfg.data.synthetic.n_train
    if n < need:
        why = "the tokenize and train stages need images" if need == 1 else "the tokenizer holds one image out"
        return "data.synthetic.n_train", f"{n}: {why}; set n_train >= {need}"
    return None


def mixing_names_the_sources(cfg) -> Problem:
    d, weights = cfg.data.download, cfg.data.mixing.weights
    names = [s.name for s in d.sources]
    unknown = sorted(set(weights) - set(names))
    if unknown:
        known = f"the sources are {names}" if names else "only data.download.source: sources has several sources"
        return "data.mixing.weights", f"{unknown} name no source of data.download.sources; {known}"
    if weights and names and not any(weights.get(n, 1.0) > 0 for n in names):
        return "data.mixing.weights", "every source has weight 0: give at least one a weight > 0"
    return None


RULES: tuple[Callable[[Any], Problem], ...] = (
    train_order_is_known,
    train_stages_fit_the_grid,
    sample_steps_fit_the_grid,
    cluster_sampling_fits_the_codebook,
    gumbel_tokenizers_are_loaded,
    clip_models_are_known,
    learned_order_clip_reward_has_weights,
    learned_order_trains_progressively,
    sampler_matches_the_trained_model,
    learned_order_samples_as_it_was_trained,
    emage_state_head_is_trained,
    vq_diffusion_has_no_order_and_no_speed_table,
    super_resolution_fits_the_generator,
    evaluation_fits_the_data,
    mixing_names_the_sources,
    train_batch_splits_over_the_ranks,
    deepspeed_hosts_fit_the_nodes,
    sample_stage_draws_one_candidate,
    evaluation_has_enough_prompts,
    synthetic_train_split_can_train,
)


def problems(cfg) -> Iterator[tuple[str, str]]:
    from training.model.config import check_against

    found = codebooks_fit_the_token_shards(cfg)
    if found:
        yield found
    try:
        check_against(cfg.model, cfg.tokenizer, cfg.text_encoder)
    except ValueError as exc:  # its message names both keys
        yield "", str(exc)
    for rule in RULES:
        found = rule(cfg)
        if found:
            yield found


def _keys_in(msg: str, cfg) -> list[str]:
    """The dotted keys of ``cfg``'s sections that a message names (``model.codebook_size (512) != ...``)."""
    sections = {f.name for f in dataclasses.fields(cfg)}
    found = re.findall(r"(?<![\w.])([a-z_]+(?:\.[a-z_0-9]+)+)", msg)
    return [k for k in dict.fromkeys(found) if k.split(".")[0] in sections]


def check_experiment(cfg, source: str | Layers) -> None:
    """Raise ``ConfigError`` for the first rule the experiment ``cfg`` breaks, naming the file that set the key
    (``source``: the file, or the files the config was read from). A rule without one key names the files that
    set the keys its message names; a rule with one key names the files of the other keys its message names too
    (a batch size set in one file that the ranks of another file's cluster cannot split)."""
    for key, msg in problems(cfg):
        where = source
        if isinstance(source, Layers):
            named = [source.set_by(k) for k in ([key] if key else []) + _keys_in(msg, cfg)]
            where = " and ".join(dict.fromkeys(f for f in named if f)) or source.source_of("")
        raise ConfigError(f"{where}: {key}: {msg}" if key else f"{where}: {msg}")
