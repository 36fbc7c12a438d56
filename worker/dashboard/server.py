"""`emotion-stream dashboard`: the live page, fed by the aggregates, output and dead-letter topics.

The page (``static/``, its chart library vendored there: nothing is loaded from elsewhere) asks
``api/state`` for a snapshot and then follows ``events`` (server-sent events): every aggregate
record of the totals, every result (id, label, score, and what it counts as apart from the six
emotions: unsure, other language or no text; its text only with EMOTION_DASHBOARD_SHOW_TEXT),
and the current rates every two seconds. The rates count the results and dead letters whose
Kafka timestamps fall in the last ten seconds, so a history read at start does not count as
traffic. The page's emotion mix counts only the posts the model could read and was confident
about (the aggregates' ``counts``); the unsure, other-language and no-text posts are shown apart.

Every record is read by the codec's hardened reader: garbage on any topic (deep nesting, no
JSON, huge numbers, bytes that are not UTF-8, records of the wrong shape) is skipped and
counted by reason in ``/metrics``, never an exception. ``/health`` answers 503 while the event
loop or the topic reader is stalled, and the server exits with code 1 once that has lasted
EMOTION_UNHEALTHY_GRACE_S, for its supervisor to restart it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import math
import re
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog
from aiohttp import web
from prometheus_client import CollectorRegistry, Gauge, generate_latest
from prometheus_client import Counter as PromCounter

from emotion_stream.schemas.labels import LABELS
from emotion_stream.worker.broker.profiles import profile_for
from emotion_stream.worker.codec import Rejected, Unreadable, decode_post, read_object, undecodable_reason
from emotion_stream.worker.health import BrokerProbe, Watchdog, start_site, stop_worker
from emotion_stream.worker.reading import set_apart_as
from emotion_stream.worker.settings import DashboardSettings

log = structlog.get_logger(__name__)

STATIC = Path(__file__).parent / "static"
RECENT = 50
STREAM_S = 30.0
"""An events stream ends after this long and the page reconnects (and re-reads the state):
proxies that cut long responses, and browsers that wait for a page to settle, both cope."""
RATE_WINDOW_S = 10.0
HOUR_S = 3600.0
TEXTS_KEPT = 5000
LOOP_STALL_S = 10.0
"""The event loop may stall this long before ``/health`` says so."""
READER_STALL_S = 60.0
"""The topic reader may go this long without a poll of the broker returning (or, while records
wait, without reading any) before ``/health`` says so."""
TOKEN_COOKIE = "emotion_dashboard_token"
OPEN_PATHS = frozenset({"/health", "/ready", "/metrics"})
"""What probes and scrapers reach without the page's token (no post text there)."""
LANGUAGE = re.compile(r"[A-Za-z]{2,3}(?:-[A-Za-z0-9]{1,8})?")
"""A result's detected language as the page shows it (``es``, ``zh-cn``); anything else is dropped."""


class InvalidRecord(ValueError):
    """A readable record the page cannot show (wrong shape, a number that is not finite)."""


class PageWatchdog(Watchdog):
    """The worker's watchdog, told what the page's topic reader does instead of a consumer
    group's: each poll of the broker, the records read, and how many wait to be read."""

    def __init__(
        self,
        *,
        loop_stall_s: float,
        reader_stall_s: float,
        grace_s: float,
        on_dead: Callable[[str], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        inf = float("inf")
        super().__init__(
            loop_stall_s=loop_stall_s,
            consumer_stall_s=inf,
            commit_timeout_s=inf,
            grace_s=grace_s,
            on_dead=on_dead,
            clock=clock,
        )
        self.joined()  # no consumer group: nothing to join
        self.reader_stall_s = reader_stall_s
        self._polled = self._read = clock()
        self._waiting = 0

    def reader_polled(self, lag: int) -> None:
        self._polled = self._clock()
        self._waiting = lag
        if lag == 0:
            self._read = self._polled

    def records_read(self) -> None:
        self._read = self._clock()

    def problems(self) -> list[str]:
        found = super().problems()
        now = self._clock()
        if now - self._polled > self.reader_stall_s:
            found.append(f"the topic reader has not polled the broker for {now - self._polled:.0f}s")
        elif self._waiting > 0 and now - self._read > self.reader_stall_s:
            found.append(
                f"the topic reader has read nothing for {now - self._read:.0f}s with "
                f"{self._waiting} records waiting"
            )
        return found


class PageMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.records = PromCounter(
            "emotion_dashboard_records", "Records the page read, by topic.", ["topic"], registry=self.registry
        )
        self.skipped = PromCounter(
            "emotion_dashboard_records_skipped",
            "Records the page skipped as unreadable or of the wrong shape, by topic and reason.",
            ["topic", "reason"],
            registry=self.registry,
        )
        self.subscribers = Gauge(
            "emotion_dashboard_subscribers", "Pages following the live events.", registry=self.registry
        )


class DashboardState:
    """What the page shows, kept up to date from the topics; pushes changes to subscribers."""

    def __init__(self, settings: DashboardSettings) -> None:
        self.settings = settings
        self.windows: dict[str, dict[str, Any]] = {}  # window_start -> record, totals only
        self.recent: deque[dict[str, Any]] = deque(maxlen=RECENT)
        self.result_times: deque[float] = deque()
        self.dead_letter_times: deque[float] = deque()
        self.texts: OrderedDict[str, str] = OrderedDict()
        self.subscribers: set[asyncio.Queue] = set()
        self.read: Counter[str] = Counter()
        self.skipped: Counter[tuple[str, str]] = Counter()
        self.metrics = PageMetrics()
        self.metrics.subscribers.set_function(lambda: len(self.subscribers))
        self.watchdog = PageWatchdog(
            loop_stall_s=LOOP_STALL_S,
            reader_stall_s=READER_STALL_S,
            grace_s=settings.unhealthy_grace_s,
            on_dead=self._dead,
        )
        self.reader_started = False
        self.broker_probe: BrokerProbe | None = None
        self.on_dead: Callable[[str], None] = lambda reason: None
        self.dead_reason: str | None = None

    def _dead(self, reason: str) -> None:
        self.dead_reason = reason
        self.on_dead(reason)

    # -- every record, whatever it holds ------------------------------------------------------

    def on_record(self, topic: str, value: bytes | None, timestamp_ms: int | None, headers: Any = ()) -> None:
        """One record of ``topic``: shown, or skipped and counted by reason; never raises."""
        self.read[topic] += 1
        self.metrics.records.labels(topic=topic).inc()
        try:
            reason = undecodable_reason(headers)
            if reason is not None:
                raise Unreadable("undecodable", reason)
            self._dispatch(topic, value, timestamp_ms if isinstance(timestamp_ms, int) else -1)
        except Unreadable as exc:
            self._skip(topic, exc.kind, str(exc))
        except InvalidRecord as exc:
            self._skip(topic, "invalid_record", str(exc))

    def _skip(self, topic: str, reason: str, message: str) -> None:
        self.skipped[(topic, reason)] += 1
        self.metrics.skipped.labels(topic=topic, reason=reason).inc()
        log.debug("record skipped", topic=topic, reason=reason, error=message)

    def _dispatch(self, topic: str, value: bytes | None, timestamp_ms: int) -> None:
        s = self.settings
        if topic == s.input_topic and topic not in (s.aggregates_topic, s.output_topic, s.dlq_topic):
            post = decode_post(value)  # the worker's own reading: what it dead-letters is skipped
            if isinstance(post, Rejected):
                raise Unreadable(post.error.kind, post.error.message)
            self.on_post({"id": post.id, "text": post.text})
            return
        record = read_object(value)
        if topic == s.dlq_topic:
            self.on_dead_letter(timestamp_ms)
        elif topic == s.aggregates_topic:
            self.on_aggregate(record)
        elif topic == s.output_topic:
            self.on_result(record, timestamp_ms)

    # -- what the topics bring --------------------------------------------------------------

    def on_aggregate(self, record: dict[str, Any]) -> None:
        if record.get("dimension") != {} or not isinstance(record.get("window_start"), str):
            return
        try:
            _seconds(record["window_start"])
            json.dumps(record, allow_nan=False)  # the page's JSON has no Infinity or NaN
        except (ValueError, OverflowError):
            raise InvalidRecord(
                "an aggregate with a window start that is not a time, or a number that is not finite"
            ) from None
        self.windows[record["window_start"]] = record
        newest = max(self.windows)
        for start in [s for s in self.windows if _seconds(newest) - _seconds(s) >= HOUR_S]:
            del self.windows[start]
        self.publish("aggregate", record)

    def on_result(self, result: dict[str, Any], timestamp_ms: int) -> None:
        shown = {k: result.get(k) for k in ("id", "label", "score", "processed_at")}
        score = shown["score"]
        if (
            not isinstance(shown["id"], str)
            or not isinstance(shown["label"], str)
            or not (shown["processed_at"] is None or isinstance(shown["processed_at"], str))
            or isinstance(score, bool)
            or not isinstance(score, (int, float))
            or not math.isfinite(score)
        ):
            raise InvalidRecord("a result without a string id and label and a finite score")
        shown["set_apart"] = set_apart_as(result.get("unreadable"), result.get("confident"))
        language = result.get("language")
        shown["language"] = language if isinstance(language, str) and LANGUAGE.fullmatch(language) else None
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
        if timestamp_ms >= 0 and timestamp_ms / 1000 >= time.time() - RATE_WINDOW_S:
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

    def metrics_text(self) -> str:
        return generate_latest(self.metrics.registry).decode("utf-8")

    def ready(self) -> tuple[bool, dict[str, Any]]:
        body: dict[str, Any] = {"reader": "reading" if self.reader_started else "starting"}
        ready = self.reader_started
        if self.broker_probe is not None and not self.broker_probe.reachable:
            body["broker"] = f"unreachable: {self.broker_probe.last_error}"
            ready = False
        body["ready"] = ready
        return ready, body

    def publish(self, event: str, data: dict[str, Any]) -> None:
        message = f"event: {event}\ndata: {json.dumps(data, allow_nan=False)}\n\n".encode()
        for queue in list(self.subscribers):
            if queue.qsize() < 1000:  # a stalled page loses updates, not the server's memory
                queue.put_nowait(message)


def _seconds(iso: str) -> float:
    """A window start as seconds; ``ValueError`` for anything that is not an ISO time."""
    from datetime import datetime, timezone

    moment = datetime.fromisoformat(iso.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


async def _follow_topics(state: DashboardState) -> None:
    """Read the page's topics from the beginning, without a consumer group (the page never
    moves anyone's offsets), telling the watchdog of every poll and of the records waiting."""
    from aiokafka import AIOKafkaConsumer

    s = state.settings
    topics = [s.aggregates_topic, s.output_topic, s.dlq_topic]
    if s.dashboard_show_text:
        topics.append(s.input_topic)
    options = dict(profile_for(s.broker_backend).consumer)
    options["fetch_max_wait_ms"] = 500
    options.pop("session_timeout_ms", None)
    options.pop("heartbeat_interval_ms", None)
    consumer = AIOKafkaConsumer(
        *topics,
        bootstrap_servers=s.bootstrap_servers,
        group_id=None,
        metadata_max_age_ms=1000,  # topics created after the page starts are picked up soon
        **options,
        **s.security().aiokafka(),
    )
    await consumer.start()
    try:
        while True:
            batch = await consumer.getmany(timeout_ms=1000, max_records=500)
            records = sorted((r for rs in batch.values() for r in rs), key=lambda r: r.timestamp)
            for record in records:
                state.on_record(record.topic, record.value, record.timestamp, record.headers)
            if records:
                state.watchdog.records_read()
            state.watchdog.reader_polled(lag=await _waiting(consumer))
            state.reader_started = True
            await asyncio.sleep(0)  # a long backlog still lets the pages be served
    finally:
        await consumer.stop()


async def _waiting(consumer: Any) -> int:
    """Records the broker has that the reader has not read yet (as of the last fetch)."""
    waiting = 0
    for tp in consumer.assignment():
        highwater = consumer.highwater(tp)
        if highwater is not None:
            with contextlib.suppress(Exception):
                waiting += max(0, highwater - await asyncio.wait_for(consumer.position(tp), 1.0))
    return waiting


async def _heartbeat(state: DashboardState, interval_s: float = 0.5) -> None:
    while True:
        state.watchdog.beat()
        await asyncio.sleep(interval_s)


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
        problems = state.watchdog.problems()
        if problems:
            return web.json_response({"status": "unhealthy", "problems": problems}, status=503)
        return web.json_response({"status": "ok", "windows": len(state.windows)})

    async def ready(request: web.Request) -> web.Response:
        is_ready, body = state.ready()
        return web.json_response(body, status=200 if is_ready else 503)

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(text=state.metrics_text(), content_type="text/plain")

    app = web.Application(middlewares=[_token_guard(state.settings)])
    app.router.add_get("/", index)
    app.router.add_get("/api/state", api_state)
    app.router.add_get("/events", events)
    app.router.add_get("/health", health)
    app.router.add_get("/ready", ready)
    app.router.add_get("/metrics", metrics)
    app.router.add_static("/static/", STATIC)
    return app


def _token_guard(settings: DashboardSettings) -> Any:
    """With EMOTION_DASHBOARD_TOKEN, every page but the probes needs it: as ``?token=`` once
    (then kept in a cookie, which the page's own requests and its event stream send), as the
    cookie, or as a bearer token."""
    expected = settings.dashboard_token.get_secret_value().encode() if settings.dashboard_token else None

    def matches(given: str | None) -> bool:
        return expected is not None and given is not None and hmac.compare_digest(given.encode(), expected)

    @web.middleware
    async def guard(request: web.Request, handler: Any) -> web.StreamResponse:
        if expected is None or request.path in OPEN_PATHS:
            return await handler(request)
        if matches(request.query.get("token")):
            # The token leaves the address bar (and the history) at once; the cookie keeps it.
            location = request.rel_url.with_query({k: v for k, v in request.query.items() if k != "token"})
            response = web.Response(status=303, headers={"Location": str(location)})
            response.set_cookie(TOKEN_COOKIE, expected.decode(), httponly=True, samesite="Strict", path="/")
            return response
        bearer = request.headers.get("Authorization", "").removeprefix("Bearer ").strip() or None
        if matches(request.cookies.get(TOKEN_COOKIE)) or matches(bearer):
            return await handler(request)
        return web.json_response(
            {"error": "open the page as /?token=<EMOTION_DASHBOARD_TOKEN>"},
            status=401,
            headers={"WWW-Authenticate": "Bearer"},
        )

    return guard


class Unhealthy(RuntimeError):
    """The watchdog stopped the page: exit code 1, for its supervisor to restart it."""


async def serve(settings: DashboardSettings, ready: asyncio.Event | None = None) -> None:
    """Serve the page until cancelled; a topic reader that fails stops the server with it, and
    so does the watchdog (raising :class:`Unhealthy`)."""
    state = DashboardState(settings)
    state.broker_probe = BrokerProbe(settings.bootstrap_servers, security=settings.security().aiokafka())
    runner = web.AppRunner(build_app(state), access_log=None)
    await runner.setup()
    host, port = await start_site(
        runner,
        settings.dashboard_host,
        settings.dashboard_port,
        "EMOTION_DASHBOARD_HOST or EMOTION_DASHBOARD_PORT",
    )
    log.info("dashboard serving", url=f"http://{host}:{port}/")
    if ready is not None:
        ready.set()
    tasks = [
        asyncio.ensure_future(_follow_topics(state)),
        asyncio.ensure_future(_tick_rates(state)),
        asyncio.ensure_future(_heartbeat(state)),
        asyncio.ensure_future(state.broker_probe.run()),
    ]
    loop = asyncio.get_running_loop()
    state.on_dead = lambda reason: stop_worker(loop, tasks[0].cancel)
    state.watchdog.start()
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            if task.cancelled() and state.dead_reason is not None:
                raise Unhealthy(state.dead_reason)
            task.result()
    finally:
        state.watchdog.stop()
        for task in tasks:
            task.cancel()
        with contextlib.suppress(Exception):
            await asyncio.gather(*tasks, return_exceptions=True)
        await runner.cleanup()


def run_dashboard(settings: DashboardSettings) -> int:
    """Run until Ctrl-C or SIGTERM (exit code 0), or until the watchdog stops it (1)."""
    import signal

    async def main() -> int:
        task = asyncio.ensure_future(serve(settings))
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, task.cancel)
        try:
            await task
        except asyncio.CancelledError:
            return 0
        except Unhealthy as exc:
            log.error("dashboard unhealthy: exiting for the supervisor to restart it", reason=str(exc))
            return 1
        return 0

    return asyncio.run(main())
