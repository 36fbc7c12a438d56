"""What the live page is fed: the totals per window over the last hour, recent results, rates."""

import asyncio
import json
import time

from worker.dashboard.server import DashboardState
from worker.settings import WorkerSettings


def _aggregate(start: str, posts: int, dimension=None) -> dict:
    return {"window_start": start, "window_end": start, "dimension": dimension or {}, "posts": posts}


def test_the_state_keeps_the_totals_of_the_last_hour_and_pushes_each_change():
    state = DashboardState(WorkerSettings())
    queue: asyncio.Queue = asyncio.Queue()
    state.subscribers.add(queue)
    state.on_aggregate(_aggregate("2026-11-29T20:00:00Z", 5))
    state.on_aggregate(_aggregate("2026-11-29T20:00:00Z", 7))  # the latest record of a window wins
    state.on_aggregate(_aggregate("2026-11-29T20:30:00Z", 3, {"source": "app"}))  # a breakdown: not charted
    state.on_aggregate(_aggregate("2026-11-29T21:00:00Z", 4))  # an hour after the first: it drops out
    snapshot = state.snapshot()
    assert [w["window_start"] for w in snapshot["windows"]] == ["2026-11-29T21:00:00Z"]
    assert queue.qsize() == 3
    event = queue.get_nowait().decode()
    assert (
        event.startswith("event: aggregate\ndata: ") and json.loads(event.split("data: ", 1)[1])["posts"] == 5
    )


def test_rates_count_records_stamped_in_the_last_ten_seconds_and_text_only_when_allowed():
    now = time.time()
    hidden = DashboardState(WorkerSettings())
    hidden.on_post({"id": "p1", "text": "secret words"})
    hidden.on_result({"id": "p1", "label": "joy", "score": 0.9, "processed_at": "x"}, int((now - 5) * 1000))
    hidden.on_result({"id": "p2", "label": "fear", "score": 0.8, "processed_at": "x"}, int(now * 1000))
    hidden.on_result(
        {"id": "p0", "label": "fear", "score": 0.8, "processed_at": "x"}, int((now - 600) * 1000)
    )
    hidden.on_dead_letter(timestamp_ms=int((now - 1) * 1000))
    assert hidden.rates(now=now + 0.1) == {"posts_per_s": 0.2, "dead_letters_per_s": 0.1}
    assert hidden.rates(now=now + 30) == {"posts_per_s": 0.0, "dead_letters_per_s": 0.0}
    assert "text" not in hidden.recent[0] and [r["id"] for r in hidden.recent] == ["p0", "p2", "p1"]

    shown = DashboardState(WorkerSettings(dashboard_show_text=True))
    shown.on_post({"id": "p1", "text": "words allowed"})
    shown.on_result({"id": "p1", "label": "joy", "score": 0.9, "processed_at": "x"}, timestamp_ms=1)
    assert shown.recent[0]["text"] == "words allowed" and shown.snapshot()["show_text"] is True
