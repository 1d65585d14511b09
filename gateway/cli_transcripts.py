"""The operator's transcript and master-key sub-commands: list/show/export/purge/forget, keys rotate/master.

They never load the detector (so they start fast), print for people, and never create anything they
are meant to read: a missing master key or store is an error, not a fresh empty one.

Exit codes: 0 done; 1 a record could not be read (``show``, ``export``); 2 a usage, key or store
error; 3 ``forget`` destroyed the tenant's data key but could not retire the master keys itself, so
backups made before it still decrypt until the operator finishes the procedure it prints.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import secrets
import sys
import time
from argparse import Namespace
from collections.abc import AsyncIterator, Awaitable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from .crypto import CryptoError, LocalKeyProvider, key_id_of, parse_keys, write_key_file
from .envelope import DataKeys, key_provider_for, store_for
from .keys import parse_duration
from .settings import Settings
from .spool import Spool
from .store import Query, StoreUnavailable, TranscriptRow, TranscriptStore
from .transcripts import Draft, TranscriptReader

#: ``forget``'s exit code when the data key is destroyed but backups are not shredded yet.
BACKUPS_NOT_SHREDDED = 3


def _provider(settings: Settings) -> LocalKeyProvider:
    return key_provider_for(settings, create=False)


async def _open(settings: Settings) -> tuple[TranscriptStore, DataKeys]:
    """The store (opened) and the data keys. Never creates a key or a store."""
    keys = DataKeys(store_for(settings, create=False), _provider(settings))
    await keys.store.open()
    return keys.store, keys


async def _guarded(run: Awaitable[int]) -> int:
    """A store that cannot be opened or read is a clear message and exit 2, not a traceback."""
    try:
        return await run
    except StoreUnavailable as exc:
        print(f"pii-gateway: the transcript store is unavailable: {exc}", file=sys.stderr)
        return 2


@contextlib.asynccontextmanager
async def _key_file_lock(path: Path) -> AsyncIterator[None]:
    """One rotation of a key file at a time (``forget`` and ``keys rotate --generate`` on one host)."""
    fd = os.open(path.with_name(path.name + ".lock"), os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        await asyncio.to_thread(fcntl.flock, fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def parse_time(text: str | None) -> float | None:
    """``24h``/``30d`` (ago) or an ISO 8601 time."""
    if text is None:
        return None
    try:
        return time.time() - parse_duration(text)
    except ValueError:
        pass
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def _query(args: Namespace, limit: int) -> Query:
    return Query(
        since=parse_time(args.since), until=parse_time(args.until), tenant=args.tenant, model=args.model,
        status=args.status, limit=limit,
    )  # fmt: skip


def _meta(row: TranscriptRow) -> dict[str, Any]:
    return {k: v for k, v in row.__dict__.items() if k != "content"} | {"has_content": row.content is not None}


async def transcripts_list(settings: Settings, args: Namespace) -> int:
    return await _guarded(_list(settings, args))


async def _list(settings: Settings, args: Namespace) -> int:
    store = store_for(settings, create=False)  # metadata only: no master key needed
    await store.open()
    try:
        rows = await store.query(replace(_query(args, args.limit), newest_first=True))
    finally:
        await store.close()
    print(f"{'id':<28} {'time (UTC)':<20} {'tenant':<12} {'model':<16} {'status':<6} {'policy':<10} entities")
    for r in rows:
        when = datetime.fromtimestamp(r.created, UTC).strftime("%Y-%m-%d %H:%M:%S")
        entities = ",".join(f"{k}:{v}" for k, v in sorted(r.entity_counts.items()))
        model, policy = r.model or "-", r.policy or "-"
        print(f"{r.id:<28} {when:<20} {r.tenant:<12} {model:<16} {r.status:<6} {policy:<10} {entities}")
    return 0


async def transcripts_show(settings: Settings, transcript_id: str) -> int:
    return await _guarded(_show(settings, transcript_id))


async def _show(settings: Settings, transcript_id: str) -> int:
    store, keys = await _open(settings)
    try:
        row = await store.get(transcript_id)
        if row is None:
            print(f"no transcript {transcript_id}", file=sys.stderr)
            return 1
        try:
            content = await TranscriptReader(keys).content(row)
        except CryptoError as exc:
            print(f"{transcript_id}: cannot decrypt: {exc}", file=sys.stderr)
            return 1
    finally:
        await store.close()
    print(json.dumps(_meta(row) | {"content": content}, indent=2, ensure_ascii=False))
    return 0


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class ExportProgress:
    """Export progress on stderr: a bar redrawn in place on a terminal, or plain lines at most every
    ``interval`` seconds (the first page always) when asked for with ``--progress`` off a terminal."""

    def __init__(self, total: int, out: TextIO, *, tty: bool, lines: bool, interval: float = 1.0) -> None:
        self.total = total
        self.out = out
        self.tty = tty
        self.lines = lines and not tty
        self.interval = interval
        self.started = time.monotonic()
        self._last: float | None = None

    def figures(self, done: int) -> tuple[float, float, float | None]:
        """(percent, rows per second, seconds left or None)."""
        elapsed = max(time.monotonic() - self.started, 1e-6)
        rate = done / elapsed
        percent = 100.0 * done / self.total if self.total else 100.0
        left = (self.total - done) / rate if rate > 0 and self.total >= done else None
        return percent, rate, left

    def bar(self, done: int, width: int = 30) -> str:
        percent, rate, left = self.figures(done)
        filled = min(width, int(width * percent / 100))
        eta = _clock(left) if left is not None else "?"
        return f"[{'#' * filled}{'-' * (width - filled)}] {percent:5.1f}% {done}/{self.total} {rate:.0f}/s ETA {eta}"

    def line(self, done: int) -> str:
        percent, rate, left = self.figures(done)
        eta = _clock(left) if left is not None else "?"
        return f"exported {done}/{self.total} transcripts ({percent:.0f}%, {rate:.0f}/s, ETA {eta})"

    def update(self, done: int) -> None:
        now = time.monotonic()
        if self.tty:
            if self._last is None or now - self._last >= 0.1:
                self._last = now
                print("\r" + self.bar(done), end="", file=self.out, flush=True)
        elif self.lines and (self._last is None or now - self._last >= self.interval):
            self._last = now
            print(self.line(done), file=self.out, flush=True)

    def finish(self, done: int, failed: int) -> None:
        if self.tty:
            print("\r" + self.bar(done), file=self.out)
        print(f"exported {done} transcripts; {failed} could not be decrypted", file=self.out)


async def transcripts_export(settings: Settings, args: Namespace) -> int:
    return await _guarded(_export(settings, args))


async def _export(settings: Settings, args: Namespace) -> int:
    store, keys = await _open(settings)
    reader = TranscriptReader(keys)
    exported = failed = 0
    try:
        query = _query(args, 500)
        progress = ExportProgress(
            await store.count(query), sys.stderr, tty=sys.stderr.isatty(), lines=bool(args.progress)
        )
        # A command-line tool writing its own output file: blocking writes are fine here.
        out = open(args.out, "w", encoding="utf-8") if args.out else sys.stdout  # noqa: SIM115, ASYNC230
        try:
            while True:
                rows = await store.query(query)
                if not rows:
                    break
                for row in rows:
                    try:
                        content: Any = await reader.content(row)
                    except CryptoError as exc:
                        content, failed = {"error": str(exc)}, failed + 1
                    out.write(json.dumps(_meta(row) | {"content": content}, ensure_ascii=False) + "\n")
                    exported += 1
                    progress.update(exported)
                query = replace(query, after=(rows[-1].created, rows[-1].id))
        finally:
            if out is not sys.stdout:
                out.close()
    finally:
        await store.close()
    progress.finish(exported, failed)
    return 1 if failed else 0


async def transcripts_purge(settings: Settings, older_than: str) -> int:
    return await _guarded(_purge(settings, older_than))


async def _purge(settings: Settings, older_than: str) -> int:
    store = store_for(settings, create=False)  # rows only: no master key needed
    await store.open()
    try:
        purged = await store.purge(time.time() - parse_duration(older_than))
    finally:
        await store.close()
    print(f"purged {purged} transcripts older than {older_than}")
    return 0


async def transcripts_forget(settings: Settings, tenant: str, keep_rows: bool, *, grace_seconds: float = 2.0) -> int:
    """Crypto-shred a tenant (see docs/transcripts.md, "Forgetting a tenant").

    1. Destroy the tenant's data key (its id is remembered as destroyed), delete its rows unless
       ``keep_rows``, and drop its transcripts from this data dir's spool.
    2. Backups of the store still hold the tenant's data key wrapped by the master key(s) of their
       time. So every master key version in use is retired: with a key file (the dev key or
       ``--master-key-file``), a new master key is written first, every other tenant's data key and
       the spool key are re-wrapped under it, and the old versions are removed from the file. A
       running gateway that reads the file follows by itself. Data keys that a gateway wrapped with an
       old version meanwhile are re-wrapped once more after ``grace_seconds``.
    3. With keys from ``PII_GATEWAY_MASTER_KEY`` (or a key file this command cannot write), step 2 is
       the operator's: it prints the procedure and exits 3, and never claims backups are shredded.
    """
    return await _guarded(_forget(settings, tenant, keep_rows, grace_seconds))


async def _forget(settings: Settings, tenant: str, keep_rows: bool, grace_seconds: float) -> int:
    provider = _provider(settings)
    path = provider.source
    store = store_for(settings, create=False)
    await store.open()
    try:
        async with _key_file_lock(path) if path is not None else contextlib.nullcontext():
            # Under the lock, the file as it is now (another forget may just have rotated it), held in
            # this process's memory only: the old keys must outlive their removal from the file.
            old = parse_keys(path.read_text(encoding="utf-8"), str(path)) if path is not None else []
            held = LocalKeyProvider(old) if old else provider
            keys = DataKeys(store, held)
            destroyed = await keys.destroy(tenant)
            deleted = 0 if keep_rows else await store.delete_tenant(tenant)
            spool = Spool(settings.data_dir / "spool", held)
            dropped = await asyncio.to_thread(spool.rewrite, lambda p: Draft.from_bytes(p).row.tenant != tenant)
            print(
                f"tenant {tenant}: data key {'destroyed' if destroyed else 'was already gone'}; "
                f"{deleted} rows deleted; {dropped} spooled transcripts dropped"
            )
            wrapping = set(await keys.wrapped_by())
            in_use = sorted(wrapping | set(held.key_ids()))
            if path is None:
                return _shred_by_hand(in_use, "they come from PII_GATEWAY_MASTER_KEY, which this command cannot change")
            foreign = sorted(wrapping - set(held.key_ids()))
            if foreign:
                return _shred_by_hand(in_use, f"data keys are wrapped by {', '.join(foreign)}, which {path} lacks")
            try:
                new_id, done = await _retire_all(store, spool, path, old, grace_seconds)
            except OSError as exc:
                return _shred_by_hand(in_use, f"{path} cannot be rewritten ({exc.strerror})")
    finally:
        await store.close()
    print(
        f"master keys: {new_id} is now the only key in {path}; retired {', '.join(key_id_of(k) for k in old)} "
        f"({done} data keys and the spool key re-wrapped under {new_id})."
    )
    print(
        "Backups of the store made before now can no longer be decrypted, for this tenant or any other, as long "
        f"as no copy of a retired key survives: destroy every copy of {path} made before now (backups included). "
        "Gateways reading this file follow by themselves; one given a copy of it needs the new file and a restart."
    )
    if path.parent.resolve() == settings.data_dir.resolve():
        print(
            "DEV MODE: the master key sits in the data dir, so a backup of the whole data dir carries the key of "
            "its time and still decrypts; only backups of the store alone are shredded."
        )
    return 0


async def _retire_all(
    store: TranscriptStore, spool: Spool, path: Path, old: list[bytes], grace_seconds: float
) -> tuple[str, int]:
    """New master key first, re-wrap everything under it, remove the old ones from the file, then
    re-wrap stragglers (wrapped by a gateway that had not seen the new file yet) with the old keys this
    process still holds. Returns (new key id, data keys re-wrapped)."""
    new = secrets.token_bytes(32)
    both = LocalKeyProvider([new, *old])  # no source: never re-read, so the old keys stay usable here
    keys, spool.provider = DataKeys(store, both), both
    write_key_file(path, [new, *old])
    done, _ = await keys.rewrap_all()
    await asyncio.to_thread(spool.rewrap_key)
    write_key_file(path, [new])
    for wait in (0.0, grace_seconds):
        await asyncio.sleep(wait)
        late, _ = await keys.rewrap_all()
        done += late
        await asyncio.to_thread(spool.rewrap_key)
    return both.current_id, done


def _shred_by_hand(in_use: list[str], why: str) -> int:
    versions = ", ".join(in_use)
    print(
        f"WARNING: backups made before now still decrypt this tenant's transcripts: the master key versions in use "
        f"({versions}) cannot be retired here, because {why}. To finish the crypto-shredding:\n"
        '  1. create a new master key: python -c "import os,base64;print(base64.b64encode(os.urandom(32)).decode())"\n'
        "  2. give every gateway PII_GATEWAY_MASTER_KEY=<new>,<the current list> (or that key file) and restart them\n"
        "  3. run `pii-gateway keys rotate` once with that list: every data key is re-wrapped under <new>\n"
        f"  4. check `pii-gateway keys master` shows 0 data keys for {versions}; then set the list to <new> alone,\n"
        f"     restart the gateways, and destroy every copy of {versions} (secret stores and their backups included)",
        file=sys.stderr,
    )
    return BACKUPS_NOT_SHREDDED


async def master_rotate(settings: Settings, generate: bool) -> int:
    return await _guarded(_rotate(settings, generate))


async def _rotate(settings: Settings, generate: bool) -> int:
    provider = _provider(settings)
    if generate:
        path = provider.source
        if path is None:
            print(
                "master keys come from PII_GATEWAY_MASTER_KEY: put the new key first there, then rotate",
                file=sys.stderr,
            )
            return 2
        async with _key_file_lock(path):
            new = secrets.token_bytes(32)
            # The data keys are re-wrapped right after: the new key file must be on disk first.
            write_key_file(path, [new, *parse_keys(path.read_text(encoding="utf-8"), str(path))])
        print(f"new master key {key_id_of(new)} written first in {path}; older keys kept")
        provider = _provider(settings)
    store = store_for(settings, create=False)
    await store.open()
    keys = DataKeys(store, provider)
    try:
        done, already = await keys.rewrap_all()
        counts = await keys.wrapped_by()
    finally:
        await store.close()
    spool = Spool(settings.data_dir / "spool", provider)
    spool_rewrapped = await asyncio.to_thread(spool.rewrap_key)
    print(f"re-wrapped {done} data keys under {provider.current_id} ({already} already were)")
    if spool_rewrapped:
        print(f"re-wrapped the spool key of {spool.directory}")
    for kid, n in sorted(counts.items()):
        print(f"  {kid}: {n} data keys")
    print("A master key that wraps no data key can be retired: remove it from the key list.")
    return 0


async def master_status(settings: Settings) -> int:
    return await _guarded(_status(settings))


async def _status(settings: Settings) -> int:
    store, keys = await _open(settings)
    try:
        counts = await keys.wrapped_by()
    finally:
        await store.close()
    provider = keys.provider
    for kid in provider.key_ids():
        mark = " (current)" if kid == provider.current_id else ""
        print(f"{kid}{mark}: wraps {counts.get(kid, 0)} data keys")
    spool_master = Spool(settings.data_dir / "spool", provider).key_master_id
    if spool_master is not None:
        print(f"spool key of {settings.data_dir / 'spool'}: wrapped by {spool_master}")
    for kid in sorted(set(counts) - set(provider.key_ids())):
        print(f"{kid} (not in the key list): wraps {counts[kid]} data keys")
    return 0
