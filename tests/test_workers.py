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
