"""Tumbling windows of emotion counts: the state behind the aggregates topic.

Pure and synchronous (no Kafka): :mod:`worker.aggregator` feeds it results and dead letters
and publishes what :meth:`Windows.due` returns. A result counts in the window of its
``posted_at`` (else ``processed_at``), once in the totals (dimension ``{}``) and once per
dimension it carries (``source``, ``lang``); a dead letter counts in the totals of the window
of its ``failed_at``. A window closes when the newest time seen passes its end by the grace
period; later arrivals for it still count and re-publish it, as long as it is retained.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from schemas.aggregates import AGGREGATE_SCHEMA_VERSION, aggregate_key
from schemas.labels import LABELS


def _parse_time(value: Any) -> float | None:
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, timezone.utc).isoformat().replace("+00:00", "Z")


@dataclass
class Window:
    start: float
    end: float
    dimension: dict[str, str]
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(LABELS, 0))
    score_sums: dict[str, float] = field(default_factory=lambda: dict.fromkeys(LABELS, 0.0))
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
            "dead_letters": self.dead_letters,
            "closed": self.closed,
            "updated_at": _iso(now),
        }

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Window | None:
        """The state a published record holds (how a restarted aggregator picks up)."""
        start, end = _parse_time(record.get("window_start")), _parse_time(record.get("window_end"))
        if start is None or end is None:
            return None
        posts = int(record.get("posts", 0))
        window = cls(start, end, dict(record.get("dimension") or {}))
        window.counts = {k: int(record.get("counts", {}).get(k, 0)) for k in LABELS}
        means = record.get("mean_scores", {})
        window.score_sums = {k: float(means.get(k, 0.0)) * posts for k in LABELS}
        window.dead_letters = int(record.get("dead_letters", 0))
        window.closed = bool(record.get("closed", False))
        window.dirty = False
        return window


class Windows:
    """Open and recently closed windows, by (window start, dimension)."""

    def __init__(self, size_s: float, grace_s: float, retain_s: float, dimensions: tuple[str, ...]) -> None:
        self.size_s = size_s
        self.grace_s = grace_s
        self.retain_s = retain_s
        self.dimensions = dimensions
        self._windows: dict[str, Window] = {}
        self.newest = 0.0  # the newest event time seen: the windows' clock
        self.too_late = 0  # arrivals for windows no longer retained (not counted)

    def __len__(self) -> int:
        return len(self._windows)

    def _window(self, at: float, dimension: dict[str, str]) -> Window | None:
        start = at - (at % self.size_s)
        if start + self.size_s + self.retain_s < self.newest:
            return None
        key = aggregate_key(_iso(start), dimension)
        window = self._windows.get(key)
        if window is None:
            window = self._windows[key] = Window(start, start + self.size_s, dimension)
        window.dirty = True
        return window

    def add_result(self, result: dict[str, Any]) -> bool:
        """Count one result (the output topic's JSON); False when it was too late to count."""
        at = _parse_time(result.get("posted_at")) or _parse_time(result.get("processed_at")) or time.time()
        self.newest = max(self.newest, at)
        label, scores = result.get("label"), result.get("scores") or {}
        given = result.get("dimensions") or {}
        dimensions = [{}] + [{name: str(given[name])} for name in self.dimensions if given.get(name)]
        counted = False
        for dimension in dimensions:
            window = self._window(at, dimension)
            if window is None:
                continue
            counted = True
            if label in window.counts:
                window.counts[label] += 1
            for name in LABELS:
                window.score_sums[name] += float(scores.get(name, 0.0))
        if not counted:
            self.too_late += 1
        return counted

    def add_dead_letter(self, letter: dict[str, Any]) -> bool:
        at = _parse_time(letter.get("failed_at")) or time.time()
        self.newest = max(self.newest, at)
        window = self._window(at, {})
        if window is None:
            self.too_late += 1
            return False
        window.dead_letters += 1
        return True

    def restore(self, record: dict[str, Any]) -> None:
        """Take a published record as the state of its window (the latest record per key wins)."""
        window = Window.from_record(record)
        if window is not None:
            self._windows[aggregate_key(_iso(window.start), window.dimension)] = window
            self.newest = max(self.newest, window.start)

    def due(self, now: float | None = None) -> list[tuple[str, dict[str, Any]]]:
        """(key, record) of every window that changed or closed since the last call, and forget
        the windows past retention. Call it every update interval."""
        now = time.time() if now is None else now
        out = []
        for key, window in list(self._windows.items()):
            if not window.closed and window.end + self.grace_s <= self.newest:
                window.closed = True
                window.dirty = True
            if window.dirty:
                window.dirty = False
                out.append((key, window.record(now)))
            elif window.closed and window.end + self.retain_s < self.newest:
                del self._windows[key]
        return out

    def snapshot(self, dimension: dict[str, str] | None = None) -> list[dict[str, Any]]:
        """Every retained window's record for ``dimension`` (default: the totals), oldest first."""
        wanted = json.dumps(dimension or {}, sort_keys=True)
        chosen = [w for w in self._windows.values() if json.dumps(w.dimension, sort_keys=True) == wanted]
        now = time.time()
        return [w.record(now) for w in sorted(chosen, key=lambda w: w.start)]
