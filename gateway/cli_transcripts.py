"""The operator's transcript and master-key sub-commands: list/show/export/purge/forget, keys rotate/master.

They need the master key, never load the detector (so they start fast), and print for people.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import sys
import time
from argparse import Namespace
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .crypto import CryptoError, key_id_of
from .envelope import DataKeys, data_keys_for
from .keys import parse_duration
from .settings import Settings
from .spool import fsync_dir
from .store import Query, TranscriptRow, TranscriptStore
from .transcripts import TranscriptReader


def _key_file(settings: Settings) -> Path | None:
    if settings.master_key is not None:
        return None
    return settings.master_key_file or settings.data_dir / "master.key"


async def _open(settings: Settings) -> tuple[TranscriptStore, DataKeys]:
    keys = data_keys_for(settings)
    await keys.store.open()
    return keys.store, keys


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
    store, _ = await _open(settings)
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


async def transcripts_export(settings: Settings, args: Namespace) -> int:
    store, keys = await _open(settings)
    reader = TranscriptReader(keys)
    # A command-line tool writing its own output file: blocking writes are fine here.
    out = open(args.out, "w", encoding="utf-8") if args.out else sys.stdout  # noqa: SIM115, ASYNC230
    exported = failed = 0
    started = time.monotonic()
    try:
        query = _query(args, 500)
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
            query = replace(query, after=(rows[-1].created, rows[-1].id))
            if sys.stderr.isatty() or args.progress:
                rate = exported / max(time.monotonic() - started, 1e-6)
                print(f"\rexported {exported} transcripts ({rate:.0f}/s)", end="", file=sys.stderr, flush=True)
    finally:
        if out is not sys.stdout:
            out.close()
        await store.close()
    print(f"\rexported {exported} transcripts; {failed} could not be decrypted", file=sys.stderr)
    return 1 if failed else 0


async def transcripts_purge(settings: Settings, older_than: str) -> int:
    store, _ = await _open(settings)
    try:
        purged = await store.purge(time.time() - parse_duration(older_than))
    finally:
        await store.close()
    print(f"purged {purged} transcripts older than {older_than}")
    return 0


async def transcripts_forget(settings: Settings, tenant: str, keep_rows: bool) -> int:
    store, keys = await _open(settings)
    try:
        destroyed = await keys.destroy(tenant)
        deleted = 0 if keep_rows else await store.delete_tenant(tenant)
    finally:
        await store.close()
    print(
        f"tenant {tenant}: data key {'destroyed' if destroyed else 'was already gone'}; "
        f"its transcripts, backups included, can no longer be decrypted; {deleted} rows deleted"
    )
    return 0


async def master_rotate(settings: Settings, generate: bool) -> int:
    if generate:
        path = _key_file(settings)
        if path is None:
            print(
                "master keys come from PII_GATEWAY_MASTER_KEY: put the new key first there, then rotate",
                file=sys.stderr,
            )
            return 2
        new = base64.b64encode(secrets.token_bytes(32)).decode()
        old = path.read_text(encoding="utf-8") if path.exists() else ""
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(new + "\n" + old)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        # The data keys are re-wrapped right after: the new key file must be on disk first.
        fsync_dir(path.parent)
        print(f"new master key {key_id_of(base64.b64decode(new))} written first in {path}; older keys kept")
    store, keys = await _open(settings)
    try:
        done, already = await keys.rewrap_all()
        counts = await keys.wrapped_by()
    finally:
        await store.close()
    print(f"re-wrapped {done} data keys under {keys.provider.current_id} ({already} already were)")
    for kid, n in sorted(counts.items()):
        print(f"  {kid}: {n} data keys")
    print("A master key that wraps no data key can be retired: remove it from the key list.")
    return 0


async def master_status(settings: Settings) -> int:
    store, keys = await _open(settings)
    try:
        counts = await keys.wrapped_by()
    finally:
        await store.close()
    for kid in keys.provider.key_ids():
        mark = " (current)" if kid == keys.provider.current_id else ""
        print(f"{kid}{mark}: wraps {counts.get(kid, 0)} data keys")
    return 0
