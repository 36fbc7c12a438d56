"""Structured logs (structlog over the standard library) and Prometheus metrics.

Faust and aiokafka log through the standard library; routing them through the same
structlog formatter gives one JSON (or console) format for the whole process.
Post text never appears in logs at info level or above.
"""

from __future__ import annotations

import logging
import logging.config
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import faust
import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_SHARED_PROCESSORS: list[Any] = [
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.add_log_level,
    structlog.stdlib.add_logger_name,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
]


LIBRARY_LOGGERS = ("aiokafka", "faust", "mode", "kafka")


class RepeatedLibraryLines(logging.Filter):
    """Lets a library's log line through at most once per ``every_s`` seconds.

    While the broker is away the Kafka clients retry in a loop and log every attempt: a 10 s
    cut wrote about 570 identical "Unable connect to node" lines. The first line of a kind
    passes, the repeats within the interval are counted, and the next one that passes says how
    many were held back. A line's kind is its logger and message template, not its arguments.
    """

    def __init__(self, every_s: float = 10.0, clock: Any = time.monotonic) -> None:
        super().__init__()
        self.every_s = every_s
        self._clock = clock
        self._seen: dict[tuple[str, str], list] = {}  # kind -> [time let through, held back since]

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith(LIBRARY_LOGGERS):
            return True
        key = (record.name, str(record.msg))
        now = self._clock()
        seen = self._seen.get(key)
        if seen is not None and now - seen[0] < self.every_s:
            seen[1] += 1
            return False
        if seen is not None and seen[1]:
            record.msg = (
                f"{record.msg} (and {seen[1]} more like it held back in the last {now - seen[0]:.0f} s)"
            )
        if len(self._seen) > 1000:  # a bound on the kinds remembered, whatever the libraries log
            self._seen.clear()
        self._seen[key] = [now, 0]
        return True


def logging_config(level: str = "INFO", fmt: str = "json") -> dict:
    """A ``logging.config.dictConfig`` that renders every record with structlog."""
    renderer = (
        structlog.processors.JSONRenderer() if fmt == "json" else structlog.dev.ConsoleRenderer(colors=False)
    )
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "structlog": {
                "()": structlog.stdlib.ProcessorFormatter,
                "processors": [
                    structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    structlog.processors.format_exc_info,
                    renderer,
                ],
                "foreign_pre_chain": _SHARED_PROCESSORS,
            }
        },
        "filters": {"repeats": {"()": RepeatedLibraryLines}},
        "handlers": {
            "default": {
                "class": "logging.StreamHandler",
                "formatter": "structlog",
                "filters": ["repeats"],
                "stream": "ext://sys.stderr",
            }
        },
        "root": {"handlers": ["default"], "level": level},
        # Faust, mode and aiokafka narrate every service start and group join at INFO; the
        # worker logs its own lifecycle, so theirs is kept for DEBUG (worker.transport holds
        # Faust's app and consumer classes, whose services log under that name).
        "loggers": {
            name: {"level": level if level == "DEBUG" else "WARNING"}
            for name in (
                "aiokafka",
                "faust",
                "mode",
                "kafka",
                "emotion_stream.worker.transport",
                "emotion_stream.worker.observability",
            )
        },
    }


def configure_logging(level: str = "INFO", fmt: str = "json") -> dict:
    """Configure structlog and the standard library; return the dictConfig applied."""
    structlog.configure(
        processors=[*_SHARED_PROCESSORS, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    config = logging_config(level, fmt)
    logging.config.dictConfig(config)
    return config


# Fine enough between 10 ms and 1 s, where batch times fall, to read a median off them.
_SECONDS_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.015,
    0.02,
    0.03,
    0.04,
    0.05,
    0.06,
    0.08,
    0.1,
    0.125,
    0.15,
    0.2,
    0.25,
    0.3,
    0.4,
    0.5,
    0.6,
    0.8,
    1,
    1.5,
    2,
    3,
    5,
    10,
    30,
)


_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def process_usage(pid: int | None, proc: Path = Path("/proc")) -> tuple[float, float]:
    """(resident bytes, CPU seconds used) of process ``pid``, read from ``proc``; NaNs when
    there is no such process (or no /proc: not Linux)."""
    if pid is None:
        return math.nan, math.nan
    try:
        resident_pages = int((proc / str(pid) / "statm").read_text().split()[1])
        stat = (proc / str(pid) / "stat").read_text()
    except (OSError, ValueError, IndexError):
        return math.nan, math.nan
    # The fields after the command name, which is in parentheses and may hold spaces: utime and
    # stime are the 14th and 15th fields of the line, the 12th and 13th after the name.
    fields = stat[stat.rindex(")") + 2 :].split()
    return resident_pages * _PAGE_SIZE, (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


class WorkerMetrics:
    """The worker's Prometheus metrics, in a registry of their own."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.posts_in = Counter("emotion_posts_in_total", "Messages read from the input topic.", registry=r)
        self.results_out = Counter(
            "emotion_results_out_total", "Results acknowledged by the broker.", registry=r
        )
        self.labels = Counter(
            "emotion_predictions_total", "Results by predicted label.", ["label"], registry=r
        )
        self.set_apart = Counter(
            "emotion_set_apart_total",
            "Results counted apart from the six emotions: unsure (top score under the confidence "
            "threshold), other_language, no_text.",
            ["kind"],
            registry=r,
        )
        self.dead_letters = Counter(
            "emotion_dead_letters_total",
            "Messages sent to the dead-letter topic, by reason.",
            ["kind"],
            registry=r,
        )
        self.batch_size = Histogram(
            "emotion_batch_size",
            "Messages per batch.",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
            registry=r,
        )
        self.batch_seconds = Histogram(
            "emotion_batch_seconds",
            "Time from a batch's release to its results being acknowledged.",
            registry=r,
            buckets=_SECONDS_BUCKETS,
        )
        self.model_seconds = Histogram(
            "emotion_model_seconds",
            "Time in the model per batch.",
            registry=r,
            buckets=_SECONDS_BUCKETS,
        )
        self.ready = Gauge(
            "emotion_ready", "1 when the worker has a model and partitions assigned.", registry=r
        )
        self.latency = Histogram(
            "emotion_end_to_end_seconds",
            "From each input record's Kafka timestamp to its result's acknowledgement by the broker.",
            registry=r,
            buckets=_SECONDS_BUCKETS,
        )
        self.in_flight = Gauge(
            "emotion_posts_in_flight", "Input messages read and not yet acknowledged.", registry=r
        )
        self.in_flight_bytes = Gauge(
            "emotion_bytes_in_flight", "Bytes of input messages read and not yet acknowledged.", registry=r
        )
        self.lag = Gauge(
            "emotion_consumer_lag",
            "Messages in each assigned input partition not yet fetched (high watermark less position; "
            "approximate on the embedded broker).",
            ["partition"],
            registry=r,
        )
        self.rebalances = Counter("emotion_rebalances_total", "Consumer group rebalances seen.", registry=r)
        self.commit_seconds = Histogram(
            "emotion_commit_seconds", "Time an offset commit took.", registry=r, buckets=_SECONDS_BUCKETS
        )
        self.commit_failures = Counter(
            "emotion_commit_failures_total", "Offset commits that failed (the consumer stopped).", registry=r
        )
        self.send_errors = Counter(
            "emotion_send_errors_total",
            "Outputs the broker refused or did not acknowledge in time (too-large ones included).",
            registry=r,
        )
        self.classify_requests = Counter(
            "emotion_classify_requests",
            "`POST /classify` requests answered, by HTTP status.",
            ["status"],
            registry=r,
        )
        self.classify_texts = Counter(
            "emotion_classify_texts", "Texts labelled through `POST /classify`.", registry=r
        )
        # Read from /proc at each scrape (no task to keep them current): the model process is
        # where nearly all of a worker's memory and CPU go, and its own process metrics are on
        # no endpoint. NaN until watch_model_process names it, and once it is gone.
        self.model_process_memory = Gauge(
            "emotion_model_process_resident_memory_bytes",
            "Resident memory of the process running the model (the model process, or the worker's own "
            "when EMOTION_MODEL_PROCESS is off); NaN when there is none.",
            registry=r,
        )
        self.model_process_cpu = Gauge(
            "emotion_model_process_cpu_seconds",
            "CPU time (user and system) the process running the model has used since it started; its "
            "rate() is the cores it keeps busy. NaN when there is none.",
            registry=r,
        )
        self._model_pid: Callable[[], int | None] = lambda: None
        self.model_process_memory.set_function(lambda: process_usage(self._model_pid())[0])
        self.model_process_cpu.set_function(lambda: process_usage(self._model_pid())[1])
        self._lags: dict[int, int] = {}

    def watch_model_process(self, pid: int | Callable[[], int | None] | None) -> None:
        """Report the memory and CPU time of the process ``pid`` (or of whatever pid the
        callable returns at each scrape) as the model process's."""
        self._model_pid = pid if callable(pid) else (lambda: pid)

    def set_lag(self, lags: dict[int, int]) -> None:
        for partition in set(self._lags) - set(lags):
            self.lag.remove(str(partition))
        for partition, lag in lags.items():
            self.lag.labels(partition=str(partition)).set(lag)
        self._lags = dict(lags)

    def lag_by_partition(self) -> dict[int, int]:
        return dict(self._lags)

    def totals(self) -> dict[str, int]:
        """Posts read and results acknowledged so far, for lifecycle logs."""
        return {
            "posts_in": int(self.registry.get_sample_value("emotion_posts_in_total") or 0),
            "results_out": int(self.registry.get_sample_value("emotion_results_out_total") or 0),
        }


class WorkerSensor(faust.Sensor):
    """Faust's own events the metrics and the watchdog need: commits and rebalances."""

    def __init__(self, metrics: WorkerMetrics, watchdog: Any) -> None:
        super().__init__()
        self.metrics, self.watchdog = metrics, watchdog

    def on_commit_initiated(self, consumer: Any) -> Any:
        return time.monotonic()

    def on_commit_completed(self, consumer: Any, state: Any) -> None:
        if getattr(consumer, "crash_reason", None) is not None:
            self.metrics.commit_failures.inc()  # Faust stops a consumer whose commit fails
            return
        self.metrics.commit_seconds.observe(time.monotonic() - state)
        self.watchdog.committed()

    def on_rebalance_start(self, app: Any) -> dict:
        self.metrics.rebalances.inc()
        return super().on_rebalance_start(app)
