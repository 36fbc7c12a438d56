"""A deterministic stand-in for the model, for other teams' integration tests: NOT a real model.

``EMOTION_MODEL=keywords:`` labels a post by the first word of a small keyword table that it
contains (``keywords:/path/table.json`` uses your own table: ``{"joy": ["yay", ...], ...,
"default": "joy"}``), and a post with none of them as ``default``. The label gets probability
0.9, the other five 0.02 each. It loads in milliseconds, needs no weights and no torch, and
always gives the same answer for the same text, so a pipeline's tests can assert exact labels.
It knows nothing of emotions beyond its table: never serve it to real users.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path

from emotion_stream.schemas import LABELS, ModelInfo
from emotion_stream.worker.model.api import KEYWORDS_PREFIX as PREFIX
from emotion_stream.worker.model.api import ModelLoadError, Prediction

TOP_SCORE = 0.9

DEFAULT_TABLE: dict[str, list[str]] = {
    "sadness": ["sad", "lonely", "miserable", "hopeless", "heartbroken", "grief", "crying", "unhappy"],
    "joy": ["happy", "glad", "joy", "delighted", "great", "cheerful", "excited", "lucky"],
    "love": ["love", "adore", "cherish", "tender", "affectionate", "devoted", "romantic", "caring"],
    "anger": ["angry", "furious", "annoyed", "outraged", "hate", "irritated", "mad", "resentful"],
    "fear": ["afraid", "scared", "terrified", "anxious", "nervous", "worried", "frightened", "panic"],
    "surprise": ["surprised", "amazed", "astonished", "shocked", "stunned", "unexpected", "wow", "startled"],
}
DEFAULT_LABEL = "joy"

_WORD = re.compile(r"[\w']+")


class KeywordModel:
    """A :class:`~worker.model.api.ModelRunner` that labels by keywords (see the module docs)."""

    def __init__(self, spec: str) -> None:
        source = spec[len(PREFIX) :].strip()
        table: dict = DEFAULT_TABLE | {"default": DEFAULT_LABEL}
        if source:
            try:
                table = json.loads(Path(source).read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise ModelLoadError(
                    f"EMOTION_MODEL={spec}: cannot read the keyword table {source} ({exc}); give a JSON file "
                    '{"joy": ["yay", ...], ..., "default": "joy"}, or use `keywords:` for the built-in table'
                ) from None
        default = table.get("default", DEFAULT_LABEL)
        unknown = sorted(set(table) - {*LABELS, "default"}) + ([default] if default not in LABELS else [])
        if unknown:
            raise ModelLoadError(
                f"EMOTION_MODEL={spec}: {unknown} are not emotions; the table's keys are {list(LABELS)} and "
                '"default"'
            )
        self.default = default
        self._labels: dict[str, str] = {}
        for label in LABELS:
            for word in table.get(label, []):
                self._labels.setdefault(str(word).lower(), label)
        self.info = ModelInfo(name="keywords", version=f"stand-in-{'custom' if source else 'builtin'}")

    @property
    def columns(self) -> list[str]:
        return list(LABELS)

    @property
    def leaves_cpu_to_spare(self) -> bool:
        return True

    def label(self, text: str) -> str:
        return next((self._labels[w] for w in _WORD.findall(text.lower()) if w in self._labels), self.default)

    def predict(self, texts: Sequence[str]) -> list[Prediction]:
        rest = (1.0 - TOP_SCORE) / (len(LABELS) - 1)
        predictions = []
        for text in texts:
            label = self.label(text)
            scores = {name: (TOP_SCORE if name == label else rest) for name in LABELS}
            predictions.append(Prediction(label=label, score=TOP_SCORE, scores=scores))
        return predictions

    def prepare(self, texts: Sequence[str]) -> list[str]:
        return list(texts)

    def predict_prepared(self, prepared: list[str]) -> list[Prediction]:
        return self.predict(prepared)

    def close(self) -> None:
        pass
