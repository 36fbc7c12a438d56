"""The watchdog: what counts as no progress, the grace period, and the verdict."""

import pytest

from emotion_stream.worker.health import Watchdog


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _watchdog(clock, dead, **overrides):
    options = dict(loop_stall_s=10, consumer_stall_s=60, commit_timeout_s=30, grace_s=20)
    options.update(overrides)
    return Watchdog(on_dead=dead.append, clock=clock, **options)


def _beating(watchdog, clock, seconds):
    for _ in range(int(seconds)):
        clock.now += 1
        watchdog.beat()


def test_a_batch_longer_in_the_model_than_its_bound_is_a_problem_and_after_the_grace_the_end():
    clock, dead = Clock(), []
    watchdog = _watchdog(clock, dead)
    watchdog.model_started(bound_s=5)
    _beating(watchdog, clock, 4)
    assert watchdog.check() == []
    _beating(watchdog, clock, 2)
    assert "in the model for 6s" in watchdog.check()[0] and dead == []
    _beating(watchdog, clock, 19)
    watchdog.check()
    assert dead == []  # still within the grace period
    _beating(watchdog, clock, 1)
    watchdog.check()
    assert len(dead) == 1 and "in the model" in dead[0]
    watchdog.check()
    assert len(dead) == 1  # said once


def test_a_problem_that_clears_within_the_grace_period_is_forgiven():
    clock, dead = Clock(), []
    watchdog = _watchdog(clock, dead)
    watchdog.model_started(bound_s=5)
    _beating(watchdog, clock, 15)
    assert watchdog.check()
    watchdog.model_finished()
    assert watchdog.check() == []
    watchdog.model_started(bound_s=5)
    _beating(watchdog, clock, 15)
    watchdog.check()
    assert dead == []  # the grace period starts again


def test_a_stalled_event_loop_is_a_problem():
    clock, dead = Clock(), []
    watchdog = _watchdog(clock, dead)
    clock.now += 11
    assert "the event loop has not run for 11s" in watchdog.check()[0]


def test_a_consumer_receiving_nothing_is_a_problem_only_with_lag_and_nothing_holding_it_back():
    clock, dead = Clock(), []
    state = {"lag": 0, "idle": True}
    watchdog = _watchdog(clock, dead)
    watchdog.watch_consumer(lag=lambda: state["lag"], idle=lambda: state["idle"])
    _beating(watchdog, clock, 61)
    assert watchdog.check() == []  # idle and nothing to read: fine
    state["lag"] = 40
    assert "40 messages waiting" in watchdog.check()[0]
    state["idle"] = False  # batches in flight hold the fetch back: not the consumer's fault
    assert watchdog.check() == []
    state["idle"] = True
    watchdog.events_arrived()
    assert watchdog.check() == []


def test_acknowledged_batches_waiting_too_long_for_a_commit_are_a_problem():
    clock, dead = Clock(), []
    watchdog = _watchdog(clock, dead)
    watchdog.acked()
    _beating(watchdog, clock, 20)
    watchdog.acked()  # later acks do not restart the wait
    _beating(watchdog, clock, 11)
    assert "waited 31s for a commit" in watchdog.check()[0]
    watchdog.committed()
    assert watchdog.check() == []


def test_a_consumer_that_does_not_join_its_group_within_the_bound_is_a_problem():
    clock, dead = Clock(), []
    watchdog = _watchdog(clock, dead)
    watchdog.watch_join("group g", timeout_s=100, error=lambda: None)
    _beating(watchdog, clock, 100)
    assert watchdog.check() == []  # a join may wait for a dead member's session
    _beating(watchdog, clock, 1)
    assert watchdog.check() == ["the consumer has not joined group g in 101s (bound 100s)"]
    watchdog.joined()
    assert watchdog.check() == []
    watchdog.joining()  # partitions revoked: a new join, a new bound
    _beating(watchdog, clock, 50)
    watchdog.joining()  # still the same join
    _beating(watchdog, clock, 50)
    assert watchdog.check() == []
    _beating(watchdog, clock, 1)
    assert "has not joined group g in 101s" in watchdog.check()[0]


def test_a_join_error_the_consumer_cannot_get_past_is_reported_at_once():
    clock, dead = Clock(), []
    watchdog = _watchdog(clock, dead)
    error = []
    watchdog.watch_join("group g", timeout_s=100, error=lambda: error[0] if error else None)
    _beating(watchdog, clock, 2)
    assert watchdog.check() == []
    error.append("InconsistentGroupProtocolError: give the worker a group of its own")
    assert watchdog.check() == [
        "the consumer has not joined group g in 2s: "
        "InconsistentGroupProtocolError: give the worker a group of its own"
    ]
    _beating(watchdog, clock, 20)
    watchdog.check()
    assert len(dead) == 1 and "InconsistentGroupProtocolError" in dead[0]


def test_a_library_line_repeated_in_a_retry_loop_is_let_through_once_per_interval():
    import logging

    from emotion_stream.worker.observability import RepeatedLibraryLines

    now = [0.0]
    repeats = RepeatedLibraryLines(every_s=10.0, clock=lambda: now[0])

    def line(name="aiokafka", node=111):
        return logging.LogRecord(
            name, logging.ERROR, "", 0, "Unable connect to node with id %s", (node,), None
        )

    passed = []
    for i in range(570):
        now[0] = i * 0.0175  # 570 attempts in 10 s, as a broker cut gave
        record = line(node=i)
        if repeats.filter(record):
            passed.append(record)
    assert len(passed) == 1
    now[0] = 10.5
    record = line()
    assert repeats.filter(record) and "569 more like it" in record.getMessage()
    own = logging.LogRecord("worker.app", logging.INFO, "", 0, "batch done", (), None)
    assert all(repeats.filter(own) for _ in range(5))  # the worker's own lines are never held back


async def test_a_health_port_in_use_is_a_clear_error_naming_the_settings():
    import socket

    from aiohttp import web

    from emotion_stream.worker.health import CannotServe, start_site

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        runner = web.AppRunner(web.Application())
        await runner.setup()
        with pytest.raises(CannotServe, match=f"127.0.0.1:{port}.*EMOTION_AGGREGATE_PORT"):
            await start_site(runner, "127.0.0.1", port, "EMOTION_AGGREGATE_HOST or EMOTION_AGGREGATE_PORT")
    runner = web.AppRunner(web.Application())
    await runner.setup()
    host, free = await start_site(runner, "127.0.0.1", 0, "X")
    assert host == "127.0.0.1" and free > 0
    await runner.cleanup()
