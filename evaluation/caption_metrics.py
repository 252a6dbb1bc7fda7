"""Caption metrics with pycocoevalcap's own scorers, called directly (no COCO objects needed).

Pipeline, as ``pycocoevalcap.eval.COCOEvalCap``: the Stanford PTBTokenizer (lower-cased, punctuation
dropped) on references and candidates, then ``Bleu(4)``, ``Meteor()``, ``Rouge()``, ``Cider()`` and,
when its jars are installed, ``Spice()``. Scores are pycocoevalcap's raw values (0-1; CIDEr can exceed 1);
the report multiplies them by 100 like the paper's tables.

Java details handled here:
  * every java child gets ``-Duser.language=en -Duser.country=US`` appended to ``JAVA_TOOL_OPTIONS``:
    METEOR prints its scores with the JVM's default locale, and under e.g. a German locale prints
    ``0,41`` which pycocoevalcap cannot parse (it then hangs or fails);
  * SPICE 1.0 (fst 2.47 serialisation of its LMDB cache) needs, on Java 17, the ``--add-opens`` below,
    passed through ``JDK_JAVA_OPTIONS`` (read by the ``java`` launcher pycocoevalcap starts);
  * SPICE needs Stanford CoreNLP 3.6.0's two jars in pycocoevalcap's ``spice/lib`` folder; without them
    ``Spice()`` would try to download them, so we check first and skip SPICE with a one-line message.
  * captions are reduced to one line of single-spaced words first: PTBTokenizer matches output lines to
    inputs by position, and a form feed or Unicode line separator inside a caption shifts every later one.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

METRICS = ("BLEU", "METEOR", "ROUGE_L", "CIDEr", "SPICE")
JAVA_LOCALE = "-Duser.language=en -Duser.country=US"
SPICE_ADD_OPENS = " ".join(
    f"--add-opens=java.base/{p}=ALL-UNNAMED"
    for p in ("java.lang", "java.math", "java.util", "java.util.concurrent", "java.net", "java.text")
)
SPICE_JARS = ("stanford-corenlp-3.6.0.jar", "stanford-corenlp-3.6.0-models.jar")


def spice_lib_dir() -> Path:
    """Where pycocoevalcap's SPICE looks for the CoreNLP jars (its ``spice/lib`` folder)."""
    from pycocoevalcap.spice import get_stanford_models as g

    return Path(g.SPICEDIR) / g.SPICELIB


def spice_missing_message(lib_dir: Path | None = None) -> str | None:
    """None when SPICE can run; else one line saying which jars to put where."""
    lib_dir = lib_dir or spice_lib_dir()
    missing = [j for j in SPICE_JARS if not (lib_dir / j).is_file()]
    if not missing:
        return None
    return (
        f"SPICE skipped: put {' and '.join(missing)} (Stanford CoreNLP 3.6.0, from "
        f"stanford-corenlp-full-2015-12-09.zip) in {lib_dir}"
    )


@contextlib.contextmanager
def java_env(spice: bool = False):
    """Append our JVM options to the environment java children inherit; restore it afterwards."""
    saved = {k: os.environ.get(k) for k in ("JAVA_TOOL_OPTIONS", "JDK_JAVA_OPTIONS")}
    os.environ["JAVA_TOOL_OPTIONS"] = f"{saved['JAVA_TOOL_OPTIONS'] or ''} {JAVA_LOCALE}".strip()
    if spice:
        os.environ["JDK_JAVA_OPTIONS"] = f"{saved['JDK_JAVA_OPTIONS'] or ''} {SPICE_ADD_OPENS}".strip()
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def one_line(text: str) -> str:
    """Single-spaced words on one line (Python's whitespace includes \\f, \\v, \\x1c-\\x1f, \\u2028...)."""
    return " ".join(str(text).split())


class CaptionScorer:
    """Score candidate captions against reference lists; the METEOR process is reused until :meth:`close`."""

    def __init__(self, metrics: Sequence[str] = METRICS, log: Callable[[str], None] = print):
        bad = [m for m in metrics if m not in METRICS]
        if bad or not metrics:
            raise ValueError(f"caption metrics must be a non-empty subset of {METRICS}, got {list(metrics)}")
        if shutil.which("java") is None:
            raise RuntimeError("java not found on PATH: the PTB tokenizer, METEOR and SPICE are Java programs")
        self.metrics = list(dict.fromkeys(metrics))
        self.spice_message = spice_missing_message() if "SPICE" in self.metrics else None
        if self.spice_message:
            log(self.spice_message)
            self.metrics.remove("SPICE")
        self._meteor = None

    def _tokenize(self, captions: dict[int, list[str]]) -> dict[int, list[str]]:
        from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

        with java_env():
            out = PTBTokenizer().tokenize({k: [{"caption": one_line(c)} for c in v] for k, v in captions.items()})
        if set(out) != set(captions) or any(len(out[k]) != len(captions[k]) for k in captions):
            raise RuntimeError("PTBTokenizer returned a different number of captions than it was given")
        return out

    def _scorer(self, metric: str):
        from pycocoevalcap.bleu.bleu import Bleu
        from pycocoevalcap.cider.cider import Cider
        from pycocoevalcap.meteor.meteor import Meteor
        from pycocoevalcap.rouge.rouge import Rouge
        from pycocoevalcap.spice.spice import Spice

        if metric == "METEOR":
            if self._meteor is None:
                with java_env():
                    self._meteor = Meteor()
            return self._meteor
        return {"BLEU": lambda: Bleu(4), "ROUGE_L": Rouge, "CIDEr": Cider, "SPICE": Spice}[metric]()

    def score(self, candidates: Sequence[str], references: Sequence[Sequence[str]]) -> dict[str, float]:
        """Corpus scores: ``Bleu_1..Bleu_4, METEOR, ROUGE_L, CIDEr[, SPICE]`` (pycocoevalcap values)."""
        if len(candidates) == 0:
            raise ValueError("no captions to score")
        if len(candidates) != len(references) or any(len(r) == 0 for r in references):
            raise ValueError("need one non-empty reference list per candidate caption")
        gts = self._tokenize({i: list(r) for i, r in enumerate(references)})
        res = self._tokenize({i: [c] for i, c in enumerate(candidates)})
        out: dict[str, float] = {}
        for metric in self.metrics:
            scorer = self._scorer(metric)
            with java_env(spice=metric == "SPICE"), contextlib.redirect_stdout(io.StringIO()):
                value, _ = scorer.compute_score(gts, res)
            if metric == "BLEU":
                out.update({f"Bleu_{i + 1}": float(v) for i, v in enumerate(value)})
            else:
                out[metric] = float(value)
        return out

    def close(self) -> None:
        """Stop the METEOR java process."""
        if self._meteor is not None:
            self._meteor.__del__()
            self._meteor = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
