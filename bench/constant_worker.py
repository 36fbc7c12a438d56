"""A worker whose model costs nothing: it labels every post `joy` instantly.

Run as `python -m bench.constant_worker` with the usual EMOTION_* settings; measures the
pipeline around the model (Kafka, decoding, batching, encoding, acks and commits).
"""

from __future__ import annotations

import sys

from emotion_stream.schemas import LABELS, ModelInfo
from emotion_stream.worker.model.api import Prediction

FIXED = Prediction(label="joy", score=1.0, scores={name: float(name == "joy") for name in LABELS})


def constant_predict(texts):
    return [FIXED] * len(texts)


def main() -> int:
    import faust

    from emotion_stream.worker.app import EmotionStream
    from emotion_stream.worker.cli.usage import load_settings
    from emotion_stream.worker.observability import configure_logging
    from emotion_stream.worker.processing import BatchProcessor
    from emotion_stream.worker.settings import WorkerSettings

    settings = load_settings(WorkerSettings)
    log_config = configure_logging(settings.log_level, settings.log_format)
    stream = EmotionStream(
        settings, BatchProcessor(constant_predict, ModelInfo(name="constant", version="0"))
    )
    faust.Worker(
        stream.app, loglevel=settings.log_level, logging_config=log_config, quiet=True, redirect_stdouts=False
    ).execute_from_commandline()
    return 0


if __name__ == "__main__":
    sys.exit(main())
