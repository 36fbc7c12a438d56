"""Tumbling windows of emotion counts: the state behind the aggregates topic.

Pure and synchronous (no Kafka): :mod:`worker.aggregator` feeds it results and dead letters
and publishes what :meth:`Windows.due` returns. A result counts in the window of its
``posted_at`` (else ``processed_at``), once in the totals (dimension ``{}``) and once per
dimension it carries (``source``, ``lang``); a dead letter counts in the totals of the window
of its ``failed_at``. A window closes when the newest time seen passes its end by the grace
period; later arrivals for it still count and re-publish it, as long as it is retained.

Times come from outside (a post's ``created_at`` is whatever its client wrote), so one time
must not be able to bend the windows: a time more than ``max_future_s`` ahead of the wall clock
or ``max_past_s`` behind it is not used. The message then counts at its Kafka record's
timestamp when that one is within the same bounds, else it is counted as out of range and
nowhere else. The windows' clock follows the times counted but never runs ahead of the wall
clock, so a post from a client whose clock is a little fast counts in its own window without
closing the current one early. Every input ends in exactly one of: counted, too late (its
window is no longer retained), out of range, or invalid (not a result: no known label).
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from emotion_stream.schemas.aggregates import AGGREGATE_SCHEMA_VERSION, aggregate_key
from emotion_stream.schemas.labels import LABELS
from emotion_stream.worker.reading import SET_APART, set_apart_as

MAX_TIME_CHARS = 64
"""Longest time string read (ISO 8601 needs about 35 characters)."""
MAX_DIMENSION_CHARS = 128
"""Longest dimension value kept (longer ones are not a breakdown anyone charts)."""
MAX_COUNT = 10**15
"""Largest count a recovered record may hold (beyond it the record is not one of ours)."""


def _parse_time(value: Any) -> float | None:
    """Seconds since the epoch of an ISO 8601 time (UTC unless it says otherwise); ``None`` when
    ``value`` is not one, ``inf`` when it is one but past what a float or ``datetime`` holds."""
    if not isinstance(value, str) or len(value) > MAX_TIME_CHARS:
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    try:
        seconds = moment.timestamp()
    except (OverflowError, ValueError):  # an offset that takes it past the year 1 or 9999
        return math.inf
    return seconds if math.isfinite(seconds) else math.inf


def _record_time(value: Any) -> float | None:
    """A Kafka record timestamp (seconds; the broker's -1 means none) as a time, if it is one."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        seconds = float(value)
    except OverflowError:
        return math.inf
    return seconds if math.isfinite(seconds) else (None if math.isnan(seconds) else math.inf)


def _iso(seconds: float) -> str:
    # Only ever called with times inside the bounds, which are far from the calendar's edges.
    return datetime.fromtimestamp(seconds, timezone.utc).isoformat().replace("+00:00", "Z")


def _score(value: Any) -> float:
    """A label's probability as a result carries it; anything else (text, NaN, 1e400) adds 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return 0.0
    try:
        number = float(value)
    except OverflowError:
        return 0.0
    return min(1.0, max(0.0, number)) if math.isfinite(number) else 0.0


def _count(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_COUNT:
        return None
    return value


def _dimension_value(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        return None
    text = str(value) if isinstance(value, str) or abs(value) < 10**20 else None
    return text if text and len(text) <= MAX_DIMENSION_CHARS else None


def _unreadable_dead_letter(letter: Any) -> str | None:
    """``other_language`` or ``no_text`` for a dead letter of kind ``unreadable``, else None."""
    error = letter.get("error") if isinstance(letter, dict) else None
    if not isinstance(error, dict) or error.get("kind") != "unreadable":
        return None
    message = error.get("message")
    reason = message.split(":", 1)[0] if isinstance(message, str) else None
    return reason if reason in ("other_language", "no_text") else None


@dataclass
class Window:
    start: float
    end: float
    dimension: dict[str, str]
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(LABELS, 0))
    score_sums: dict[str, float] = field(default_factory=lambda: dict.fromkeys(LABELS, 0.0))
    set_apart: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SET_APART, 0))
    """Posts counted apart from the six emotions: unsure, other language, no text."""
    dead_letters: int = 0
    closed: bool = False
    dirty: bool = True

    @property
    def posts(self) -> int:
        return sum(self.counts.values())

    def record(self, now: float) -> dict[str, Any]:
        posts = self.posts
        return {
            "schema_version": AGGREGATE_SCHEMA_VERSION,
            "window_start": _iso(self.start),
            "window_end": _iso(self.end),
            "dimension": dict(self.dimension),
            "counts": dict(self.counts),
            "mean_scores": {k: round(v / posts, 6) if posts else 0.0 for k, v in self.score_sums.items()},
            "posts": posts,
            **self.set_apart,
            "dead_letters": self.dead_letters,
            "closed": self.closed,
            "updated_at": _iso(now),
        }

    @classmethod
    def from_record(cls, record: Any) -> Window | None:
        """The state a published record holds (how a restarted aggregator picks up); ``None``
        when it is not a record this aggregator could have published."""
        if not isinstance(record, dict):
            return None
        start, end = _parse_time(record.get("window_start")), _parse_time(record.get("window_end"))
        if start is None or end is None:
            return None
        dimension = record.get("dimension")
        counts, means = record.get("counts"), record.get("mean_scores")
        if not (isinstance(dimension, dict) and isinstance(counts, dict) and isinstance(means, dict)):
            return None
        kept = {k: _dimension_value(v) for k, v in dimension.items() if isinstance(k, str)}
        if len(kept) != len(dimension) or None in kept.values():
            return None
        window = cls(start, end, kept)  # start and end are checked against the clock by the caller
        for name in LABELS:
            count = _count(counts.get(name, 0))
            if count is None:
                return None
            window.counts[name] = count
        dead_letters = _count(record.get("dead_letters", 0))
        if dead_letters is None:
            return None
        for name in SET_APART:  # absent from records of schema 1.0
            count = _count(record.get(name, 0))
            if count is None:
                return None
            window.set_apart[name] = count
        posts = window.posts
        window.score_sums = {k: _score(means.get(k, 0.0)) * posts for k in LABELS}
        window.dead_letters = dead_letters
        window.closed = record.get("closed") is True
        window.dirty = False
        return window


class Windows:
    """Open and recently closed windows, by (window start, dimension).

    ``max_future_s`` and ``max_past_s`` bound the times used, around ``clock()`` (the wall
    clock). Counters: ``results_counted``, ``dead_letters_counted``, ``too_late``,
    ``out_of_range``, ``invalid``; ``retimed`` counted ones that went by their record
    timestamp; ``recovered`` the outcomes of :meth:`restore`.
    """

    def __init__(
        self,
        size_s: float,
        grace_s: float,
        retain_s: float,
        dimensions: tuple[str, ...],
        *,
        max_future_s: float = 300.0,
        max_past_s: float = 86400.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.size_s = size_s
        self.grace_s = grace_s
        self.retain_s = retain_s
        self.dimensions = dimensions
        self.max_future_s = max_future_s
        self.max_past_s = max_past_s
        self.clock = clock
        self._windows: dict[str, Window] = {}
        self.newest = 0.0  # the newest event time counted, at most the wall clock: the windows' clock
        self.results_counted = 0
        self.dead_letters_counted = 0
        self.too_late = 0  # arrivals for windows no longer retained (not counted)
        self.out_of_range = 0  # arrivals with no time within the bounds (not counted)
        self.invalid = 0  # results that are not results: no JSON object or no known label
        self.retimed = 0  # counted at the record timestamp: their own time was out of range
        self.recovered: Counter[str] = Counter()  # restore() outcomes

    def __len__(self) -> int:
        return len(self._windows)

    def _within(self, at: float, now: float) -> bool:
        return now - self.max_past_s <= at <= now + self.max_future_s

    def _event_time(self, own: float | None, record_time: Any) -> tuple[float | None, bool]:
        """(the time to count at or ``None`` when out of range, whether it is the record's)."""
        now = self.clock()
        if own is not None and self._within(own, now):
            return own, False
        fallback = _record_time(record_time)
        if fallback is not None and self._within(fallback, now):
            return fallback, own is not None
        if own is None and fallback is None:
            return now, False  # no time at all: it counts on arrival
        return None, False

    def _advance(self, at: float) -> None:
        self.newest = max(self.newest, min(at, self.clock()))

    def _retained(self, start: float) -> bool:
        return start + self.size_s + self.retain_s >= self.newest

    def _window(self, start: float, dimension: dict[str, str]) -> Window:
        key = aggregate_key(_iso(start), dimension)
        window = self._windows.get(key)
        if window is None:
            window = self._windows[key] = Window(start, start + self.size_s, dimension)
        window.dirty = True
        return window

    def _place(self, own: float | None, record_time: Any) -> float | None:
        """The start of the window an arrival counts in; ``None`` (and counted as such) when
        it is out of range or too late."""
        at, retimed = self._event_time(own, record_time)
        if at is None:
            self.out_of_range += 1
            return None
        self._advance(at)
        start = at - (at % self.size_s)
        if not self._retained(start):
            self.too_late += 1
            return None
        self.retimed += retimed
        return start

    def add_result(self, result: Any, record_time: Any = None) -> bool:
        """Count one result (the output topic's JSON); True when it counted in a window.
        ``record_time``: its Kafka record's timestamp in seconds, used when its own time is
        out of range."""
        if not isinstance(result, dict) or not isinstance(result.get("label"), str):
            self.invalid += 1
            return False
        label = result["label"]
        if label not in LABELS:
            self.invalid += 1
            return False
        own = _parse_time(result.get("posted_at"))
        if own is None:
            own = _parse_time(result.get("processed_at"))
        start = self._place(own, record_time)
        if start is None:
            return False
        scores = result.get("scores")
        scores = scores if isinstance(scores, dict) else {}
        given = result.get("dimensions")
        given = given if isinstance(given, dict) else {}
        dimensions: list[dict[str, str]] = [{}]
        for name in self.dimensions:
            value = _dimension_value(given.get(name))
            if value is not None:
                dimensions.append({name: value})
        apart = set_apart_as(result.get("unreadable"), result.get("confident"))
        for dimension in dimensions:
            window = self._window(start, dimension)
            if apart is not None:
                window.set_apart[apart] += 1
                continue
            window.counts[label] += 1
            for name in LABELS:
                window.score_sums[name] += _score(scores.get(name, 0.0))
        self.results_counted += 1
        return True

    def add_dead_letter(self, letter: Any, record_time: Any = None) -> bool:
        """Count one dead letter in the totals of the window of its ``failed_at``."""
        own = _parse_time(letter.get("failed_at")) if isinstance(letter, dict) else None
        start = self._place(own, record_time)
        if start is None:
            return False
        window = self._window(start, {})
        window.dead_letters += 1
        apart = _unreadable_dead_letter(letter)
        if apart is not None:  # skipped under EMOTION_UNREADABLE=dead_letter: still counted apart
            window.set_apart[apart] += 1
        self.dead_letters_counted += 1
        return True

    def restore(self, record: Any) -> str:
        """Take a published record as the state of its window (the latest record per key wins).
        Returns ``restored``; ``expired`` for a window older than the bounds (a compacted topic
        keeps every window ever published); ``out_of_range`` for one in the future beyond them
        (what an earlier version let one post publish) or past the calendar; ``invalid`` for a
        record that is not one of ours."""
        outcome = self._restore(record)
        self.recovered[outcome] += 1
        return outcome

    def _restore(self, record: Any) -> str:
        window = Window.from_record(record)
        if window is None:
            return "invalid"
        now = self.clock()
        if not math.isfinite(window.start) or window.start > now + self.max_future_s:
            return "out_of_range"
        if window.end < now - self.max_past_s:
            return "expired"
        if not window.start < window.end <= window.start + 86400:  # the longest window there is
            return "invalid"
        self._windows[aggregate_key(_iso(window.start), window.dimension)] = window
        self._advance(window.start)
        return "restored"

    def due(self, now: float | None = None) -> list[tuple[str, dict[str, Any]]]:
        """(key, record) of every window that changed or closed since the last call, and forget
        the windows past retention. Call it every update interval."""
        now = self.clock() if now is None else now
        out = []
        for key, window in list(self._windows.items()):
            if not window.closed and window.end + self.grace_s <= self.newest:
                window.closed = True
                window.dirty = True
            if window.dirty:
                window.dirty = False
                out.append((key, window.record(now)))
            elif window.closed and not self._retained(window.start):
                del self._windows[key]
        return out

    def snapshot(self, dimension: dict[str, str] | None = None) -> list[dict[str, Any]]:
        """Every retained window's record for ``dimension`` (default: the totals), oldest first."""
        wanted = json.dumps(dimension or {}, sort_keys=True)
        chosen = [w for w in self._windows.values() if json.dumps(w.dimension, sort_keys=True) == wanted]
        now = self.clock()
        return [w.record(now) for w in sorted(chosen, key=lambda w: w.start)]
