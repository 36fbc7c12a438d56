"""Objects alive when startup ends are no longer walked by the cycle collector."""

import gc

import pytest

from emotion_stream.worker.heap import freeze_startup_objects


@pytest.fixture
def unfrozen():
    yield
    gc.unfreeze()


def test_objects_alive_at_the_freeze_leave_the_collectors_generations(unfrozen):
    long_lived = [{"n": i} for i in range(20_000)]
    assert any(o is long_lived for o in gc.get_objects())
    frozen = freeze_startup_objects()
    assert frozen >= len(long_lived)
    assert not any(o is long_lived for o in gc.get_objects())  # a full collection walks gc.get_objects()
    new = [[] for _ in range(10)]
    assert any(o is new for o in gc.get_objects())  # what comes later is collected as usual
