"""How long the consumer's next fetch may wait at the broker, given how busy the model is.

A broker that holds every fetch for its full wait (the embedded one) needs a short wait for
low latency, but an idle consumer then polls it a hundred times a second, which costs CPU
the model needs. A :class:`FetchPacer` stretches the wait while the model is busy with a
batch and the whole batches already gathered behind it (whatever arrives meanwhile cannot
be processed before the model is through them anyway) and shortens it again when not.
Brokers that answer a fetch as soon as data arrives (Apache Kafka) get no pacer: see the
broker profiles.
"""

from __future__ import annotations

import time


class FetchPacer:
    """The fetch wait to ask for now: the floor, or up to the time the model is still busy.

    The agent calls :meth:`busy_for` when a batch goes into the model and :meth:`idle` when
    it comes out; the consumer reads :meth:`wait_ms` as it builds each fetch request (from
    its own thread: a float read and write, no lock needed). A fetch issued while the model
    is busy returns when the model is expected to be free, so posts arriving meanwhile are
    not delayed, and the broker is asked a few times per batch, not every ``floor_ms``.
    """

    def __init__(self, floor_ms: int, ceiling_ms: int) -> None:
        if not 0 < floor_ms <= ceiling_ms:
            raise ValueError("fetch waits need 0 < floor_ms <= ceiling_ms")
        self.floor_ms, self.ceiling_ms = floor_ms, ceiling_ms
        self._busy_until = 0.0

    def busy_for(self, seconds: float) -> None:
        self._busy_until = time.monotonic() + seconds

    def idle(self) -> None:
        self._busy_until = 0.0

    def wait_ms(self) -> int:
        remaining_ms = (self._busy_until - time.monotonic()) * 1000
        return int(min(self.ceiling_ms, max(self.floor_ms, remaining_ms)))
