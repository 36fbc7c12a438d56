"""The live page served from a state fed with a stream's records, without a broker.

The records are an hour's aggregates and recent results as the aggregator and the worker write
them (schema 1.3 results: some unsure, in another language or without text), each read through
the page's own hardened reader. Used by the page's headless-browser test and to regenerate the
README's screenshot::

    .venv/bin/python -m tests.web.live_page docs/dashboard.png
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from aiohttp import web

from emotion_stream.schemas.aggregates import EmotionAggregate
from emotion_stream.schemas.labels import LABELS
from emotion_stream.schemas.messages import EmotionResult, ModelInfo, ResultSource
from emotion_stream.worker.broker.embedded import free_port
from emotion_stream.worker.dashboard.server import DashboardState, build_app
from emotion_stream.worker.reading import SET_APART
from emotion_stream.worker.settings import DashboardSettings

WINDOW_S = 60
WINDOWS = 40
SHARES = {"sadness": 0.28, "joy": 0.33, "love": 0.1, "anger": 0.13, "fear": 0.1, "surprise": 0.06}
APART_SHARES = {"unsure": 0.07, "other_language": 0.05, "no_text": 0.02}
RESULTS = 24
# Recent results that are set apart, by their place among the results: (unreadable, confident, language).
APART_RESULTS = {
    1: ("other_language", True, "es"),
    4: (None, False, "en"),
    7: ("no_text", True, None),
    12: ("other_language", True, "fr"),
}
READY = "document.body.dataset.ready === 'true' && document.getElementById('status').dataset.state === 'live'"
TAGS = {"other_language": "other language", "no_text": "no text", "unsure": "unsure"}


@dataclass
class Expected:
    """What the page must show for the records fed."""

    mix: Counter = field(default_factory=Counter)
    apart: Counter = field(default_factory=Counter)
    posts: int = 0
    dead_letters: int = 0
    tags: dict[str, str] = field(default_factory=dict)
    """Recent result id -> its mark in the table (the results not listed have none)."""

    def add(self, aggregate: dict) -> None:
        self.mix.update(aggregate["counts"])
        for kind in SET_APART:
            self.apart[kind] += aggregate[kind]
        self.posts += aggregate["posts"] + sum(aggregate[kind] for kind in SET_APART)
        self.dead_letters += aggregate["dead_letters"]


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def aggregate(start: float, rng: random.Random, closed: bool = True) -> dict:
    """One window's totals, as the aggregator publishes them (schema 1.1)."""
    volume = rng.randint(60, 140)
    counts = {label: round(volume * share * rng.uniform(0.7, 1.3)) for label, share in SHARES.items()}
    record = EmotionAggregate(
        window_start=_iso(start),
        window_end=_iso(start + WINDOW_S),
        dimension={},
        counts=counts,
        mean_scores={label: round(SHARES[label] * rng.uniform(0.8, 1.2), 4) for label in LABELS},
        posts=sum(counts.values()),
        **{kind: round(volume * share * rng.uniform(0.5, 1.5)) for kind, share in APART_SHARES.items()},
        dead_letters=int(rng.random() < 0.1),
        closed=closed,
        updated_at=_iso(start + WINDOW_S),
    )
    return json.loads(record.model_dump_json())


def result(
    number: int, rng: random.Random, reading: tuple[str | None, bool, str | None] | None = None
) -> tuple[str, bytes]:
    """A result as the worker writes it (schema 1.3); its id and its bytes. ``reading``:
    (unreadable, confident, language), by default the one of APART_RESULTS or a readable one."""
    label = rng.choices(list(SHARES), weights=list(SHARES.values()))[0]
    unreadable, confident, language = reading or APART_RESULTS.get(number, (None, True, "en"))
    score = round(rng.uniform(0.3, 0.45) if not confident else rng.uniform(0.55, 0.98), 4)
    rest = (1 - score) / (len(LABELS) - 1)
    record = EmotionResult(
        id=f"p-{4200 + number}",
        label=label,
        score=score,
        scores={name: score if name == label else rest for name in LABELS},
        model=ModelInfo(name="distilroberta-emotion", version="1.3.0"),
        source=ResultSource(topic="emotion-results", partition=number % 3, offset=9000 + number),
        language=language,
        language_score=0.97 if language else None,
        unreadable=unreadable,
        confident=confident,
    )
    return record.id, record.model_dump_json().encode()


def fed_state(now: float | None = None) -> tuple[DashboardState, Expected]:
    """A page's state fed with an hour of aggregates, recent results and a dead letter, each read
    as a record of its topic; and what the page must show for them."""
    now = time.time() if now is None else now
    settings = DashboardSettings(aggregate_window_s=WINDOW_S)
    state, expected, rng = DashboardState(settings), Expected(), random.Random(7)
    newest = now // WINDOW_S * WINDOW_S
    for i in range(WINDOWS):
        record = aggregate(newest - (WINDOWS - 1 - i) * WINDOW_S, rng, closed=i < WINDOWS - 1)
        state.on_record(settings.aggregates_topic, json.dumps(record).encode(), int(now * 1000))
        expected.add(record)
    breakdown = {**record, "dimension": {"source": "app"}, "posts": 10**6}  # not the totals: not shown
    state.on_record(settings.aggregates_topic, json.dumps(breakdown).encode(), int(now * 1000))
    for number in range(RESULTS, 0, -1):  # oldest first; the newest ends on top of the table
        ident, value = result(number, rng)
        state.on_record(settings.output_topic, value, int((now - number * 0.4) * 1000))
        if number in APART_RESULTS:
            unreadable, _, language = APART_RESULTS[number]
            tag = TAGS[unreadable or "unsure"]
            expected.tags[ident] = f"{tag} ({language})" if unreadable == "other_language" else tag
    dead = b'{"error": {"kind": "not_json", "message": "x"}}'
    state.on_record(settings.dlq_topic, dead, int((now - 2) * 1000))
    assert not state.skipped, state.skipped
    return state, expected


@asynccontextmanager
async def serving(state: DashboardState) -> AsyncIterator[str]:
    """The page's server on a free local port; yields its URL."""
    # An open page's event stream waits up to 15 s for its next event: the test does not.
    runner = web.AppRunner(build_app(state), access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        await runner.cleanup()


async def screenshot(path: Path, width: int = 1280, height: int = 960) -> Path:
    from tests.browser import HeadlessChromium

    state, _ = fed_state()
    async with serving(state) as url, HeadlessChromium(width, height) as page:
        await page.goto(url)
        await page.wait_for(READY, timeout=30)
        return await page.screenshot(path)


if __name__ == "__main__":
    print(asyncio.run(screenshot(Path(sys.argv[1] if len(sys.argv) > 1 else "dashboard.png"))))
