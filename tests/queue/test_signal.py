"""JobSignal: how many waiting pickers a notification wakes, and that none misses one."""

from __future__ import annotations

import asyncio

from queue_service.notifier import JobSignal


async def _waiters(signal: JobSignal, n: int) -> list[asyncio.Task[bool]]:
    async def waiter() -> bool:
        with signal.subscribe() as ticket:
            return await signal.wait(ticket, 30)

    tasks = [asyncio.create_task(waiter()) for _ in range(n)]
    for _ in range(100):
        if signal.waiting == n:
            return tasks
        await asyncio.sleep(0)
    raise AssertionError(f"only {signal.waiting} of {n} waiters are waiting")


async def test_a_count_wakes_that_many_waiting_pickers_longest_waiting_first():
    signal = JobSignal()
    tasks = await _waiters(signal, 5)

    signal.notify(2)
    for _ in range(100):
        if tasks[0].done() and tasks[1].done():
            break
        await asyncio.sleep(0)

    assert [t.done() for t in tasks] == [True, True, False, False, False]
    assert signal.waiting == 3
    signal.close()
    assert await asyncio.gather(*tasks) == [True] * 5


async def test_no_count_wakes_every_waiting_picker():
    signal = JobSignal()
    tasks = await _waiters(signal, 3)

    signal.notify()

    assert await asyncio.gather(*tasks) == [True, True, True]
    assert signal.waiting == 0


async def test_a_picker_looking_when_jobs_arrive_looks_again_instead_of_waiting():
    signal = JobSignal()
    with signal.subscribe() as ticket:
        # The picker's pick ran, found nothing; jobs commit before it starts to wait.
        signal.notify(1)
        assert await asyncio.wait_for(signal.wait(ticket, 30), 1) is True
        # The mark is used up: the next wait really waits (and times out here).
        assert await signal.wait(ticket, 0.01) is False


async def test_a_waiter_that_gives_up_is_not_counted_and_not_woken():
    signal = JobSignal()
    with signal.subscribe() as ticket:
        assert await signal.wait(ticket, 0.01) is False
    assert signal.waiting == 0
    signal.notify(1)  # nobody to wake: nothing breaks, nothing is left armed
    tasks = await _waiters(signal, 1)
    signal.notify(1)
    assert await tasks[0] is True


async def test_close_wakes_everyone_for_good():
    signal = JobSignal()
    tasks = await _waiters(signal, 2)

    signal.close()

    assert await asyncio.gather(*tasks) == [True, True]
    assert signal.closed
