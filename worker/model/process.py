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
(:meth:`predict_prepared`). Every ticket has its own future, resolved by a reader thread as
the answers come back: an answer can only ever reach the batch it belongs to, and a batch
collected late (after a failed batch before it was retried in parts) still finds its own.
In the model process a reader thread tokenizes each request as it arrives and a model
thread runs them in order, so a batch sent ahead is tokenized while the one before it is
still in the model (what hides the tokenizer on a GPU).

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
import time
from collections.abc import Sequence
from concurrent.futures import Future
from multiprocessing.connection import Connection
from typing import Any

import structlog

from emotion_stream.schemas import ModelInfo
from emotion_stream.worker.model.api import (
    ModelLoadError,
    ModelOptions,
    ModelUnavailable,
    Prediction,
    to_predictions,
)

log = structlog.get_logger(__name__)

_STOP = None  # on the request pipe: no more requests


def _serve(
    requests: Connection, responses: Connection, model: str, options: ModelOptions, logging: tuple[str, str]
) -> None:
    """The model process: load the model, report, then answer requests until the pipe closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    from emotion_stream.worker.heap import freeze_startup_objects, release_free_memory
    from emotion_stream.worker.model.serving import load_classifier
    from emotion_stream.worker.observability import configure_logging

    configure_logging(*logging)
    try:
        clf = load_classifier(model, options, logging)
    except ModelLoadError as exc:
        responses.send(("failed", str(exc)))
        return
    except Exception as exc:  # anything else while loading is reported the same way
        responses.send(("failed", f"cannot load model {model!r}: {exc!r}"))
        return
    frozen = freeze_startup_objects()  # a full collection would stall the model mid-batch (see worker.heap)
    release_free_memory()  # what loading freed goes back to the system
    responses.send(
        (
            "ready",
            {
                "info": clf.info.model_dump(),
                "columns": clf.columns,
                "device": str(clf.device),
                "frozen_objects": frozen,
                "from_graph": clf.from_graph,
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
        self._next_ticket = 0
        self._closed = False
        self._pending: dict[int, Future] = {}
        """The future of each ticket sent and not yet collected."""
        self._pending_lock = threading.Lock()
        self._gone_error: ModelUnavailable | None = None
        """Set once the answers stop (the process died or closed its pipe)."""
        self._reader: threading.Thread | None = None
        kind, body = self._first_message(start_timeout)
        if kind != "ready":
            self.close()
            raise ModelLoadError(body)
        self.info = ModelInfo(**body["info"])
        self.columns: list[str] = body["columns"]
        self.device: str = body["device"]
        self.frozen_objects: int = body["frozen_objects"]
        """Objects the model process exempted from garbage collection once loaded (see worker.heap)."""
        self.from_graph: bool = body["from_graph"]
        """Whether the model process serves the model's saved serving graph (see worker.model.graph)."""
        self._reader = threading.Thread(target=self._read_answers, name="model-answers", daemon=True)
        self._reader.start()
        log.info(
            "model process started",
            pid=self._process.pid,
            model=self.info.name,
            device=self.device,
            frozen_objects=self.frozen_objects,
            from_graph=self.from_graph,
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
        future: Future = Future()
        with self._send_lock:
            self._next_ticket += 1
            ticket = self._next_ticket
            with self._pending_lock:
                if self._gone_error is not None:
                    raise self._gone_error
                self._pending[ticket] = future
            try:
                self._requests.send((ticket, list(texts)))
            except (BrokenPipeError, OSError) as exc:
                self._pending.pop(ticket, None)
                raise self._gone() from exc
        return ticket

    def run(self, ticket: int, timeout: float | None = None):
        """The probabilities of a ticket's texts, a (posts, 6) float32 array in the texts' order.

        Waits for that ticket's own answer, whatever was sent before or after it; raises
        :class:`ModelUnavailable` if the process is gone, ``TimeoutError`` after ``timeout``.
        """
        future = self._pending.get(ticket)
        if future is None:
            raise KeyError(f"ticket {ticket} was never sent or was collected already")
        status, body = future.result(timeout)
        self._pending.pop(ticket, None)
        if status != "ok":
            raise RuntimeError(f"the model failed on this batch: {body}")
        return body

    def _read_answers(self) -> None:
        """Hand each answer to its ticket's future; when the answers stop, fail every waiting one."""
        while True:
            try:
                ticket, status, body = self._responses.recv()
            except (EOFError, OSError):
                break
            future = self._pending.get(ticket)
            if future is not None:
                future.set_result((status, body))
        error = self._gone()
        with self._pending_lock:
            self._gone_error = error
            waiting = [f for f in self._pending.values() if not f.done()]
        for future in waiting:
            future.set_exception(error)

    def predict_prepared(self, ticket: int) -> list[Prediction]:
        return to_predictions(self.run(ticket).tolist(), self.columns)

    def predict(self, texts: Sequence[str]) -> list[Prediction]:
        return self.predict_prepared(self.prepare(texts))

    def _gone(self) -> ModelUnavailable:
        self._process.join(timeout=1)
        for _ in range(10):  # another thread may be reaping it at this very moment
            if self._process.exitcode is not None:
                break
            time.sleep(0.1)
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
        if self._reader is not None:
            self._reader.join(timeout=5)  # the pipe's far end is closed: it sees the end at once
        self._responses.close()

    def __enter__(self) -> ModelProcess:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
