"""`emotion-stream dashboard`: the live page, fed by the aggregates, output and dead-letter topics.

The page (``static/``, its chart library vendored there: nothing is loaded from elsewhere) asks
``api/state`` for a snapshot and then follows ``events`` (server-sent events): every aggregate
record of the totals, every result (id, label, score; its text only with
EMOTION_DASHBOARD_SHOW_TEXT), and the current rates every two seconds. The rates count the
results and dead letters whose Kafka timestamps fall in the last ten seconds, so a history
read at start does not count as traffic.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import OrderedDict, deque
from pathlib import Path
from typing import Any

import structlog
from aiohttp import web

from schemas.labels import LABELS
from worker.broker.clients import follow
from worker.settings import WorkerSettings

log = structlog.get_logger(__name__)

STATIC = Path(__file__).parent / "static"
RECENT = 50
STREAM_S = 30.0
"""An events stream ends after this long and the page reconnects (and re-reads the state):
proxies that cut long responses, and browsers that wait for a page to settle, both cope."""
RATE_WINDOW_S = 10.0
HOUR_S = 3600.0
TEXTS_KEPT = 5000


class DashboardState:
    """What the page shows, kept up to date from the topics; pushes changes to subscribers."""

    def __init__(self, settings: WorkerSettings) -> None:
        self.settings = settings
        self.windows: dict[str, dict[str, Any]] = {}  # window_start -> record, totals only
        self.recent: deque[dict[str, Any]] = deque(maxlen=RECENT)
        self.result_times: deque[float] = deque()
        self.dead_letter_times: deque[float] = deque()
        self.texts: OrderedDict[str, str] = OrderedDict()
        self.subscribers: set[asyncio.Queue] = set()

    # -- what the topics bring --------------------------------------------------------------

    def on_aggregate(self, record: dict[str, Any]) -> None:
        if record.get("dimension") != {} or not isinstance(record.get("window_start"), str):
            return
        self.windows[record["window_start"]] = record
        newest = max(self.windows)
        for start in [s for s in self.windows if _seconds(newest) - _seconds(s) >= HOUR_S]:
            del self.windows[start]
        self.publish("aggregate", record)

    def on_result(self, result: dict[str, Any], timestamp_ms: int) -> None:
        shown = {k: result.get(k) for k in ("id", "label", "score", "processed_at")}
        if self.settings.dashboard_show_text:
            shown["text"] = self.texts.get(str(result.get("id")))
        self.recent.appendleft(shown)
        self._stamp(self.result_times, timestamp_ms)
        self.publish("result", shown)

    def on_dead_letter(self, timestamp_ms: int) -> None:
        self._stamp(self.dead_letter_times, timestamp_ms)

    @staticmethod
    def _stamp(times: deque[float], timestamp_ms: int) -> None:
        """Keep the record's time for the rates, unless it is history already (read at start)."""
        if timestamp_ms / 1000 >= time.time() - RATE_WINDOW_S:
            times.append(timestamp_ms / 1000)

    def on_post(self, post: dict[str, Any]) -> None:
        if isinstance(post.get("id"), str) and isinstance(post.get("text"), str):
            self.texts[post["id"]] = post["text"]
            while len(self.texts) > TEXTS_KEPT:
                self.texts.popitem(last=False)

    # -- what the page asks -------------------------------------------------------------------

    def rates(self, now: float | None = None) -> dict[str, float]:
        now = time.time() if now is None else now
        out = {}
        series = (("posts_per_s", self.result_times), ("dead_letters_per_s", self.dead_letter_times))
        for name, times in series:
            while times and times[0] < now - RATE_WINDOW_S:
                times.popleft()
            out[name] = round(sum(1 for t in times if now - RATE_WINDOW_S <= t <= now) / RATE_WINDOW_S, 2)
        return out

    def snapshot(self) -> dict[str, Any]:
        return {
            "labels": list(LABELS),
            "window_s": self.settings.aggregate_window_s,
            "windows": [self.windows[k] for k in sorted(self.windows)],
            "recent": list(self.recent),
            "rate": self.rates(),
            "show_text": self.settings.dashboard_show_text,
        }

    def publish(self, event: str, data: dict[str, Any]) -> None:
        message = f"event: {event}\ndata: {json.dumps(data)}\n\n".encode()
        for queue in list(self.subscribers):
            if queue.qsize() < 1000:  # a stalled page loses updates, not the server's memory
                queue.put_nowait(message)


def _seconds(iso: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


async def _follow_topics(state: DashboardState) -> None:
    s = state.settings
    topics = [s.aggregates_topic, s.output_topic, s.dlq_topic]
    if s.dashboard_show_text:
        topics.append(s.input_topic)
    async for record in follow(
        s.bootstrap_servers,
        topics,
        backend=s.broker_backend,
        security=s.security().aiokafka(),
        fetch_max_wait_ms=500,
    ):
        if record.topic == s.dlq_topic:
            state.on_dead_letter(record.timestamp)
            continue
        try:
            value = json.loads(record.value or b"")
        except ValueError:
            continue
        if not isinstance(value, dict):
            continue
        if record.topic == s.aggregates_topic:
            state.on_aggregate(value)
        elif record.topic == s.output_topic:
            state.on_result(value, record.timestamp)
        else:
            state.on_post(value)


async def _tick_rates(state: DashboardState) -> None:
    while True:
        await asyncio.sleep(2.0)
        state.publish("rate", state.rates())


def build_app(state: DashboardState) -> web.Application:
    async def index(request: web.Request) -> web.StreamResponse:
        return web.FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    async def api_state(request: web.Request) -> web.Response:
        return web.json_response(state.snapshot())

    async def events(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",
            }
        )
        await response.prepare(request)
        queue: asyncio.Queue = asyncio.Queue()
        state.subscribers.add(queue)
        try:
            await response.write(b"retry: 1000\n\n")
            ends = time.monotonic() + STREAM_S
            while (left := ends - time.monotonic()) > 0:
                try:
                    message = await asyncio.wait_for(queue.get(), timeout=min(15.0, left))
                except asyncio.TimeoutError:
                    message = b": keep-alive\n\n"
                await response.write(message)
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            state.subscribers.discard(queue)
        return response

    async def health(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "windows": len(state.windows)})

    app = web.Application()
    app.router.add_get("/", index)
    app.router.add_get("/api/state", api_state)
    app.router.add_get("/events", events)
    app.router.add_get("/health", health)
    app.router.add_static("/static/", STATIC)
    return app


async def serve(settings: WorkerSettings, ready: asyncio.Event | None = None) -> None:
    """Serve the page until cancelled; a topic reader that fails stops the server with it."""
    state = DashboardState(settings)
    runner = web.AppRunner(build_app(state), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, settings.dashboard_host, settings.dashboard_port)
    await site.start()
    log.info("dashboard serving", url=f"http://{settings.dashboard_host}:{settings.dashboard_port}/")
    if ready is not None:
        ready.set()
    tasks = [asyncio.ensure_future(_follow_topics(state)), asyncio.ensure_future(_tick_rates(state))]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            task.result()
    finally:
        for task in tasks:
            task.cancel()
        with contextlib.suppress(Exception):
            await asyncio.gather(*tasks, return_exceptions=True)
        await runner.cleanup()


def run_dashboard(settings: WorkerSettings) -> int:
    """Run until Ctrl-C or SIGTERM."""
    import signal

    async def main() -> None:
        task = asyncio.ensure_future(serve(settings))
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await task

    asyncio.run(main())
    return 0
