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


def test_freed_memory_goes_back_to_the_system_after_loading():
    import platform

    from emotion_stream.worker.heap import release_free_memory

    def resident_kib() -> int:
        return int(open("/proc/self/status").read().split("VmRSS:")[1].split()[0])

    blocks = [bytearray(64 * 1024) for _ in range(2000)]  # 125 MiB in blocks the heap holds
    del blocks[::2]  # half freed, between live ones: glibc keeps those pages mapped
    before = resident_kib()
    assert release_free_memory() is (platform.libc_ver()[0] == "glibc")
    if platform.libc_ver()[0] == "glibc":
        assert resident_kib() < before - 40 * 1024
    assert len(blocks) == 1000
