"""TranscriptRecorder: every exchange -> serialize -> encrypt -> store, off the request path.

``record(exchange)`` never waits: it puts a draft on a bounded queue and returns. One writer task
seals drafts with the tenant's data key and writes them in batches. When the store is slow or down:

- ``buffer``: a batch the store refuses, or a draft that finds the queue full, is spilled to the
  encrypted spool (spool.py) and replayed when the store is back. Spool files are written by the
  spool's own thread (:class:`SpoolWriter`), in order, so no fsync runs on the event loop;
- ``fail_closed``: the writer keeps retrying the batch, and while the queue is full or the store is
  down, ``accepting`` is False and the pipeline refuses new requests with 503.

A store that cannot be opened at start does not stop the gateway: ``start`` returns, the store is
retried in the background, and meanwhile the mode applies as for a store that went down (``buffer``
spools, ``fail_closed`` refuses).

Either way no transcript is silently lost: a shutdown drains the queue, and what still cannot be
written goes to the spool; a spool write that fails is logged and counted (``lost``). What is kept
follows the policy: ``original`` (all four sides),
``redacted`` (what the upstream received and sent), or ``none`` (metadata only).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from .crypto import CryptoError, Sealed, associated_data, open_sealed, seal
from .envelope import DataKeys
from .exchange import Exchange
from .metrics import Metrics
from .settings import TranscriptSettings
from .spool import Spool, SpoolWriter
from .store import SCHEMA_VERSION, StoreUnavailable, TranscriptRow, TranscriptStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Draft:
    row: TranscriptRow
    content: dict[str, Any] | None

    def to_bytes(self) -> bytes:
        row = self.row.__dict__ | {"content": None}
        return orjson.dumps({"row": row, "content": self.content})

    @classmethod
    def from_bytes(cls, data: bytes) -> Draft:
        loaded = orjson.loads(data)
        return cls(TranscriptRow(**loaded["row"]), loaded["content"])


def draft_of(exchange: Exchange) -> Draft:
    counts: Counter[str] = Counter()
    for (entity_type, _action), n in exchange.entity_counts.items():
        counts[entity_type] += n
    row = TranscriptRow(
        id=exchange.request_id,
        created=exchange.started_wall,
        tenant=exchange.tenant,
        route=exchange.route,
        status=exchange.status or 0,
        outcome=exchange.outcome,
        model=exchange.model,
        policy=exchange.policy,
        stream=exchange.stream,
        input_tokens=exchange.input_tokens,
        output_tokens=exchange.output_tokens,
        entity_counts=dict(counts),
        duration_ms=round(exchange.duration_seconds * 1000, 3) if exchange.duration_seconds is not None else None,
        detect_ms=round(exchange.detect_seconds * 1000, 3) if exchange.detect_seconds is not None else None,
    )
    return Draft(row, exchange.capture.content())


class TranscriptRecorder:
    def __init__(
        self,
        store: TranscriptStore,
        keys: DataKeys,
        spool: Spool,
        settings: TranscriptSettings,
        metrics: Metrics,
        *,
        retention_interval: float = 3600.0,
        replay_interval: float = 2.0,
    ) -> None:
        self.store = store
        self.keys = keys
        self.spool = spool
        self.settings = settings
        self.metrics = metrics
        self.retention_interval = retention_interval
        self.replay_interval = replay_interval
        self._queue: asyncio.Queue[Draft] = asyncio.Queue(settings.queue_size)
        self._spool_writer = SpoolWriter(spool, self._spooled)
        self._store_down = False
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False

    @property
    def accepting(self) -> bool:
        """False only in fail_closed mode while transcripts cannot be written: refuse new requests."""
        if self.settings.on_store_failure == "buffer":
            return True
        return not self._queue.full() and not self._store_down

    @property
    def store_reachable(self) -> bool:
        """False while the store could not be opened or its last write failed (for readiness)."""
        return not self._store_down

    @property
    def depth(self) -> int:
        return self._queue.qsize()

    async def start(self) -> None:
        """Start the writer, replay and retention tasks. Never fails because the store is down: it is
        then opened in the background (see the module docstring)."""
        await asyncio.to_thread(self.spool.recover)
        try:
            await self.store.open()
        except (StoreUnavailable, OSError) as exc:
            self._store_down = True
            log.warning(
                "the transcript store cannot be opened; retrying in the background",
                extra={"error": str(exc) if isinstance(exc, StoreUnavailable) else type(exc).__name__},
            )
            self._tasks.append(asyncio.create_task(self._reopen(), name="transcript-store-open"))
        self._tasks += [
            asyncio.create_task(self._writer(), name="transcript-writer"),
            asyncio.create_task(self._replayer(), name="transcript-replay"),
        ]
        if self.settings.retention_days > 0:
            self._tasks.append(asyncio.create_task(self._retention(), name="transcript-retention"))

    async def _reopen(self) -> None:
        backoff = 0.1
        while True:
            await asyncio.sleep(backoff)
            try:
                await self.store.open()
            except (StoreUnavailable, OSError):
                backoff = min(backoff * 2, 5.0)
                continue
            self._store_down = False
            log.info("the transcript store is open")
            await self.replay_spool()
            return

    def record(self, exchange: Exchange) -> None:
        """Queue the exchange's transcript. Never blocks, never raises into the request path."""
        draft = draft_of(exchange)
        try:
            self._queue.put_nowait(draft)
        except asyncio.QueueFull:
            self.metrics.transcript_write_failures.inc()
            self._spill([draft])
        self.metrics.transcript_queue_depth.set(self._queue.qsize())

    async def close(self, drain_seconds: float = 10.0) -> None:
        """Drain: write what is queued (up to ``drain_seconds``), spool the rest, stop the tasks."""
        self._closing = True  # from now on a failed batch is spooled at once instead of retried
        await self.flush(drain_seconds)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        leftover = []
        while not self._queue.empty():
            leftover.append(self._queue.get_nowait())
        if leftover:
            self._spill(leftover)
        await self._spool_writer.close()  # every spill is on disk (or reported lost) before we return
        await self.store.close()

    async def flush(self, wait_seconds: float = 10.0) -> None:
        """Wait until everything queued so far is written or spooled (tests, shutdown)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait_seconds):
                await self._queue.join()
                await self._spool_writer.drain()

    async def seal(self, draft: Draft) -> TranscriptRow:
        if draft.content is None:
            return draft.row
        key_id, key = await self.keys.current(draft.row.tenant)
        aad = associated_data(draft.row.tenant, draft.row.id, SCHEMA_VERSION)
        sealed = seal(key, key_id, orjson.dumps(draft.content), aad)
        return TranscriptRow(**(draft.row.__dict__ | {"content": sealed}))

    async def _writer(self) -> None:
        backoff = 0.05
        while True:
            batch = [await self._queue.get()]
            while len(batch) < 200 and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            while True:
                try:
                    rows = await self._seal_batch(batch)
                    written = len(rows)
                    if rows:
                        await self.store.write(rows)
                except asyncio.CancelledError:
                    self._spill(batch)  # cancelled mid-write at shutdown: keep the batch in the spool
                    raise
                except (StoreUnavailable, OSError) as exc:
                    self._store_down = True
                    self.metrics.transcript_write_failures.inc()
                    log.warning("transcript store write failed", extra={"error": type(exc).__name__})
                    if self.settings.on_store_failure == "buffer" or self._closing:
                        self._spill(batch)
                        break
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 5.0)
                    continue
                self._store_down = False
                backoff = 0.05
                self.metrics.transcript_writes.labels("store").inc(written)
                break
            for _ in batch:
                self._queue.task_done()
            self.metrics.transcript_queue_depth.set(self._queue.qsize())

    async def _seal_batch(self, batch: list[Draft]) -> list[TranscriptRow]:
        """Seal a batch. A draft that cannot be sealed (its master key is missing here) is spooled,
        never dropped, and never stops the writer for everyone else."""
        for tenant in {d.row.tenant for d in batch if d.content is not None}:
            with contextlib.suppress(CryptoError):  # reported per draft below
                await self.keys.current(tenant, fresh=True)
        rows = []
        for draft in batch:
            try:
                rows.append(await self.seal(draft))
            except CryptoError as exc:
                log.error("a transcript cannot be sealed here; it is spooled", extra={"error": str(exc)})
                self.metrics.transcript_write_failures.inc()
                self._spill([draft])
        return rows

    def _spill(self, drafts: list[Draft]) -> None:
        """Hand drafts to the spool's thread; never waits for the disk (see SpoolWriter)."""
        self._spool_writer.submit([d.to_bytes() for d in drafts])

    def _spooled(self, count: int, error: BaseException | None) -> None:
        """SpoolWriter's report, on its thread (prometheus counters and logging are thread-safe)."""
        if error is None:
            self.metrics.transcript_writes.labels("spooled").inc(count)
            return
        # The last line of defence failed too: say so loudly, with counts only.
        log.error("transcripts could not be spooled", extra={"count": count, "error": type(error).__name__})
        self.metrics.transcript_writes.labels("lost").inc(count)

    async def _replayer(self) -> None:
        while True:
            await asyncio.sleep(self.replay_interval)
            try:
                # After ``forget`` or ``keys rotate`` retired the master key wrapping the spool key.
                await asyncio.to_thread(self.spool.rewrap_key)
            except (CryptoError, OSError) as exc:
                log.error("the spool key cannot be re-wrapped", extra={"error": str(exc)})
            await self.replay_spool()

    async def replay_spool(self) -> int:
        """Move spooled transcripts into the store; a file is deleted only once all of it is written."""
        moved = 0
        for path in self.spool.files():
            try:
                drafts = await asyncio.to_thread(self._read_spooled, path)
                for start in range(0, len(drafts), 200):
                    chunk = drafts[start : start + 200]
                    await self.store.write([await self.seal(d) for d in chunk])
            except (StoreUnavailable, OSError):
                return moved
            except CryptoError as exc:
                log.error("a spool file cannot be decrypted; it is kept", extra={"file": path.name, "error": str(exc)})
                continue
            path.unlink()
            moved += len(drafts)
            self.metrics.transcript_writes.labels("replayed").inc(len(drafts))
        return moved

    def _read_spooled(self, path: Path) -> list[Draft]:
        return [Draft.from_bytes(p) for p in self.spool.read(path)]

    async def _retention(self) -> None:
        while True:
            cutoff = time.time() - self.settings.retention_days * 86400
            try:
                purged = await self.store.purge(cutoff)
                if purged:
                    log.info("retention purge", extra={"purged": purged})
            except StoreUnavailable:
                pass
            await asyncio.sleep(self.retention_interval)


class TranscriptReader:
    """Decrypts stored transcripts for the operator's command line."""

    def __init__(self, keys: DataKeys) -> None:
        self.keys = keys

    async def content(self, row: TranscriptRow) -> dict[str, Any] | None:
        if row.content is None:
            return None
        sealed = Sealed.from_bytes(row.content)
        key = await self.keys.for_record(row.tenant, sealed.key_id)
        plain = open_sealed(key, sealed, associated_data(row.tenant, row.id, row.schema_version))
        content: dict[str, Any] = orjson.loads(plain)
        return content
