"""The live page's server: health, readiness, metrics, its watchdog and its token."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys

import pytest
from aiohttp.test_utils import TestClient, TestServer
from pydantic import ValidationError

from emotion_stream.worker.dashboard.server import DashboardState, PageWatchdog, build_app
from emotion_stream.worker.settings import DashboardSettings


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _watchdog(clock: Clock, dead: list) -> PageWatchdog:
    return PageWatchdog(loop_stall_s=10, reader_stall_s=30, grace_s=5, on_dead=dead.append, clock=clock)


def test_the_watchdog_reports_a_stalled_loop_or_reader_and_fires_after_the_grace_period():
    clock, dead = Clock(), []
    dog = _watchdog(clock, dead)
    dog.reader_polled(lag=0)
    assert dog.check() == []
    clock.now += 31
    dog.beat()
    found = dog.check()
    assert len(found) == 1 and "topic reader" in found[0] and not dead
    clock.now += 6
    dog.beat()
    dog.check()
    assert dead and "topic reader" in dead[0]

    clock, dead = Clock(), []
    dog = _watchdog(clock, dead)
    clock.now += 11
    dog.reader_polled(lag=0)
    assert any("event loop" in p for p in dog.check())


def test_the_watchdog_reports_a_reader_that_polls_but_reads_nothing_while_records_wait():
    clock, dead = Clock(), []
    dog = _watchdog(clock, dead)
    dog.reader_polled(lag=0)
    for _ in range(4):
        clock.now += 10
        dog.beat()
        dog.reader_polled(lag=7)
    found = dog.check()
    assert len(found) == 1 and "7 records waiting" in found[0]
    dog.records_read()
    assert dog.check() == []


async def _get(state: DashboardState, path: str, **kwargs):
    async with TestClient(TestServer(build_app(state))) as client:
        response = await client.get(path, allow_redirects=False, **kwargs)
        return response.status, await response.text(), response.headers


def test_health_ready_and_metrics():
    state = DashboardState(DashboardSettings())
    state.on_record(state.settings.output_topic, b"[" * 5000, 1)
    status, body, _ = asyncio.run(_get(state, "/metrics"))
    topic = state.settings.output_topic
    assert status == 200
    assert f'emotion_dashboard_records_skipped_total{{reason="not_json",topic="{topic}"}} 1.0' in body
    assert "emotion_dashboard_subscribers 0.0" in body
    assert asyncio.run(_get(state, "/ready"))[0] == 503  # the reader has not polled yet
    state.watchdog.reader_polled(lag=0)
    state.reader_started = True
    assert asyncio.run(_get(state, "/ready"))[0] == 200
    assert asyncio.run(_get(state, "/health"))[0] == 200

    state.watchdog.loop_stall_s = -1  # as if the loop had stalled
    status, body, _ = asyncio.run(_get(state, "/health"))
    assert status == 503 and "event loop" in body


def test_with_a_token_the_page_asks_for_it_and_keeps_it_in_a_cookie():
    state = DashboardState(DashboardSettings(dashboard_token="page-secret", dashboard_show_text=True))
    assert asyncio.run(_get(state, "/api/state"))[0] == 401
    assert asyncio.run(_get(state, "/?token=wrong"))[0] == 401
    status, _, headers = asyncio.run(_get(state, "/?token=page-secret"))
    assert status == 303 and headers["Location"] == "/" and "page-secret" in headers["Set-Cookie"]
    assert "HttpOnly" in headers["Set-Cookie"]
    assert asyncio.run(_get(state, "/api/state", headers={"Authorization": "Bearer page-secret"}))[0] == 200
    assert (
        asyncio.run(_get(state, "/api/state", cookies={"emotion_dashboard_token": "page-secret"}))[0] == 200
    )
    assert asyncio.run(_get(state, "/health"))[0] == 200  # probes need no token


def test_post_text_on_an_open_address_needs_a_token():
    with pytest.raises(ValidationError, match="EMOTION_DASHBOARD_TOKEN"):
        DashboardSettings(dashboard_show_text=True, dashboard_host="0.0.0.0")
    DashboardSettings(dashboard_show_text=True, dashboard_host="0.0.0.0", dashboard_token="t")
    DashboardSettings(dashboard_show_text=False, dashboard_host="0.0.0.0")
    DashboardSettings(dashboard_show_text=True, dashboard_host="127.0.0.1")


def test_the_dashboard_command_refuses_to_start_with_exit_code_2_and_says_what_to_set():
    env = {k: v for k, v in os.environ.items() if not k.startswith("EMOTION_")}
    env.update({"EMOTION_DASHBOARD_SHOW_TEXT": "true", "EMOTION_DASHBOARD_HOST": "0.0.0.0"})
    result = subprocess.run(
        [sys.executable, "-m", "emotion_stream.worker.cli.main", "dashboard"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and "EMOTION_DASHBOARD_TOKEN" in result.stderr, result.stderr


def test_the_page_is_sent_what_each_result_counts_as_and_the_windows_counts_apart():
    state = DashboardState(DashboardSettings())
    topics = state.settings
    results = [
        {"id": "read", "label": "joy", "score": 0.9, "unreadable": None, "confident": True, "language": "en"},
        {"id": "es", "label": "joy", "score": 0.8, "unreadable": "other_language", "language": "es"},
        {"id": "emoji", "label": "anger", "score": 0.7, "unreadable": "no_text", "language": None},
        {"id": "unsure", "label": "fear", "score": 0.3, "unreadable": None, "confident": False},
    ]
    for result in results:
        state.on_record(topics.output_topic, json.dumps(result).encode(), 1)
    window = {
        "window_start": "2026-11-29T20:00:00Z",
        "dimension": {},
        "counts": {"joy": 1},
        "posts": 1,
        "unsure": 1,
        "other_language": 1,
        "no_text": 1,
    }
    state.on_record(topics.aggregates_topic, json.dumps(window).encode(), 1)
    status, body, _ = asyncio.run(_get(state, "/api/state"))
    page = json.loads(body)
    assert status == 200 and page["windows"] == [window]
    assert [(r["id"], r["set_apart"], r["language"]) for r in page["recent"]] == [
        ("unsure", "unsure", None),
        ("emoji", "no_text", None),
        ("es", "other_language", "es"),
        ("read", None, "en"),
    ]
