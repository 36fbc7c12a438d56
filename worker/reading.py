"""What the model can read: whether a post has words at all, and which language they are in.

The model is trained on English posts. A post in another language, or one that is only links,
mentions, hashtags, emoji and numbers, still gets a label from it, but one it had no basis for.
:class:`Reader` tells those posts apart, before the model, so that a result can say so and the
aggregates and the live page can count them apart from the six emotions.

The no-text rule (:func:`has_words`): remove links (``http://``, ``https://``, ``www.``),
``@mentions`` and ``#hashtags``; a post has no text when what is left holds no word of at
least two letters (a letter is any Unicode letter: emoji, digits, punctuation and symbols are
not). So ``"🔥🔥 @bob #tbt 2024 :D"`` has no text, and ``"lol"`` has.

The language check runs the detector on the text without its links and mentions, with its
hashtags' words kept (see
:mod:`worker.language` for the detector and how it was chosen). A post counts as another
language when the detector gives the model's languages together at most ``1 - min_score``
probability (it is at least ``min_score`` sure the post is in some other language): when it is
unsure, the post is read as the model's own.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Literal

from emotion_stream.schemas.messages import Unreadable

_LINK = re.compile(r"(?:https?://|www\.)\S*", re.IGNORECASE)
_MENTION = re.compile(r"@[\w.-]*\w")
_MENTION_OR_HASHTAG = re.compile(r"[@#][\w.-]*\w")
_WORD = re.compile(r"[^\W\d_]{2,}")  # two or more letters in a row


def words_left(text: str) -> str:
    """``text`` without its links, mentions and hashtags."""
    return _without_tags(_without_links(text))


def for_detection(text: str) -> str:
    """What the language detector sees: ``text`` without links and mentions, a hashtag's words
    kept (``#buenos_dias`` reads as ``buenos dias``), spaces collapsed."""
    return _detection_text(_without_links(text))


def _without_tags(linkless: str) -> str:
    return _MENTION_OR_HASHTAG.sub(" ", linkless) if "@" in linkless or "#" in linkless else linkless


def _detection_text(linkless: str) -> str:
    if "@" in linkless:
        linkless = _MENTION.sub(" ", linkless)
    return " ".join(linkless.replace("#", " ").replace("_", " ").split())


def _without_links(text: str) -> str:
    # A link holds "://" or "www.": a post with neither a colon nor a dot has none, and most
    # posts skip the search (a case-blind one, which runs per character).
    return _LINK.sub(" ", text) if ":" in text or "." in text else text


def has_words(text: str) -> bool:
    """Whether ``text`` (already without links, mentions and hashtags) has a word of at least
    two letters."""
    return _WORD.search(text) is not None


Found = tuple[str, float]
"""A language (ISO 639-1 code where there is one) and its probability."""

Detect = Callable[[str], Sequence[Found]]
"""A language detector: the text's most likely languages (ISO 639-1 codes) with their
probabilities, most likely first."""


@dataclass(frozen=True)
class Reading:
    """What the reader found in one post."""

    language: str | None = None
    """The detected language (None: no words, or the check is off)."""
    language_score: float | None = None
    unreadable: Unreadable | None = None


READABLE = Reading()
NO_TEXT = Reading(unreadable="no_text")

UnreadablePolicy = Literal["mark", "route", "dead_letter"]
"""What the worker does with an unreadable post: label it and mark it (``mark``), label it,
mark it and send it to a topic of its own (``route``), or skip the model and dead-letter it as
``unreadable`` (``dead_letter``)."""


class Reader:
    """Decides, per post, whether the model can read it (see the module docs)."""

    def __init__(
        self, languages: Collection[str] | None, detect: Detect | None = None, min_score: float = 0.5
    ) -> None:
        """``languages``: the ISO 639-1 codes the model reads; None turns the language check off
        (the no-text rule still applies). ``detect`` is required when ``languages`` is given."""
        if languages is not None and detect is None:
            raise ValueError("a language check needs a detector")
        self.languages = frozenset(code.lower() for code in languages) if languages is not None else None
        self.detect = detect
        self.min_score = min_score

    def read(self, text: str) -> Reading:
        return self.read_many([text])[0]

    def read_many(self, texts: Sequence[str]) -> list[Reading]:
        """What :meth:`read` finds in each text, the detector asked once for them all where it
        takes batches (a ``many`` method, as :class:`~worker.language.LanguageDetector` has)."""
        linkless = [_without_links(text) for text in texts]  # once for both rules below
        readings: list[Reading | None] = [None if has_words(_without_tags(t)) else NO_TEXT for t in linkless]
        if self.languages is None or self.detect is None:
            return [READABLE if r is None else r for r in readings]
        asked = [i for i, r in enumerate(readings) if r is None]
        detections = [_detection_text(linkless[i]) for i in asked]
        many = getattr(self.detect, "many", None)
        found_all = many(detections) if many is not None else [self.detect(t) for t in detections]
        for i, found in zip(asked, found_all, strict=True):
            readings[i] = self._reading(found)
        return readings  # type: ignore[return-value]  # every None was replaced

    def _reading(self, found: Sequence[Found]) -> Reading:
        if not found:
            return READABLE
        language, score = found[0]
        readable = sum(p for code, p in found if code in self.languages)  # type: ignore[operator]
        other = 1.0 - readable >= self.min_score
        return Reading(language, round(score, 4), "other_language" if other else None)


@dataclass(frozen=True)
class ReadingPolicy:
    """How the worker treats what the reader finds, and the confidence a label needs."""

    reader: Reader
    unreadable: UnreadablePolicy = "mark"
    topic: str | None = None
    """Where ``route`` sends unreadable posts' results."""
    min_confidence: float = 0.5
    """A readable post whose top score is below this is marked unsure (``confident: false``)."""

    def skips(self, reading: Reading) -> bool:
        """Whether the post is dead-lettered instead of labelled."""
        return reading.unreadable is not None and self.unreadable == "dead_letter"

    def topic_for(self, reading: Reading) -> str | None:
        """The topic of the post's result when it is not the output topic."""
        return self.topic if reading.unreadable is not None and self.unreadable == "route" else None


SET_APART = ("unsure", "other_language", "no_text")
"""What a result counts as, in the aggregates, on the page and in the worker's metrics, instead
of its label: when the model had no basis for it, or was unsure."""


def set_apart_as(unreadable: object, confident: object) -> str | None:
    """What a result with these fields counts as apart from the six emotions, or ``None`` when
    it counts toward its label (results of schemas before 1.3 have neither field)."""
    if unreadable in ("other_language", "no_text"):
        return str(unreadable)
    return "unsure" if confident is False else None


NO_LANGUAGE_CHECK = ReadingPolicy(Reader(None))
"""Only the no-text rule, every post labelled and marked, the default threshold."""
