"""The inference guard: one case at a time, a bounded queue, places given back on every path."""

from __future__ import annotations

import asyncio

import pytest

from service.api.errors import QueueFullError
from service.api.gpu_guard import GpuGuard


def run(coro):
    return asyncio.run(coro)


def test_one_running_and_queue_size_waiting_then_429():
    async def scenario() -> None:
        guard = GpuGuard(queue_size=2)
        first, second = guard.admit(), guard.admit()
        with pytest.raises(QueueFullError) as refused:
            guard.admit()
        assert refused.value.http_status == 429
        assert int(refused.value.headers["Retry-After"]) >= 1
        async with first.running():
            assert (guard.waiting, guard.in_flight) == (1, 1)
            third = guard.admit()  # first left the queue for the slot
            assert guard.waiting == 2
        second.close()
        third.close()
        assert (guard.waiting, guard.in_flight) == (0, 0)

    run(scenario())


def test_runs_are_serialised():
    async def scenario() -> int:
        guard = GpuGuard(queue_size=4)
        active = peak = 0

        async def case() -> None:
            nonlocal active, peak
            with guard.admit() as ticket:
                async with ticket.running():
                    active += 1
                    peak = max(peak, active)
                    await asyncio.sleep(0.01)
                    active -= 1

        await asyncio.gather(*(case() for _ in range(4)))
        assert (guard.waiting, guard.in_flight) == (0, 0)
        return peak

    assert run(scenario()) == 1


def test_cancelled_while_waiting_gives_the_place_back():
    async def scenario() -> None:
        guard = GpuGuard(queue_size=1)
        holder = guard.admit()
        async with holder.running():
            async def waiter() -> None:
                with guard.admit() as ticket:
                    async with ticket.running():
                        pass

            task = asyncio.create_task(waiter())
            await asyncio.sleep(0.01)
            assert guard.waiting == 1
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert guard.waiting == 0
        holder.close()
        assert (guard.waiting, guard.in_flight) == (0, 0)

    run(scenario())


def test_error_inside_the_slot_releases_it():
    async def scenario() -> None:
        guard = GpuGuard(queue_size=1)
        with pytest.raises(RuntimeError), guard.admit() as ticket:
            async with ticket.running():
                raise RuntimeError("boom")
        assert (guard.waiting, guard.in_flight) == (0, 0)
        with guard.admit() as again:
            async with again.running():
                pass

    run(scenario())


def test_a_ticket_runs_once():
    async def scenario() -> None:
        guard = GpuGuard(queue_size=1)
        with guard.admit() as ticket:
            async with ticket.running():
                pass
            with pytest.raises(RuntimeError):
                async with ticket.running():
                    pass

    run(scenario())


def test_retry_after_follows_case_times():
    guard = GpuGuard(queue_size=1)
    guard._record(100.0)
    guard._record(100.0)
    guard.admit()
    assert guard.retry_after_s() > 10


def test_queue_size_must_be_positive():
    with pytest.raises(ValueError):
        GpuGuard(queue_size=0)
