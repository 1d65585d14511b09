"""Worker processes for CPU-bound work (the detector), driven from the event loop.

Each worker is a spawned process with one duplex pipe. A job goes to a worker only when that worker
is idle, so a send never waits behind another job's analysis; the rest wait in one queue here. The
event loop reads results through ``add_reader`` on each pipe: no management thread, no extra hop,
and a result is handled as soon as it is written.

Compared with ``concurrent.futures.ProcessPoolExecutor`` this saves one thread handoff each way
(about 1 to 2 ms per call on a 2-core machine, where that thread competes with the event loop for
the GIL) and it can stop a job that runs too long: ``abandon`` kills the worker running it and starts
a fresh one, where an executor would keep computing a result nobody waits for.

Failures never carry text: a job that raises reports only its exception's type name, because
exception messages may quote the input.

Recycling, as gunicorn's ``max_requests`` or Celery's ``worker_max_memory_per_child`` do it: a worker that
has run ``max_jobs`` jobs (plus up to a tenth more, so that workers started together do not all retire
together), or whose resident memory passed ``max_rss_mib`` after a job, is replaced. The replacement is
started first; the old worker keeps taking jobs until the replacement is ready, then takes no more and
exits once its job in hand is answered. No job fails or waits on a worker that is not ready because of a
recycle, even with one worker. Whatever a long-lived process accumulates (spaCy's string store, caches,
fragmented heap) goes with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

log = logging.getLogger("gateway.workers")

#: What a worker sends once its initializer ran.
_READY = "ready"


class WorkerError(Exception):
    """A job raised in a worker; carries the exception's type name only."""


class WorkerDied(WorkerError):
    """The worker running a job exited or was killed before answering."""


def rss_bytes() -> int:
    """This process's resident memory now (Linux ``/proc``; elsewhere its peak, which only errs early)."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _serve(conn: Connection, initializer: Callable[[], object] | None, max_rss: int = 0) -> None:
    """A worker's whole life: initialise, say so, then run jobs one at a time until told to stop.

    Every answer is ``(ok, payload, over)``: ``over`` says that the worker's memory passed ``max_rss``
    bytes (0: never checked), so that the parent replaces it.
    """
    try:
        if initializer is not None:
            initializer()
    except BaseException as exc:  # noqa: BLE001 - reported by type to the parent, which fails closed
        conn.send((False, type(exc).__name__, False))
        return
    conn.send((True, _READY, False))
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if message is None:
            return
        fn, args = message
        try:
            result = fn(*args)
        except BaseException as exc:  # noqa: BLE001 - as above
            result, ok = type(exc).__name__, False
        else:
            ok = True
        conn.send((ok, result, max_rss > 0 and rss_bytes() > max_rss))


@dataclass(eq=False)
class _Job:
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    future: asyncio.Future[Any]


@dataclass(eq=False)
class _Worker:
    process: BaseProcess
    conn: Connection
    ready: asyncio.Future[None]
    #: Jobs answered, and how many this worker runs before it is replaced (0: no limit).
    jobs: int = 0
    job_limit: int = 0
    job: _Job | None = None
    #: The worker this one was started to replace, until this one is ready.
    replaces: _Worker | None = None
    #: A replacement is starting: this worker serves on until it is ready.
    retiring: bool = False
    #: The replacement is ready: no more jobs; the worker exits once its job in hand is answered.
    draining: bool = False


@dataclass(eq=False)
class WorkerPool:
    """``size`` spawned processes, each running ``initializer`` once, then jobs from ``submit``.

    ``max_jobs`` and ``max_rss_mib`` (0: no limit) recycle a worker (see the module's docstring).
    """

    size: int
    initializer: Callable[[], object] | None = None
    max_jobs: int = 0
    max_rss_mib: float = 0
    #: Workers replaced so far because of ``max_jobs`` or ``max_rss_mib``.
    recycled: int = 0
    _workers: list[_Worker] = field(default_factory=list)
    _queue: deque[_Job] = field(default_factory=deque)
    #: Workers told to stop, not yet reaped.
    _stopped: list[BaseProcess] = field(default_factory=list)
    _closed: bool = False

    async def start(self) -> None:
        """Start every worker and wait until each has run its initializer (raises WorkerError if one failed)."""
        for _ in range(self.size):
            self._spawn()
        try:
            await asyncio.gather(*(w.ready for w in self._workers))
        except BaseException:
            await self.close()
            raise

    def submit(self, fn: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
        """Run ``fn(*args)`` in a worker; ``fn`` and the arguments must pickle (a module-level function)."""
        if self._closed:
            raise WorkerError("closed")
        job = _Job(fn, args, asyncio.get_running_loop().create_future())
        self._queue.append(job)
        self._dispatch()
        return job.future

    def abandon(self, future: asyncio.Future[Any]) -> None:
        """Stop a job nobody waits for any more: if a worker is running it, kill that worker and start another."""
        for worker in list(self._workers):
            if worker.job is not None and worker.job.future is future:
                log.warning("a detector worker overran its time limit; restarting it")
                self._replace(worker, WorkerDied("abandoned"))
                return

    async def close(self) -> None:
        self._closed = True
        for job in self._queue:
            if not job.future.done():
                job.future.set_exception(WorkerError("closed"))
        self._queue.clear()
        workers, self._workers = self._workers, []
        for worker in workers:
            self._detach(worker, WorkerError("closed"))
            with contextlib.suppress(OSError, ValueError):
                worker.conn.send(None)
        loop = asyncio.get_running_loop()
        for worker in workers:
            await loop.run_in_executor(None, _stop, worker.process)
            worker.conn.close()
        stopped, self._stopped = self._stopped, []
        for process in stopped:
            await loop.run_in_executor(None, _stop, process)

    # --- internals ---------------------------------------------------------------------------------

    def _spawn(self, replaces: _Worker | None = None) -> _Worker:
        loop = asyncio.get_running_loop()
        self._stopped = [p for p in self._stopped if p.exitcode is None]  # reaped by ``exitcode``
        parent, child = multiprocessing.Pipe(duplex=True)
        max_rss = int(self.max_rss_mib * 1024 * 1024)
        process = multiprocessing.get_context("spawn").Process(
            target=_serve, args=(child, self.initializer, max_rss), name="pii-gateway-detector", daemon=True
        )
        process.start()
        child.close()
        limit = self.max_jobs + random.randrange(self.max_jobs // 10 + 1) if self.max_jobs > 0 else 0  # noqa: S311 - jitter
        worker = _Worker(process, parent, loop.create_future(), job_limit=limit, replaces=replaces)
        self._workers.append(worker)
        loop.add_reader(parent.fileno(), self._on_readable, worker)
        return worker

    def _on_readable(self, worker: _Worker) -> None:
        try:
            ok, payload, over = worker.conn.recv()
        except (EOFError, OSError):
            started = worker.ready.done() and worker.ready.exception() is None
            if started and not worker.draining:
                log.error("a detector worker exited (code %s); restarting it", worker.process.exitcode)
            self._replace(worker, WorkerDied("exited"), respawn=started and not worker.draining)
            return
        if not worker.ready.done():
            old, worker.replaces = worker.replaces, None
            if ok:
                worker.ready.set_result(None)
                if old is not None:
                    self._drain(old)
            else:
                # It exits next; not restarted, since a fresh one would fail the same way.
                log.error("a detector worker failed to start (%s)", payload)
                worker.ready.set_exception(WorkerError(str(payload)))
                if old is not None:  # the old worker serves on, and tries again after as many jobs
                    old.retiring, old.jobs = False, 0
            self._dispatch()
            return
        job, worker.job = worker.job, None
        worker.jobs += 1
        if job is not None and not job.future.done():
            if ok:
                job.future.set_result(payload)
            else:
                job.future.set_exception(WorkerError(str(payload)))
        if worker.draining:
            self._stop_worker(worker)
        elif not worker.retiring and (over or (worker.job_limit > 0 and worker.jobs >= worker.job_limit)):
            log.info("recycling a detector worker after %d jobs", worker.jobs)
            worker.retiring = True
            self.recycled += 1
            if not self._closed:
                self._spawn(replaces=worker)
        self._dispatch()

    def _drain(self, worker: _Worker) -> None:
        """``worker``'s replacement is ready: it takes no more jobs and stops once it has none."""
        if worker not in self._workers:
            return
        worker.draining = True
        if worker.job is None:
            self._stop_worker(worker)

    def _stop_worker(self, worker: _Worker) -> None:
        """Let an idle worker exit on its own; reaped later (``_spawn``, ``close``), never waited for here."""
        self._detach(worker, WorkerError("recycled"))
        self._workers.remove(worker)
        with contextlib.suppress(OSError, ValueError):
            worker.conn.send(None)
        worker.conn.close()
        self._stopped.append(worker.process)

    def _dispatch(self) -> None:
        if not self._workers:
            while self._queue:  # every worker failed to start: fail now rather than at the timeout
                job = self._queue.popleft()
                if not job.future.done():
                    job.future.set_exception(WorkerDied("no workers"))
            return
        for worker in self._workers:
            if not self._queue:
                return
            if worker.job is not None or worker.draining or not worker.ready.done() or worker.ready.exception():
                continue
            while self._queue:
                job = self._queue.popleft()
                if job.future.done():  # cancelled while it waited
                    continue
                worker.job = job
                try:
                    worker.conn.send((job.fn, job.args))
                except (OSError, ValueError) as exc:
                    self._replace(worker, WorkerDied(type(exc).__name__))
                    return
                break

    def _detach(self, worker: _Worker, error: WorkerError) -> None:
        with contextlib.suppress(ValueError, OSError):
            asyncio.get_running_loop().remove_reader(worker.conn.fileno())
        if not worker.ready.done():
            worker.ready.set_exception(error)
        if worker.ready.done() and not worker.ready.cancelled():
            worker.ready.exception()  # retrieved: nobody may be waiting any more
        if worker.job is not None and not worker.job.future.done():
            worker.job.future.set_exception(error)
        worker.job = None

    def _replace(self, worker: _Worker, error: WorkerError, *, respawn: bool = True) -> None:
        self._detach(worker, error)
        if worker in self._workers:
            self._workers.remove(worker)
        if worker.retiring:  # its replacement is already starting
            respawn = False
        for other in self._workers:  # a replacement that dies before it is ready stands in for nobody
            if other.replaces is worker:
                other.replaces = None
        if worker.replaces is not None:  # the worker it was to replace serves on
            worker.replaces.retiring, worker.replaces.jobs = False, 0
            worker.replaces = None
        if worker.process.is_alive():
            worker.process.kill()
        worker.process.join(timeout=0)  # reaped later by multiprocessing if it has not exited yet
        worker.conn.close()
        if respawn and not self._closed:
            self._spawn()
        self._dispatch()


def _stop(process: BaseProcess) -> None:
    process.join(timeout=5)
    if process.is_alive():
        process.kill()
        process.join(timeout=5)
