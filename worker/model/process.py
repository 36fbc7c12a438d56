"""The model runner in a process of its own, driven from the worker like the in-process one.

Why: Python runs one thread at a time per process. The model's passes hand their work to
torch between layers, and every hand-back waits for that lock; in the worker the event loop,
the Kafka consumer thread and the batch stages hold it in short bursts all the time, so a
pass waits for it many times per batch while its sibling torch threads sit idle (measured:
a thread doing 1 ms of Python every 10 ms beside the model slowed it by about 13 %, the same
load in another process by about 2 %). In its own process the model never waits for the
worker's Python, and the worker's Kafka work never waits for the model's.

The worker sends a batch's texts down a pipe as it prepares the batch (:meth:`prepare`
returns a ticket) and collects the probabilities when the model stage runs
(:meth:`predict_prepared`). In the model process a reader thread tokenizes each request as
it arrives and a model thread runs them in order, so a batch sent ahead is tokenized while
the one before it is still in the model (what hides the tokenizer on a GPU).

A request that fails in the model process comes back as an error for that batch (the worker
then finds the posts that fail on their own). If the process itself dies, every waiting
call raises :class:`ModelUnavailable` and the worker stops without committing the batch.
The model process ignores SIGINT and SIGTERM: it stops when the worker closes the pipe
(after its last batch) or exits, so a Ctrl-C or a graceful stop of the worker's process
group never kills the model under a batch the worker is still finishing.
"""

from __future__ import annotations

import multiprocessing
import queue
import signal
import threading
from collections.abc import Sequence
from multiprocessing.connection import Connection
from typing import Any

import structlog

from schemas import ModelInfo
from worker.model.api import ModelLoadError, ModelOptions, ModelUnavailable, Prediction, to_predictions

log = structlog.get_logger(__name__)

_STOP = None  # on the request pipe: no more requests


def _serve(
    requests: Connection, responses: Connection, model: str, options: ModelOptions, logging: tuple[str, str]
) -> None:
    """The model process: load the model, report, then answer requests until the pipe closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    from worker.heap import freeze_startup_objects
    from worker.model.runner import EmotionClassifier
    from worker.observability import configure_logging

    configure_logging(*logging)
    try:
        clf = EmotionClassifier(model, options)
    except ModelLoadError as exc:
        responses.send(("failed", str(exc)))
        return
    except Exception as exc:  # anything else while loading is reported the same way
        responses.send(("failed", f"cannot load model {model!r}: {exc!r}"))
        return
    frozen = freeze_startup_objects()  # a full collection would stall the model mid-batch (see worker.heap)
    responses.send(
        (
            "ready",
            {
                "info": clf.info.model_dump(),
                "columns": clf.columns,
                "device": str(clf.device),
                "frozen_objects": frozen,
            },
        )
    )

    prepared: queue.SimpleQueue = queue.SimpleQueue()

    def run_in_order() -> None:
        while (item := prepared.get()) is not _STOP:
            ticket, batch, error = item
            if error is None:
                try:
                    reply = (ticket, "ok", clf.run(batch).numpy())
                except Exception as exc:
                    reply = (ticket, "error", repr(exc))
            else:
                reply = (ticket, "error", error)
            try:
                responses.send(reply)
            except (BrokenPipeError, OSError):
                return  # the worker is gone

    runner = threading.Thread(target=run_in_order, name="model-run", daemon=True)
    runner.start()
    while True:
        try:
            request = requests.recv()
        except (EOFError, OSError):
            break  # the worker exited
        if request is _STOP:
            break
        ticket, texts = request
        try:
            prepared.put((ticket, clf.prepare(texts), None))
        except Exception as exc:
            prepared.put((ticket, None, repr(exc)))
    prepared.put(_STOP)
    runner.join()


class ModelProcess:
    """An :class:`~worker.model.runner.EmotionClassifier` in a child process; a
    :class:`~worker.model.api.ModelRunner`.

    ``options`` cross to the child as they are (a frozen dataclass). Loading errors come back as
    :class:`ModelLoadError` with the classifier's own message. Thread-safe in the way the
    worker uses it: :meth:`prepare` from one thread, :meth:`predict_prepared` from another.
    """

    def __init__(
        self,
        model: str,
        options: ModelOptions | None = None,
        *,
        log_level: str = "INFO",
        log_format: str = "json",
        start_timeout: float = 600.0,
    ) -> None:
        options = options or ModelOptions()
        context = multiprocessing.get_context("spawn")  # never fork a process that holds threads
        requests_out, self._requests = context.Pipe(duplex=False)
        self._responses, responses_in = context.Pipe(duplex=False)
        self._process = context.Process(
            target=_serve,
            name="emotion-model",
            args=(requests_out, responses_in, model, options, (log_level, log_format)),
        )
        self._process.start()
        requests_out.close()  # the child holds these ends; ours would keep the pipes open
        responses_in.close()
        self._send_lock = threading.Lock()
        self._receive_lock = threading.Lock()
        self._next_ticket = 0
        self._closed = False
        kind, body = self._first_message(start_timeout)
        if kind != "ready":
            self.close()
            raise ModelLoadError(body)
        self.info = ModelInfo(**body["info"])
        self.columns: list[str] = body["columns"]
        self.device: str = body["device"]
        self.frozen_objects: int = body["frozen_objects"]
        """Objects the model process exempted from garbage collection once loaded (see worker.heap)."""
        log.info(
            "model process started",
            pid=self._process.pid,
            model=self.info.name,
            device=self.device,
            frozen_objects=self.frozen_objects,
        )

    def _first_message(self, timeout: float) -> tuple[str, Any]:
        try:
            if not self._responses.poll(timeout):
                return "failed", f"the model process did not load the model within {timeout:.0f}s"
            return self._responses.recv()
        except (EOFError, OSError):
            return "failed", (
                f"the model process exited with code {self._process.exitcode} while loading the model "
                "(out of memory? see the lines above)"
            )

    @property
    def leaves_cpu_to_spare(self) -> bool:
        """Always: work in the worker's process (decoding the next batch, sending it ahead)
        never holds up the model's threads, which wait for no lock of the worker's."""
        return True

    @property
    def pid(self) -> int | None:
        return self._process.pid

    def prepare(self, texts: Sequence[str]) -> int:
        """Send ``texts`` to the model process; returns the ticket to collect them with."""
        with self._send_lock:
            self._next_ticket += 1
            ticket = self._next_ticket
            try:
                self._requests.send((ticket, list(texts)))
            except (BrokenPipeError, OSError) as exc:
                raise self._gone() from exc
        return ticket

    def run(self, ticket: int):
        """The probabilities of a ticket's texts, a (posts, 6) float32 array in the texts' order."""
        with self._receive_lock:
            # Answers come back in ticket order: any before ours belong to batches that were
            # sent but never collected (abandoned when a batch before them failed).
            got = 0
            while got != ticket:
                try:
                    got, status, body = self._responses.recv()
                except (EOFError, OSError) as exc:
                    raise self._gone() from exc
        if status != "ok":
            raise RuntimeError(f"the model failed on this batch: {body}")
        return body

    def predict_prepared(self, ticket: int) -> list[Prediction]:
        return to_predictions(self.run(ticket).tolist(), self.columns)

    def predict(self, texts: Sequence[str]) -> list[Prediction]:
        return self.predict_prepared(self.prepare(texts))

    def _gone(self) -> ModelUnavailable:
        self._process.join(timeout=1)
        code = self._process.exitcode
        how = (
            "is still running but closed its pipe"
            if code is None
            else (f"was killed by signal {-code}" if code < 0 else f"exited with code {code}")
        )
        return ModelUnavailable(
            f"the model process (pid {self._process.pid}) {how}; the batch was not committed"
        )

    def close(self, timeout: float = 30.0) -> None:
        """Let the model process finish what it was sent, then stop it."""
        if self._closed:
            return
        self._closed = True
        try:
            with self._send_lock:
                self._requests.send(_STOP)
        except (BrokenPipeError, OSError):
            pass
        self._requests.close()
        self._process.join(timeout)
        if self._process.is_alive():
            self._process.kill()
            self._process.join()
        self._responses.close()

    def __enter__(self) -> ModelProcess:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
