"""The worker pool: results, failures that carry no text, dead and runaway workers replaced."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest

from gateway.workers import WorkerDied, WorkerError, WorkerPool


def square(x: int) -> int:
    return x * x


def pid() -> int:
    return os.getpid()


def slow_pid() -> int:
    time.sleep(0.3)
    return os.getpid()


def boom(text: str) -> None:
    raise ValueError(f"cannot parse {text}")


def sleep_then(seconds: float, value: int) -> int:
    time.sleep(seconds)
    return value


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def broken_initializer() -> None:
    raise RuntimeError("model missing at /secret/path")


async def test_jobs_run_in_other_processes_and_spread_over_the_workers() -> None:
    pool = WorkerPool(2)
    await pool.start()
    try:
        assert await asyncio.gather(*(pool.submit(square, i) for i in range(20))) == [i * i for i in range(20)]
        # A job goes only to an idle worker: two slow jobs at once run on two different processes.
        pids = await asyncio.gather(pool.submit(slow_pid), pool.submit(slow_pid))
        assert len(set(pids)) == 2 and os.getpid() not in pids
    finally:
        await pool.close()


async def test_a_failing_job_reports_its_type_only() -> None:
    pool = WorkerPool(1)
    await pool.start()
    try:
        with pytest.raises(WorkerError) as info:
            await pool.submit(boom, "John Smith")
        assert str(info.value) == "ValueError"
        assert await pool.submit(square, 3) == 9  # the worker lives on
    finally:
        await pool.close()


async def test_a_worker_that_dies_fails_its_job_and_is_replaced() -> None:
    pool = WorkerPool(1)
    await pool.start()
    try:
        first = await pool.submit(pid)
        with pytest.raises(WorkerDied):
            await pool.submit(die)
        assert await asyncio.wait_for(pool.submit(pid), 60) != first
    finally:
        await pool.close()


async def test_an_abandoned_job_stops_and_the_next_one_is_served() -> None:
    pool = WorkerPool(1)
    await pool.start()
    try:
        runaway = pool.submit(sleep_then, 3600, 1)
        queued = pool.submit(square, 4)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(runaway, 0.2)
        pool.abandon(runaway)
        # Not after an hour: the worker running it was killed and a fresh one took the queued job.
        assert await asyncio.wait_for(queued, 60) == 16
    finally:
        await pool.close()


async def test_a_worker_that_cannot_start_fails_start_without_its_message() -> None:
    pool = WorkerPool(1, broken_initializer)
    with pytest.raises(WorkerError) as info:
        await pool.start()
    assert str(info.value) == "RuntimeError"


async def test_close_fails_what_is_still_queued() -> None:
    pool = WorkerPool(1)
    await pool.start()
    running = pool.submit(sleep_then, 0.5, 1)
    queued = pool.submit(square, 2)
    await pool.close()
    for future in (running, queued):
        with pytest.raises(WorkerError):
            await future
    with pytest.raises(WorkerError):
        pool.submit(square, 2)


async def pids_until_changed(pool: WorkerPool, first: int, within: float = 60) -> list[int]:
    """Submit ``pid`` jobs until one runs in another process than ``first``: every job must succeed."""
    seen = [first]
    async with asyncio.timeout(within):
        while seen[-1] == first:
            seen.append(await pool.submit(pid))
    return seen


async def test_a_worker_is_recycled_after_max_jobs_and_no_job_fails() -> None:
    pool = WorkerPool(1, max_jobs=3)
    await pool.start()
    try:
        first = await pool.submit(pid)
        # The old worker serves on while its replacement starts: no job waits for the start or fails.
        seen = await pids_until_changed(pool, first)
        assert pool.recycled >= 1 and seen[-1] != first
        assert await asyncio.gather(*(pool.submit(square, i) for i in range(10))) == [i * i for i in range(10)]
    finally:
        await pool.close()


async def test_jobs_in_flight_during_a_recycle_are_answered() -> None:
    pool = WorkerPool(1, max_jobs=2)
    await pool.start()
    try:
        # Thirty jobs at once through one worker that retires after two: every one is answered, in order.
        values = await asyncio.wait_for(asyncio.gather(*(pool.submit(sleep_then, 0.02, i) for i in range(30))), 120)
        assert values == list(range(30))
        assert pool.recycled >= 1
    finally:
        await pool.close()


async def test_a_worker_over_its_memory_limit_is_recycled() -> None:
    pool = WorkerPool(2, max_rss_mib=1)  # every process is over 1 MiB: each job retires its worker
    await pool.start()
    try:
        first = await pool.submit(pid)
        seen = await pids_until_changed(pool, first)
        assert pool.recycled >= 1 and len(set(seen)) >= 2
        assert await pool.submit(square, 7) == 49
    finally:
        await pool.close()


async def test_without_limits_a_worker_is_never_recycled() -> None:
    pool = WorkerPool(1)
    await pool.start()
    try:
        assert len({await pool.submit(pid) for _ in range(50)}) == 1
        assert pool.recycled == 0
    finally:
        await pool.close()
