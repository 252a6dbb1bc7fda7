"""Pretrain a tiny T5 encoder on a text-to-text task before it is frozen.

A random tiny T5 (``build_tiny_t5``) gives nearly bag-of-words states: two captions with the same
words in another order ("a small red circle at the top left and a large blue square at the bottom
right" vs "a large red circle at the bottom left and a small blue square at the top right") differ by
about 3% of the state norm, so no decoder can tell which attribute belongs to which shape. A real
T5 is pretrained and its states are contextual. `pretrain_t5` gives the tiny one a little of that: it
adds a T5 decoder of the same size, trains the pair on (source -> target) texts with teacher-forced
cross-entropy, and keeps the encoder. For the synthetic captions the task is restating a caption
with its shapes in a fixed position order (`tokenization.synthetic.canonical_caption`): the decoder
can only do that if the encoder binds every attribute to its position. Other captions (a user's own
data) have no such restatement: the task is then writing the caption back as it is. The decoder sees
the encoder's states only through cross-attention, so it can write the words back in their order only
if each state carries its word's position and neighbours: the states stop being a bag of words.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Optional

import torch

RECIPE_FILE = "t5_pretrain.json"


class OtherRecipe(ValueError):
    """The folder was already pretrained with other inputs or settings."""


def pretrain_t5(
    encoder_dir: str | os.PathLike,
    sources: Sequence[str],
    targets: Sequence[str],
    steps: int,
    batch_size: int = 128,
    lr: float = 3e-3,
    seed: int = 0,
    progress: bool = False,
    log: Optional[Callable[[str], None]] = None,
) -> dict:
    """Train the T5 encoder saved in `encoder_dir` on (source -> target) for `steps` steps, in place.

    The folder keeps its tokenizer; the weights are replaced atomically and a recipe stamp is written,
    so calling again with the same inputs does nothing. Returns ``{"loss": last loss, "steps": steps}``.
    CPU only by design (tiny models); deterministic from the inputs and `seed`.
    """
    import hashlib

    from tqdm.auto import tqdm
    from transformers import T5Config, T5EncoderModel, T5ForConditionalGeneration, T5Tokenizer

    from tokenization.text import _no_progress_bars

    if len(sources) != len(targets) or not sources:
        raise ValueError(f"need as many targets as sources (got {len(sources)} and {len(targets)}), at least one")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    folder = Path(encoder_dir)
    recipe = {
        "steps": steps,
        "batch_size": batch_size,
        "lr": lr,
        "seed": seed,
        "version": 1,
        "pairs_sha256": hashlib.sha256("\n".join(f"{s}\t{t}" for s, t in zip(sources, targets)).encode()).hexdigest(),
    }
    stamp = folder / RECIPE_FILE
    if stamp.is_file():
        done = json.loads(stamp.read_text())
        if {k: v for k, v in done.items() if k != "loss"} == recipe:
            return {"loss": done["loss"], "steps": steps}
        raise OtherRecipe(f"{folder} was already pretrained with another recipe; rebuild it with build_tiny_t5")

    tok = T5Tokenizer.from_pretrained(str(folder))
    with _no_progress_bars():
        encoder = T5EncoderModel.from_pretrained(str(folder))
    cfg = encoder.config
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        full = T5ForConditionalGeneration(
            T5Config(
                **{
                    **cfg.to_dict(),
                    "is_encoder_decoder": True,
                    "use_cache": False,
                    "num_decoder_layers": cfg.num_layers,
                }
            )
        )
    missing = [
        k
        for k in full.load_state_dict(encoder.state_dict(), strict=False).missing_keys
        if not k.startswith(("decoder.", "lm_head."))
    ]
    if missing:
        raise ValueError(f"{folder} is not a T5 encoder of the expected layout; missing {missing[:5]}")
    src = tok(list(sources), padding=True, return_tensors="pt")
    tgt = tok(list(targets), padding=True, return_tensors="pt").input_ids
    labels_all = tgt.masked_fill(tgt == tok.pad_token_id, -100)
    opt = torch.optim.AdamW(full.parameters(), lr=lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(seed)
    full.train()
    loss = float("nan")
    # one thread: a tiny model gains little from more, and OpenMP's spin-waits crawl when another process
    # shares the cores (the demo's 500 steps took 583 s at two threads beside another job; ~60 CPU-s at one)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for step in tqdm(range(steps), desc="pretrain T5", disable=not progress):
            idx = torch.randint(0, len(sources), (min(batch_size, len(sources)),), generator=g)
            out = full(input_ids=src.input_ids[idx], attention_mask=src.attention_mask[idx], labels=labels_all[idx])
            opt.zero_grad(set_to_none=True)
            out.loss.backward()
            opt.step()
            loss = float(out.loss.detach())
            if log is not None and (step + 1) % max(1, steps // 10) == 0:
                log(f"pretrain T5 step {step + 1}/{steps}: loss {loss:.4f}")
    finally:
        torch.set_num_threads(threads)

    trained = T5EncoderModel(cfg)
    trained.load_state_dict({k: v for k, v in full.state_dict().items() if k in trained.state_dict()})
    tmp = folder.with_name(folder.name + ".pretrain.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(folder, tmp)
    with _no_progress_bars():
        trained.save_pretrained(str(tmp))
    (tmp / RECIPE_FILE).write_text(json.dumps({**recipe, "loss": loss}, sort_keys=True))
    old = folder.with_name(folder.name + ".pretrain.old")
    shutil.rmtree(old, ignore_errors=True)
    os.replace(folder, old)
    os.replace(tmp, folder)
    shutil.rmtree(old)
    return {"loss": loss, "steps": steps}


def pretrain_on_captions(
    encoder_dir: str | os.PathLike,
    captions: Sequence[str],
    steps: int,
    seed: int = 0,
    batch_size: int = 128,
    log: Optional[Callable[[str], None]] = None,
) -> dict:
    """`pretrain_t5` on restating captions: a synthetic caption -> the same caption with its shapes in
    position order (`tokenization.synthetic.canonical_caption`), any other caption -> itself."""
    return pretrain_t5(
        encoder_dir,
        captions,
        [restatement(c) for c in captions],
        steps,
        batch_size=batch_size,
        seed=seed,
        log=log,
    )


def restatement(caption: str) -> str:
    """The pretraining target of a caption: its shapes in position order when it is a synthetic caption,
    else the caption itself."""
    from tokenization.synthetic import canonical_caption

    try:
        return canonical_caption(caption)
    except ValueError:
        return caption
