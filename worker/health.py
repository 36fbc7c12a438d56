"""Health that means something: a watchdog on the worker's progress, and a probe of the broker.

The :class:`Watchdog` is told what the worker does (a batch goes into the model and comes
out, the event loop ticks, events arrive, batches are acknowledged and committed) and says
what is wrong, if anything:

- a batch has been in the model longer than its bound;
- the event loop has not ticked for ``loop_stall_s`` (something blocks it);
- the consumer has received nothing for ``consumer_stall_s`` while the input has lag and
  nothing else holds it back;
- acknowledged batches have waited longer than ``commit_timeout_s`` for a commit.

While anything is wrong ``/health`` answers 503 with the reasons; once it has been wrong for
``grace_s``, the watchdog stops the worker with exit code 1 (gracefully if the event loop
still runs, else at once: nothing acknowledged is lost, the batch in flight is read again).
It runs in a thread of its own, so a blocked event loop cannot silence it.

The :class:`BrokerProbe` asks the broker for its metadata every few seconds on a connection
of its own; ``/ready`` answers 503 while it gets no answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import structlog

log = structlog.get_logger(__name__)


class Watchdog:
    @classmethod
    def for_settings(
        cls, settings: Any, on_dead: Callable[[str], None], clock: Callable[[], float] = time.monotonic
    ) -> Watchdog:
        """The watchdog of a Kafka consumer (the worker, the aggregator): a 10 s stalled event
        loop, a consumer idle 60 s with records waiting, commits and the grace period from the
        settings (EMOTION_COMMIT_TIMEOUT_S, EMOTION_UNHEALTHY_GRACE_S)."""
        return cls(
            loop_stall_s=10.0,
            consumer_stall_s=60.0,
            commit_timeout_s=settings.commit_timeout_s,
            grace_s=settings.unhealthy_grace_s,
            on_dead=on_dead,
            clock=clock,
        )

    def __init__(
        self,
        *,
        loop_stall_s: float,
        consumer_stall_s: float,
        commit_timeout_s: float,
        grace_s: float,
        on_dead: Callable[[str], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.loop_stall_s, self.consumer_stall_s = loop_stall_s, consumer_stall_s
        self.commit_timeout_s, self.grace_s = commit_timeout_s, grace_s
        self._on_dead = on_dead
        self._clock = clock
        now = clock()
        self._beat = now
        self._last_event = now
        self._in_model_since: float | None = None
        self._model_bound = float("inf")
        self._uncommitted_since: float | None = None
        self._lag: Callable[[], int] = lambda: 0
        self._idle: Callable[[], bool] = lambda: True
        self._wrong_since: float | None = None
        self.join_timeout_s = float("inf")
        self._joining_since: float | None = now
        self._join_error: Callable[[], str | None] = lambda: None
        self._group = "its group"
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        self.fired = False

    # What the worker reports.
    def beat(self) -> None:
        """The event loop ran (called by a task on it)."""
        self._beat = self._clock()

    def watch_join(self, group: str, timeout_s: float, error: Callable[[], str | None]) -> None:
        """Report a consumer that has not joined ``group`` within ``timeout_s`` (as long as a
        dead member's session and a rebalance can hold a join), or at once when ``error()``
        names a join failure the consumer cannot get past by itself."""
        self._group, self.join_timeout_s, self._join_error = group, timeout_s, error

    def joining(self) -> None:
        """The consumer lost its partitions and is (re)joining its group."""
        if self._joining_since is None:
            self._joining_since = self._clock()

    def joined(self) -> None:
        self._joining_since = None

    def events_arrived(self) -> None:
        self._last_event = self._clock()

    def model_started(self, bound_s: float) -> None:
        self._in_model_since, self._model_bound = self._clock(), bound_s

    def model_finished(self) -> None:
        self._in_model_since = None

    def acked(self) -> None:
        if self._uncommitted_since is None:
            self._uncommitted_since = self._clock()

    def committed(self) -> None:
        self._uncommitted_since = None

    def watch_consumer(self, lag: Callable[[], int], idle: Callable[[], bool]) -> None:
        """``lag``: messages in the input not yet received; ``idle``: nothing holds the fetch back."""
        self._lag, self._idle = lag, idle

    # What it says.
    def problems(self) -> list[str]:
        now = self._clock()
        found = []
        if self._in_model_since is not None and now - self._in_model_since > self._model_bound:
            found.append(
                f"a batch has been in the model for {now - self._in_model_since:.0f}s "
                f"(bound {self._model_bound:.0f}s, EMOTION_MODEL_TIMEOUT_S)"
            )
        if now - self._beat > self.loop_stall_s:
            found.append(f"the event loop has not run for {now - self._beat:.0f}s")
        if self._joining_since is not None:
            waited = now - self._joining_since
            error = self._join_error() if waited > 1.0 else None
            if error or waited > self.join_timeout_s:
                found.append(
                    f"the consumer has not joined {self._group} in {waited:.0f}s"
                    + (f": {error}" if error else f" (bound {self.join_timeout_s:.0f}s)")
                )
        if now - self._last_event > self.consumer_stall_s and self._idle():
            lag = self._lag()
            if lag > 0:
                found.append(
                    f"the consumer has received nothing for {now - self._last_event:.0f}s "
                    f"with {lag} messages waiting in the input"
                )
        if self._uncommitted_since is not None and now - self._uncommitted_since > self.commit_timeout_s:
            found.append(
                f"acknowledged batches have waited {now - self._uncommitted_since:.0f}s for a commit "
                f"(EMOTION_COMMIT_TIMEOUT_S {self.commit_timeout_s:.0f}s)"
            )
        return found

    def check(self) -> list[str]:
        """:meth:`problems`, and stop the worker once they have lasted the grace period."""
        found = self.problems()
        now = self._clock()
        if not found:
            self._wrong_since = None
        elif self._wrong_since is None:
            self._wrong_since = now
            log.warning("worker unhealthy", problems=found, grace_s=self.grace_s)
        elif now - self._wrong_since >= self.grace_s and not self.fired:
            self.fired = True
            reason = "; ".join(found)
            log.error(
                "no progress for the grace period: stopping for the supervisor to restart", problems=found
            )
            self._on_dead(reason)
        return found

    def start(self, interval_s: float = 1.0) -> None:
        def run() -> None:
            while not self._stopped.wait(interval_s):
                self.check()

        self._thread = threading.Thread(target=run, name="watchdog", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()


def stop_worker(
    loop: asyncio.AbstractEventLoop, stop: Callable[[], None], hard_after_s: float = 15.0
) -> None:
    """Stop gracefully through the event loop; exit at once with 1 if it does not respond in time."""
    with contextlib.suppress(RuntimeError):  # a closed loop: the hard exit below does it
        loop.call_soon_threadsafe(stop)

    def hard_exit() -> None:
        log.error("the event loop did not stop the worker in time: exiting now", exit_code=1)
        os._exit(1)

    timer = threading.Timer(hard_after_s, hard_exit)
    timer.daemon = True
    timer.start()


class BrokerProbe:
    """Whether the broker answers: a metadata request every ``interval_s`` on a client of its own."""

    def __init__(
        self,
        bootstrap_servers: Sequence[str],
        interval_s: float = 2.0,
        timeout_s: float = 3.0,
        security: dict | None = None,
    ) -> None:
        self.bootstrap_servers = list(bootstrap_servers)
        self._security = security or {}
        self.interval_s, self.timeout_s = interval_s, timeout_s
        self.reachable = True
        self.last_error: str | None = None

    async def run(self) -> None:
        from aiokafka.client import AIOKafkaClient

        client = AIOKafkaClient(
            bootstrap_servers=self.bootstrap_servers,
            request_timeout_ms=int(self.timeout_s * 1000),
            **self._security,
        )
        try:
            while True:
                try:
                    await asyncio.wait_for(self._ask(client), self.timeout_s)
                    self._answered()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    self._failed(exc)
                await asyncio.sleep(self.interval_s)
        finally:
            await client.close()

    @staticmethod
    async def _ask(client) -> None:
        if not client.cluster.brokers():
            await client.bootstrap()
        else:
            await client.fetch_all_metadata()

    def _answered(self) -> None:
        if not self.reachable:
            log.info("the broker answers again")
        self.reachable, self.last_error = True, None

    def _failed(self, exc: BaseException) -> None:
        if self.reachable:
            log.warning("the broker does not answer", error=repr(exc))
        self.reachable, self.last_error = False, repr(exc)


class CannotServe(RuntimeError):
    """A component's health port cannot be opened (in use, or an address it may not bind); the
    message names the settings to change."""


async def start_site(runner: Any, host: str, port: int, settings_hint: str) -> tuple[str, int]:
    """Open ``runner``'s HTTP site on host:port (port 0: any free one); the address it got."""
    from aiohttp import web

    try:
        await web.TCPSite(runner, host, port).start()
    except OSError as exc:
        await runner.cleanup()
        raise CannotServe(f"cannot serve on {host}:{port} ({exc.strerror}): set {settings_hint}") from None
    return tuple(runner.addresses[0][:2])  # type: ignore[return-value]
