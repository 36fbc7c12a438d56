import asyncio

import pytest

from emotion_stream.worker.batching import MicroBatcher


async def _source(items, delays=None):
    for i, item in enumerate(items):
        if delays:
            await asyncio.sleep(delays[i])
        yield item


async def _collect(batcher):
    return [batch async for batch in batcher]


async def test_full_batches_are_released_at_max_size():
    batches = await _collect(MicroBatcher(_source(range(10)), max_size=4, max_wait=5.0))
    assert batches == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


async def test_a_partial_batch_is_released_after_max_wait():
    loop = asyncio.get_running_loop()
    release_times = []

    async def slow():
        yield 1
        yield 2
        await asyncio.sleep(0.5)
        yield 3

    start = loop.time()
    async for batch in MicroBatcher(slow(), max_size=100, max_wait=0.05):
        release_times.append((batch, loop.time() - start))
    assert [b for b, _ in release_times] == [[1, 2], [3]]
    first_release = release_times[0][1]
    assert 0.04 <= first_release < 0.4  # released by the wait, not by the next item


async def test_the_wait_starts_at_the_first_item_of_a_batch():
    # Items trickle in every 20 ms; with a 70 ms wait a batch holds about four of them.
    delays = [0.02] * 12
    batches = await _collect(MicroBatcher(_source(range(12), delays), max_size=100, max_wait=0.07))
    assert sum(len(b) for b in batches) == 12
    assert all(len(b) <= 5 for b in batches)
    assert len(batches) >= 3


async def test_order_is_preserved_and_nothing_is_lost():
    items = list(range(1000))
    batches = await _collect(MicroBatcher(_source(items), max_size=7, max_wait=0.01))
    assert [x for b in batches for x in b] == items
    assert max(len(b) for b in batches) == 7


async def test_source_errors_reach_the_reader():
    async def failing():
        yield 1
        raise RuntimeError("broken source")

    batcher = MicroBatcher(failing(), max_size=10, max_wait=0.01)
    with pytest.raises(RuntimeError, match="broken source"):
        await _collect(batcher)


async def test_reading_ahead_is_bounded():
    pulled = []

    async def counting():
        for i in range(1000):
            pulled.append(i)
            yield i

    batcher = MicroBatcher(counting(), max_size=10, max_wait=0.01)
    async for _ in batcher:
        await asyncio.sleep(0.05)  # a slow consumer holds the source back
        assert len(pulled) <= 10 + 2 * 10 + 2
        break
    await batcher.aclose()


@pytest.mark.parametrize("size,wait", [(0, 0.1), (1, -1)])
def test_bad_limits_are_refused(size, wait):
    with pytest.raises(ValueError):
        MicroBatcher(_source([]), max_size=size, max_wait=wait)


async def test_items_that_waited_while_the_reader_was_busy_leave_without_a_new_wait():
    async def source():
        yield 0
        await asyncio.sleep(0.3)
        for i in (1, 2, 3):
            yield i
        await asyncio.sleep(10)  # nothing more for a long time
        yield 99

    loop = asyncio.get_running_loop()
    batcher = MicroBatcher(source(), max_size=100, max_wait=0.2)
    batches = batcher.__aiter__()
    assert await batches.__anext__() == [0]
    await asyncio.sleep(0.5)  # the reader is busy; 1, 2 and 3 arrive meanwhile
    asked = loop.time()
    assert await batches.__anext__() == [1, 2, 3]
    assert loop.time() - asked < 0.05  # released at once: their wait was already over
    await batcher.aclose()


async def test_full_batch_waiting_says_whether_a_whole_batch_is_queued():
    gate = asyncio.Event()

    async def source():
        for i in range(6):
            yield i
        await gate.wait()

    batcher = MicroBatcher(source(), max_size=3, max_wait=0.01)
    batches = batcher.__aiter__()
    assert await batches.__anext__() == [0, 1, 2]
    await asyncio.sleep(0.01)  # the pump queues the next three
    assert batcher.full_batch_waiting()
    assert await batches.__anext__() == [3, 4, 5]
    assert not batcher.full_batch_waiting()
    gate.set()
    await batcher.aclose()


async def _release_delay(born_age, max_wait=0.4, born=True):
    """Seconds from an item's arrival to its batch's release, the item born ``born_age`` ago."""
    import time

    async def source():
        yield time.time() - born_age if born_age is not None else None
        await asyncio.sleep(10)  # nothing more: the batch leaves by its wait alone

    loop = asyncio.get_running_loop()
    batcher = MicroBatcher(source(), max_size=100, max_wait=max_wait, born=(lambda t: t) if born else None)
    start = loop.time()
    await batcher.__aiter__().__anext__()
    delay = loop.time() - start
    await batcher.aclose()
    return delay


async def test_time_spent_reaching_the_batcher_counts_as_waiting():
    assert (
        0.1 <= await _release_delay(0.25, max_wait=0.4) < 0.25
    )  # released at 0.4 s of age, 0.15 s after arrival


async def test_an_item_older_than_the_wait_leaves_at_once():
    assert await _release_delay(30.0) < 0.1


async def test_without_a_creation_time_the_whole_wait_counts_from_arrival():
    assert await _release_delay(0.25, born=False) >= 0.38
    assert await _release_delay(None) >= 0.38  # born() gave no time
    assert await _release_delay(-30.0) >= 0.38  # a clock ahead of ours never adds to the wait


async def test_the_byte_budget_holds_the_source_back_until_bytes_are_given_back():
    from emotion_stream.worker.batching import ByteBudget

    budget = ByteBudget(100)

    async def source():
        for i in range(10):
            yield i

    batcher = MicroBatcher(source(), max_size=10, max_wait=0.01, budget=budget, size=lambda item: 40)
    batches = batcher.__aiter__()
    first = await batches.__anext__()
    assert first == [0, 1] and budget.used == 80  # a third item would pass 100 bytes
    await budget.release(80, 2)
    second = await batches.__anext__()
    assert second == [2, 3] and budget.items == 2
    await batcher.aclose()


async def test_one_item_larger_than_the_budget_still_passes_alone():
    from emotion_stream.worker.batching import ByteBudget

    budget = ByteBudget(100)
    await budget.acquire(500)
    assert budget.used == 500
    waiter = asyncio.ensure_future(budget.acquire(1))
    await asyncio.sleep(0.01)
    assert not waiter.done()
    await budget.release(500)
    await asyncio.wait_for(waiter, 1)
