"""Structured logs (structlog over the standard library) and Prometheus metrics.

Faust and aiokafka log through the standard library; routing them through the same
structlog formatter gives one JSON (or console) format for the whole process.
Post text never appears in logs at info level or above.
"""

from __future__ import annotations

import logging
import logging.config
from typing import Any

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_SHARED_PROCESSORS: list[Any] = [
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.add_log_level,
    structlog.stdlib.add_logger_name,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
]


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
        "handlers": {
            "default": {
                "class": "logging.StreamHandler",
                "formatter": "structlog",
                "stream": "ext://sys.stderr",
            }
        },
        "root": {"handlers": ["default"], "level": level},
        # Faust, mode and aiokafka narrate every service start and group join at INFO; the
        # worker logs its own lifecycle, so theirs is kept for DEBUG (worker.transport holds
        # Faust's app and consumer classes, whose services log under that name).
        "loggers": {
            name: {"level": level if level == "DEBUG" else "WARNING"}
            for name in ("aiokafka", "faust", "mode", "kafka", "worker.transport")
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

    def totals(self) -> dict[str, int]:
        """Posts read and results acknowledged so far, for lifecycle logs."""
        return {
            "posts_in": int(self.registry.get_sample_value("emotion_posts_in_total") or 0),
            "results_out": int(self.registry.get_sample_value("emotion_results_out_total") or 0),
        }
