"""Rules that span config sections, checked when an experiment loads (a component sees only its own section,
so nothing deeper in a run can check these). Each rule returns ``(dotted key, what is wrong and what to do)``
or None; ``check_experiment`` raises the first failure as a ``ConfigError`` naming the file and the key.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Optional

from core.config import ConfigError

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
    if cfg.sample.sampler != "progressive":
        return None
    why = _stage_sizes_problem(cfg.model.seq_len, cfg.sample.steps, cfg.sample.schedule)
    return ("sample.steps", f"{why} (sample.schedule {cfg.sample.schedule!r})") if why else None


def codebooks_fit_the_token_shards(cfg) -> Problem:
    from tokenization.shards import MAX_CODEBOOK

    for key, k in (("tokenizer.n_embed", cfg.tokenizer.n_embed), ("model.codebook_size", cfg.model.codebook_size)):
        if k > MAX_CODEBOOK:
            return key, f"{k} codes do not fit the token shards (int16 token ids, at most {MAX_CODEBOOK} codes)"
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
    for key, trained, sampled in (
        ("guidance_scale", oc.guidance_scale, s.guidance_scale),
        ("revise", oc.revise, s.revise),
        ("revise_threshold", oc.revise_threshold, s.revise_threshold),
        ("temperature", rollout_temperature, s.temperature),
    ):
        if trained != sampled:
            return f"sample.{key}", (
                f"{sampled!r}, but the position policy was trained on rollouts with {trained!r} "
                f"(train.order_learner.{'token_mode/temperature' if key == 'temperature' else key}): the policy "
                f"would read other features than it learned from; make the two equal"
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
    learned_order_trains_progressively,
    sampler_matches_the_trained_model,
    learned_order_samples_as_it_was_trained,
    emage_state_head_is_trained,
    vq_diffusion_has_no_order_and_no_speed_table,
    super_resolution_fits_the_generator,
    evaluation_fits_the_data,
    mixing_names_the_sources,
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


def check_experiment(cfg, source: str) -> None:
    """Raise ``ConfigError`` for the first rule the experiment ``cfg`` breaks."""
    for key, msg in problems(cfg):
        raise ConfigError(f"{source}: {key}: {msg}" if key else f"{source}: {msg}")
