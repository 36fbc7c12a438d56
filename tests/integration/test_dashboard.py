"""The live page in headless Chromium, during a stream: the chart, its numbers, live updates."""

from __future__ import annotations

import asyncio
import json
import os
from collections import Counter

import pytest

from emotion_stream.schemas.labels import LABELS
from emotion_stream.worker.broker.embedded import free_port
from emotion_stream.worker.cli.worker_process import WorkerProcess
from emotion_stream.worker.reading import set_apart_as
from tests.browser import HeadlessChromium, find_chromium
from tests.integration.helpers import (
    MALFORMED,
    collect,
    make_posts,
    produce_sync,
    start_command,
    stop_command,
)

pytestmark = pytest.mark.integration

MIX = "Object.fromEntries([...document.querySelectorAll('#mix [data-label]')].map(e => [e.dataset.label, Number(e.querySelector('.count').textContent)]))"  # noqa: E501


def _number(element_id: str) -> str:
    return f"Number(document.getElementById('{element_id}').dataset.value)"


@pytest.fixture
def pipeline(broker, worker_env, tmp_path):
    """A worker, an aggregator and the dashboard on the test's topics; yields the page's URL."""
    if find_chromium() is None:
        pytest.skip("headless Chromium is not installed (apt-get install chromium; .ci/setup does)")
    env = {
        **worker_env,
        "EMOTION_AGGREGATES_TOPIC": f"aggregates-{worker_env['EMOTION_GROUP_ID']}",
        "EMOTION_AGGREGATE_GROUP_ID": f"aggregate-{worker_env['EMOTION_GROUP_ID']}",
        "EMOTION_AGGREGATE_UPDATE_S": "0.5",
        "EMOTION_DASHBOARD_PORT": str(free_port()),
    }
    worker = WorkerProcess({**os.environ, **env}, log_path=tmp_path / "worker.log").start()
    started = []
    try:
        worker.wait_ready(timeout=90)
        started.append(start_command("aggregate", env, "aggregator started"))
        started.append(start_command("dashboard", env, "dashboard serving"))
        yield f"http://127.0.0.1:{env['EMOTION_DASHBOARD_PORT']}/", env
    finally:
        for process in started:
            stop_command(process)
        worker.stop()


def test_the_live_page_shows_the_streams_emotion_mix_and_updates_without_a_reload(
    broker, topics, pipeline, tmp_path
):
    url, _ = pipeline
    first = make_posts(40, prefix="d")
    produce_sync(broker, topics.input, first + [(k, v) for k, v, _ in MALFORMED[:3]])

    async def look() -> dict:
        async with HeadlessChromium(1280, 900) as page:
            await page.goto(url)
            await page.wait_for("document.body.dataset.ready === 'true'", timeout=60)
            await page.wait_for(f"{_number('posts-hour')} === 40 && {_number('dlq-hour')} === 3", timeout=90)
            seen = {
                "mix": await page.evaluate(MIX),
                "rows": await page.evaluate("document.querySelectorAll('#recent tbody tr').length"),
            }
            seen["first_rows"] = await page.evaluate(
                "[...document.querySelectorAll('#recent tbody tr')].map(r => r.dataset.id)"
            )
            seen["chart"] = await page.evaluate("document.querySelectorAll('#chart canvas').length")
            seen["text_shown"] = await page.evaluate("document.body.innerText.includes('i feel')")
            updates = int(await page.evaluate("Number(document.body.dataset.updates)"))
            await page.screenshot(tmp_path / "dashboard.png")

            await asyncio.to_thread(produce_sync, broker, topics.input, make_posts(15, prefix="e"))
            await page.wait_for(f"{_number('posts-hour')} === 55", timeout=90)
            seen["updates_grew"] = int(await page.evaluate("Number(document.body.dataset.updates)")) > updates
            seen["mix_after"] = await page.evaluate(MIX)
            seen["rate"] = await page.evaluate(_number("rate"))
            await page.screenshot(tmp_path / "dashboard-after.png")
            return seen

    seen = asyncio.run(look())
    results = collect(broker, [topics.output], lambda s: len(s[topics.output]) >= 55, timeout=60)[
        topics.output
    ]
    # The mix counts the posts the model could read and was confident about (the tiny test
    # model is unsure of many): the others are set apart.
    values = [json.loads(r.value) for r in results]
    counted = [v for v in values if set_apart_as(v["unreadable"], v["confident"]) is None]
    first_labels = Counter(v["label"] for v in counted if v["id"].startswith("d-"))
    labels = [v["label"] for v in counted]
    assert seen["mix"] == {name: first_labels.get(name, 0) for name in LABELS}
    assert seen["mix_after"] == {name: labels.count(name) for name in LABELS}
    assert seen["updates_grew"]  # the page changed without a reload (server-sent events)
    assert seen["rows"] == 20 and all(i.startswith(("d-", "e-")) for i in seen["first_rows"])
    assert seen["chart"] >= 1 and seen["rate"] >= 0
    assert not seen["text_shown"]  # post text stays off the page unless a setting allows it
    png = (tmp_path / "dashboard.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 20_000
    print(f"screenshots: {tmp_path / 'dashboard.png'} and {tmp_path / 'dashboard-after.png'}")


GARBAGE = [
    (b"nested", b"[" * 5000 + b"]" * 5000),
    (b"nested-post", b'{"id": "n", "text": ' + b"[" * 5000 + b"]" * 5000 + b"}"),
    (b"not-json", b"this is not json"),
    (b"not-utf8", b"\xff\xfe\x00garbage"),
    (b"huge-int", b'{"id": "h", "text": "t", "n": ' + b"9" * 50_000 + b"}"),
]


def _read(url: str) -> tuple[int, str]:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def test_garbage_on_every_topic_the_page_reads_is_skipped_counted_and_the_page_stays_up(
    broker, worker_env, topics
):
    """The page reads what is retained at every start: one nested record must not stop it."""
    import time

    env = {
        **worker_env,
        "EMOTION_AGGREGATES_TOPIC": f"aggregates-{worker_env['EMOTION_GROUP_ID']}",
        "EMOTION_DASHBOARD_PORT": str(free_port()),
        "EMOTION_DASHBOARD_SHOW_TEXT": "true",
    }
    page_topics = [topics.input, topics.output, topics.dlq, env["EMOTION_AGGREGATES_TOPIC"]]
    for topic in page_topics:
        produce_sync(broker, topic, GARBAGE)
    base = f"http://127.0.0.1:{env['EMOTION_DASHBOARD_PORT']}"
    for _ in range(2):  # a restart reads the same records again
        process = start_command("dashboard", env, "dashboard serving")
        try:
            deadline = time.monotonic() + 60
            metrics = ""
            while time.monotonic() < deadline:
                status, metrics = _read(f"{base}/metrics")
                read = [
                    line
                    for line in metrics.splitlines()
                    if line.startswith("emotion_dashboard_records_total{")
                    and line.endswith(f" {float(len(GARBAGE))}")
                ]
                if len(read) == len(page_topics):
                    break
                time.sleep(0.5)
            assert process.poll() is None, "".join(process.output)
            for topic in page_topics:
                assert f'emotion_dashboard_records_total{{topic="{topic}"}} {float(len(GARBAGE))}' in metrics
                assert f'reason="not_json",topic="{topic}"' in metrics
                assert f'reason="not_utf8",topic="{topic}"' in metrics
            assert _read(f"{base}/health")[0] == 200
            assert _read(f"{base}/ready")[0] == 200
            status, state = _read(f"{base}/api/state")
            assert status == 200 and json.loads(state)["recent"] == []
        finally:
            output = stop_command(process)
        assert process.returncode == 0 and "RecursionError" not in output and "Traceback" not in output
