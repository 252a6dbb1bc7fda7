"""Frozen text encoders (T5 or an open_clip text tower), loaded only from local files.

    enc = load_text_encoder(TextEncoderConfig(kind="t5", path="/models/t5-base", dim=768, max_length=128))
    ids, mask = enc.tokenize(["a red circle"])      # LongTensor [B,S], BoolTensor [B,S] (S <= max_length)
    states = enc.encode(ids, mask)                  # FloatTensor [B,S,dim], zero at padding, no grad

Nothing is ever fetched from a hub: T5 is a `save_pretrained` folder (`T5EncoderModel` + its
tokenizer), CLIP an open_clip architecture name plus a local checkpoint file. Missing files raise
`TextEncoderNotFound` naming the path, what must be in it and where to get it.

Truncation policy: captions longer than `max_length` tokens are cut to `max_length` (for T5 the last
kept token is the end-of-sequence token, for CLIP the end-of-text token); with `truncation: warn`
(default) one `TextTruncationWarning` is emitted per encoder, `silent` says nothing, `error` raises.

`build_tiny_t5` makes a tiny random T5 encoder and a word-level Unigram tokenizer from captions,
for the CPU demo and the tests (no real T5 can be downloaded on these machines).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import string
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

import torch

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
T5_HELP = (
    "a T5 encoder saved with save_pretrained: config.json, model.safetensors (or pytorch_model.bin), "
    "and tokenizer.json or spiece.model. Get it on a machine with internet, e.g. "
    "`T5EncoderModel.from_pretrained('google-t5/t5-base').save_pretrained(DIR)` and "
    "`AutoTokenizer.from_pretrained('google-t5/t5-base').save_pretrained(DIR)`, then copy DIR here "
    "(or build a tiny random one with tokenization.text.build_tiny_t5)"
)
CLIP_HELP = (
    "an open_clip checkpoint file for the architecture text_encoder.clip_model (e.g. "
    "open_clip_pytorch_model.bin of ViT-B-32/laion2b_s34b_b79k from the HF hub), downloaded on a "
    "machine with internet"
)


@dataclass
class TextEncoderConfig:
    """The `text_encoder` section: which frozen encoder turns captions into token states."""

    kind: Literal["t5", "clip"] = "t5"
    path: str = field(
        default="",
        metadata={
            "path": True,
            "help": "t5: a save_pretrained folder (T5EncoderModel + tokenizer); clip: an open_clip checkpoint file",
        },
    )
    clip_model: str = field(default="ViT-B-32", metadata={"help": "clip: open_clip architecture name"})
    clip_model_config: Optional[str] = field(
        default=None,
        metadata={
            "path": True,
            "help": "clip: a JSON architecture file registered with open_clip.add_model_config (name = file stem)",
        },
    )
    dim: int = field(
        default=64,
        metadata={
            "min": 1,
            "help": "width of the token states (checked at load; must equal model.text_dim; tiny T5 d_model)",
        },
    )
    max_length: int = field(
        default=64,
        metadata={
            "min": 2,
            "help": "tokens per caption incl. special tokens (clip: at most the model's context length)",
        },
    )
    truncation: Literal["warn", "silent", "error"] = field(
        default="warn", metadata={"help": "longer captions are cut to max_length; warn once, silently, or raise"}
    )
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    device: str = field(default="cpu", metadata={"help": "cpu, cuda, cuda:N"})
    tiny_layers: int = field(default=2, metadata={"min": 1, "help": "build_tiny_t5: encoder layers"})
    tiny_heads: int = field(default=4, metadata={"min": 1, "help": "build_tiny_t5: attention heads"})
    tiny_vocab_size: int = field(default=384, metadata={"min": 128, "help": "build_tiny_t5: tokenizer vocabulary"})
    tiny_pretrain_steps: int = field(
        default=0,
        metadata={
            "min": 0,
            "help": "then pretrain it this many steps on restating each caption (a synthetic one with its shapes "
            "in position order; tokenization.t5_pretrain): contextual states; 0 = random encoder",
        },
    )
    tiny_max_captions: int = field(
        default=200000, metadata={"min": 1, "help": "build_tiny_t5: downloaded captions read to fit it"}
    )

    def __post_init__(self):
        if self.dim % self.tiny_heads:
            raise ValueError(f"dim ({self.dim}) must be divisible by tiny_heads ({self.tiny_heads})")
        try:
            torch.device(self.device)  # parses the name only: no CUDA initialisation
        except (RuntimeError, TypeError):
            raise ValueError(f"device must be a torch device (cpu, cuda, cuda:N), got {self.device!r}") from None
        if self.kind != "t5" and not self.path:
            raise ValueError(
                f"kind {self.kind!r} needs path (an open_clip checkpoint file): without one only a tiny T5 can be "
                "built (kind: t5)"
            )


# ``text_encoder`` keys that act only through the encoder's files: the path, or the tiny T5's recipe (the text
# stage's output, whose identity the stages that read it record).
WEIGHT_KEYS = frozenset(
    {"path", "tiny_layers", "tiny_heads", "tiny_vocab_size", "tiny_pretrain_steps", "tiny_max_captions"}
)


# ``text_encoder`` keys that cannot change the text ids written into a token shard: the encoder's files and the
# tiny T5's recipe reach the shards through the text stage's identity; the weights' dtype and device, the width
# (checked at load) and the truncation policy (warn, silent or error: the same cut ids, or no shard) do not act.
TEXT_KEYS_NOT_IN_IDS = WEIGHT_KEYS | {"dim", "dtype", "device", "truncation"}


def text_id_settings(cfg: TextEncoderConfig) -> dict:
    """The ``text_encoder`` settings the text ids of a token shard depend on besides the encoder's files
    (``max_length``, ``kind``, the open_clip tokenizer's model name, ...): every key but ``TEXT_KEYS_NOT_IN_IDS``."""
    from dataclasses import asdict

    return {k: v for k, v in asdict(cfg).items() if k not in TEXT_KEYS_NOT_IN_IDS}


@contextlib.contextmanager
def _no_progress_bars():
    """Silence transformers' per-file progress bars while loading/saving tiny models."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()


class TextEncoderNotFound(FileNotFoundError):
    """The configured encoder files are missing; the message says what is needed and where to get it."""


class TextTruncationWarning(UserWarning):
    """A caption had more than max_length tokens and was cut."""


# ---------------------------------------------------------------- the common interface


class CaptionTokenizer:
    """An encoder's tokenizer with its truncation policy, without the weights: `tokenize(texts) -> (ids, mask)`
    (what the tokenize stage's actors need: `load_text_tokenizer`)."""

    pad_id: int

    def __init__(self, cfg: TextEncoderConfig, max_length: int):
        self.cfg = cfg
        self.max_length = max_length
        self._warned = False

    def _fit(self, seqs: list[list[int]], end_id: Optional[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Apply the truncation policy, then pad to the longest sequence: (ids [B,S], mask [B,S])."""
        long = [i for i, s in enumerate(seqs) if len(s) > self.max_length]
        if long:
            msg = (
                f"{len(long)} of {len(seqs)} captions exceed text_encoder.max_length={self.max_length} "
                f"tokens (longest {max(len(seqs[i]) for i in long)}) and are truncated"
            )
            if self.cfg.truncation == "error":
                raise ValueError(msg)
            if self.cfg.truncation == "warn" and not self._warned:
                self._warned = True
                warnings.warn(msg + " (warned once per encoder)", TextTruncationWarning, stacklevel=3)
            for i in long:
                cut = seqs[i][: self.max_length]
                if end_id is not None:
                    cut[-1] = end_id
                seqs[i] = cut
        width = max([len(s) for s in seqs] + [1])
        ids = torch.full((len(seqs), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.bool)
        for i, s in enumerate(seqs):
            ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
            mask[i, : len(s)] = True
        return ids, mask

    def tokenize(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError


class T5CaptionTokenizer(CaptionTokenizer):
    """The tokenizer of a saved T5 folder (transformers `AutoTokenizer`); captions end with </s>."""

    def __init__(self, cfg: TextEncoderConfig, path: Path):
        super().__init__(cfg, cfg.max_length)
        from transformers import AutoTokenizer

        with _no_progress_bars():
            self.tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        self.pad_id = int(self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0)
        self._eos = self.tokenizer.eos_token_id

    def tokenize(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        seqs = self.tokenizer(list(texts), add_special_tokens=True, truncation=False)["input_ids"]
        return self._fit([list(s) for s in seqs], self._eos)


class ClipCaptionTokenizer(CaptionTokenizer):
    """open_clip's tokenizer of ``cfg.clip_model``, cut at the text tower's context length."""

    def __init__(self, cfg: TextEncoderConfig, context: int):
        super().__init__(cfg, min(cfg.max_length, context))
        import open_clip

        self.tokenizer = open_clip.get_tokenizer(cfg.clip_model)
        self.pad_id = int(getattr(self.tokenizer, "pad_token_id", 0) or 0)
        self._eot = getattr(self.tokenizer, "eot_token_id", None)

    def tokenize(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        texts = list(texts)
        if hasattr(self.tokenizer, "encode") and self._eot is not None:  # SimpleTokenizer: exact lengths
            sot = self.tokenizer.sot_token_id
            seqs = [[sot] + self.tokenizer.encode(t) + [self._eot] for t in texts]
            return self._fit(seqs, self._eot)
        # other open_clip tokenizers pad to a fixed context; one extra slot reveals overflow
        full = self.tokenizer(texts, context_length=self.max_length + 1)
        seqs = []
        for row in full:
            used = (row != self.pad_id).nonzero()
            seqs.append([int(v) for v in row[: int(used.max()) + 1]] if len(used) else [])
        return self._fit(seqs, None)


class TextEncoder(torch.nn.Module):
    """Frozen encoder: `tokenize(texts) -> (ids, mask)` (its `CaptionTokenizer`), `encode(ids, mask) -> states
    [B,S,dim]`."""

    dim: int
    vocab_size: int
    captions: CaptionTokenizer

    def __init__(self, cfg: TextEncoderConfig):
        super().__init__()
        self.cfg = cfg

    @property
    def max_length(self) -> int:
        return self.captions.max_length

    @property
    def pad_id(self) -> int:
        return self.captions.pad_id

    @property
    def tokenizer(self):
        """The library's tokenizer (transformers or open_clip)."""
        return self.captions.tokenizer

    def tokenize(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.captions.tokenize(texts)

    def encode(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _freeze(self) -> None:
        self.eval()
        self.requires_grad_(False)

    def train(self, mode: bool = True):
        """Always stays in eval mode (frozen encoder)."""
        return super().train(False)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device


# ---------------------------------------------------------------- T5


def _check_t5_dir(path: str | Path) -> Path:
    p = Path(path).expanduser() if path else None
    if p is None or not p.is_dir():
        raise TextEncoderNotFound(f"text_encoder.path {str(path)!r} is not a folder; it must hold {T5_HELP}")
    names = {f.name for f in p.iterdir()}
    missing = []
    if "config.json" not in names:
        missing.append("config.json")
    if not names & {
        "model.safetensors",
        "pytorch_model.bin",
        "model.safetensors.index.json",
        "pytorch_model.bin.index.json",
    }:
        missing.append("model.safetensors or pytorch_model.bin")
    if not names & {"tokenizer.json", "spiece.model"}:
        missing.append("tokenizer.json or spiece.model")
    if missing:
        raise TextEncoderNotFound(f"text_encoder.path {str(p)!r} lacks {', '.join(missing)}; it must hold {T5_HELP}")
    return p


class T5TextEncoder(TextEncoder):
    """transformers `T5EncoderModel` + its tokenizer from a local save_pretrained folder."""

    def __init__(self, cfg: TextEncoderConfig, path: Path):
        super().__init__(cfg)
        from transformers import T5EncoderModel

        self.captions = T5CaptionTokenizer(cfg, path)
        with _no_progress_bars():
            self.model = T5EncoderModel.from_pretrained(str(path), local_files_only=True, dtype=_DTYPES[cfg.dtype])
        self.model.to(cfg.device)
        self.dim = int(self.model.config.d_model)
        self.vocab_size = int(self.model.config.vocab_size)
        self._freeze()

    @torch.no_grad()
    def encode(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        dev = self.device
        out = self.model(input_ids=ids.to(dev, torch.long), attention_mask=mask.to(dev).long()).last_hidden_state
        return out * mask.to(dev, out.dtype)[..., None]


# ---------------------------------------------------------------- CLIP (open_clip)


class ClipTextEncoder(TextEncoder):
    """The text tower of an open_clip model: per-token states after ln_final, before pooling/projection."""

    def __init__(self, cfg: TextEncoderConfig):
        super().__init__(cfg)
        import open_clip

        _clip_architecture(cfg)
        ckpt = Path(cfg.path).expanduser() if cfg.path else None
        if ckpt is None or not ckpt.is_file():
            raise TextEncoderNotFound(f"text_encoder.path {cfg.path!r} is not a file; it must be {CLIP_HELP}")
        model = open_clip.create_model(cfg.clip_model, pretrained=str(ckpt), device="cpu")
        tower = model.text if hasattr(model, "text") else model  # CustomTextCLIP keeps the tower in .text
        if getattr(tower, "cls_emb", None) is not None:
            raise ValueError(f"{cfg.clip_model}: text towers with a CLS embedding (CoCa) are not supported")
        self.token_embedding = tower.token_embedding
        self.positional_embedding = tower.positional_embedding
        self.transformer = tower.transformer
        self.ln_final = tower.ln_final
        mask = getattr(tower, "attn_mask", None)
        self.register_buffer("attn_mask", None if mask is None else mask.clone(), persistent=False)
        del model, tower
        self.captions = ClipCaptionTokenizer(cfg, int(self.positional_embedding.shape[0]))
        self.dim = int(self.token_embedding.embedding_dim)
        self.vocab_size = int(self.token_embedding.num_embeddings)
        self.to(device=cfg.device, dtype=_DTYPES[cfg.dtype])
        self._freeze()

    @torch.no_grad()
    def encode(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        dev, s = self.device, ids.shape[1]
        x = self.token_embedding(ids.to(dev, torch.long)) + self.positional_embedding[:s]
        attn = None if self.attn_mask is None else self.attn_mask[:s, :s]
        x = self.ln_final(self.transformer(x, attn_mask=attn))
        return x * mask.to(dev, x.dtype)[..., None]


def _clip_architecture(cfg: TextEncoderConfig) -> dict:
    """open_clip's config of ``cfg.clip_model`` (registered from ``clip_model_config`` when given)."""
    import open_clip

    if cfg.clip_model.startswith(("hf-hub:", "local-dir:")):
        raise ValueError(
            f"text_encoder.clip_model {cfg.clip_model!r}: give an architecture name and a "
            f"checkpoint file in text_encoder.path (no hub or local-dir schemas)"
        )
    if cfg.clip_model_config:
        if not Path(cfg.clip_model_config).is_file():
            raise TextEncoderNotFound(f"text_encoder.clip_model_config {cfg.clip_model_config!r} does not exist")
        open_clip.add_model_config(cfg.clip_model_config)
    arch = open_clip.get_model_config(cfg.clip_model)
    if arch is None:
        raise ValueError(
            f"unknown open_clip architecture {cfg.clip_model!r} (see open_clip.list_models(), "
            f"or register one with text_encoder.clip_model_config)"
        )
    return arch


# ---------------------------------------------------------------- loading


def resolve_t5_path(cfg: TextEncoderConfig, folder: Optional[str | os.PathLike] = None) -> Path:
    """The T5 folder to load: `folder` (or `folder/encoder`) when it holds a saved encoder, else cfg.path."""
    if folder is not None:
        for cand in (Path(folder), Path(folder) / "encoder"):
            if (cand / "config.json").is_file():
                return _check_t5_dir(cand)
    return _check_t5_dir(cfg.path)


def load_text_encoder(cfg: TextEncoderConfig, folder: Optional[str | os.PathLike] = None) -> TextEncoder:
    """Load the frozen encoder from local files (never a hub) and check its width against `cfg.dim`.

    `folder` (optional, T5 only) overrides `cfg.path` when it holds a saved encoder, e.g. a text stage's
    output folder where `build_tiny_t5` wrote one (directly or in `encoder/`).
    """
    enc: TextEncoder = T5TextEncoder(cfg, resolve_t5_path(cfg, folder)) if cfg.kind == "t5" else ClipTextEncoder(cfg)
    if enc.dim != cfg.dim:
        where = cfg.path if cfg.kind == "clip" else resolve_t5_path(cfg, folder)
        raise ValueError(
            f"text encoder at {str(where)!r} has width {enc.dim} but text_encoder.dim is {cfg.dim}; "
            f"set text_encoder.dim and model.text_dim to {enc.dim}"
        )
    return enc


def load_text_tokenizer(cfg: TextEncoderConfig, folder: Optional[str | os.PathLike] = None) -> CaptionTokenizer:
    """The encoder's tokenizer alone (no weights loaded): the same ids, masks and truncation as
    `load_text_encoder(cfg, folder).tokenize`."""
    if cfg.kind == "t5":
        return T5CaptionTokenizer(cfg, resolve_t5_path(cfg, folder))
    return ClipCaptionTokenizer(cfg, int(_clip_architecture(cfg)["text_cfg"].get("context_length", 77)))


# ---------------------------------------------------------------- tiny T5 for demos and tests

_BASE_CHARS = string.ascii_letters + string.digits + string.punctuation


def _unigram_vocab(captions: Sequence[str], vocab_size: int) -> list[tuple[str, float]]:
    """T5-style Unigram vocabulary: <pad>, </s>, <unk>, '▁', single characters, then the most frequent
    whole words ('▁word', log-frequency scores), so that known words are one token each and any other
    text still splits into characters."""
    import math

    specials = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    words = Counter(w for c in captions for w in c.split())
    total = sum(words.values()) + 1
    floor = math.log(1.0 / total) - 10.0  # characters are a last resort
    chars = [("▁", floor)] + [(ch, floor - 1.0) for ch in _BASE_CHARS]
    room = vocab_size - len(specials) - len(chars)
    if room < 0:
        raise ValueError(f"vocab_size must be at least {len(specials) + len(chars)}, got {vocab_size}")
    ranked = sorted(words.items(), key=lambda kv: (-kv[1], kv[0]))[:room]
    pieces = [("▁" + w, math.log(n / total)) for w, n in ranked]
    return specials + pieces + chars


def build_tiny_t5(
    captions: Sequence[str],
    out_dir: str | os.PathLike,
    d_model: int = 64,
    layers: int = 2,
    heads: int = 4,
    vocab_size: int = 384,
    seed: int = 0,
) -> Path:
    """Save a randomly initialised tiny `T5EncoderModel` and a `T5Tokenizer` fitted on `captions` to out_dir.

    The tokenizer is a Unigram model (the `tokenizers` library, as in T5) whose pieces are the most
    frequent caption words plus single characters; the model has `d_model`, `layers`, `heads` and as
    many embeddings as tokenizer entries. Deterministic from (captions, sizes, seed); an out_dir already
    built from the same inputs is kept. Built in a temporary folder, then renamed.
    Load it with `load_text_encoder(TextEncoderConfig(kind="t5", path=out_dir, dim=d_model))`.
    """
    import hashlib

    from transformers import T5Config, T5EncoderModel, T5Tokenizer

    out = Path(out_dir)
    recipe = {
        "d_model": d_model,
        "layers": layers,
        "heads": heads,
        "vocab_size": vocab_size,
        "seed": seed,
        "captions_sha256": hashlib.sha256("\n".join(captions).encode()).hexdigest(),
        "version": 1,
    }
    stamp = out / "tiny_t5.json"
    if stamp.is_file() and json.loads(stamp.read_text()) == recipe:
        return out
    if d_model % heads:
        raise ValueError(f"d_model ({d_model}) must be divisible by heads ({heads})")
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    tok = T5Tokenizer(vocab=_unigram_vocab(captions, vocab_size), extra_ids=0)
    tok.save_pretrained(str(tmp))
    config = T5Config(
        vocab_size=len(tok),
        d_model=d_model,
        d_kv=d_model // heads,
        d_ff=2 * d_model,
        num_layers=layers,
        num_heads=heads,
        dropout_rate=0.0,
        feed_forward_proj="gated-gelu",
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        decoder_start_token_id=0,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = T5EncoderModel(config)
    with _no_progress_bars():
        model.save_pretrained(str(tmp))
    (tmp / "tiny_t5.json").write_text(json.dumps(recipe, sort_keys=True))
    if out.exists():
        shutil.rmtree(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, out)
    return out


def tiny_t5_kwargs(cfg: TextEncoderConfig) -> dict:
    """`build_tiny_t5` sizes from a config section (d_model = cfg.dim)."""
    return {"d_model": cfg.dim, "layers": cfg.tiny_layers, "heads": cfg.tiny_heads, "vocab_size": cfg.tiny_vocab_size}
