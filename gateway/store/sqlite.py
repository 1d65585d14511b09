"""SqliteStore: the embedded default, one file in the data dir, in WAL mode with full fsync.

A transaction that returned is on disk: ``kill -9`` afterwards loses nothing, and a transaction cut
short leaves nothing half-written. All calls run on one dedicated thread that owns the connection.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import sqlite3
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import orjson

from . import COLUMNS, DataKeyRow, Query, StoreUnavailable, TranscriptRow, where

T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS transcripts (
    id TEXT PRIMARY KEY,
    created REAL NOT NULL,
    tenant TEXT NOT NULL,
    route TEXT NOT NULL,
    status INTEGER NOT NULL,
    outcome TEXT NOT NULL,
    model TEXT,
    policy TEXT,
    stream INTEGER NOT NULL,
    input_tokens INTEGER,
    output_tokens INTEGER,
    entity_counts TEXT NOT NULL,
    duration_ms REAL,
    detect_ms REAL,
    schema_version INTEGER NOT NULL,
    content BLOB
);
CREATE INDEX IF NOT EXISTS transcripts_created ON transcripts (created, id);
CREATE INDEX IF NOT EXISTS transcripts_tenant ON transcripts (tenant, created);
CREATE TABLE IF NOT EXISTS data_keys (
    tenant TEXT PRIMARY KEY,
    key_id TEXT NOT NULL,
    wrapped BLOB NOT NULL,
    master_key_id TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS destroyed_data_keys (
    key_id TEXT PRIMARY KEY,
    destroyed REAL NOT NULL
);
"""


def row_values(r: TranscriptRow) -> tuple[Any, ...]:
    return (
        r.id, r.created, r.tenant, r.route, r.status, r.outcome, r.model, r.policy, int(r.stream),
        r.input_tokens, r.output_tokens, orjson.dumps(r.entity_counts).decode(), r.duration_ms, r.detect_ms,
        r.schema_version, r.content,
    )  # fmt: skip


def to_row(v: Sequence[Any]) -> TranscriptRow:
    return TranscriptRow(
        id=v[0], created=v[1], tenant=v[2], route=v[3], status=v[4], outcome=v[5], model=v[6], policy=v[7],
        stream=bool(v[8]), input_tokens=v[9], output_tokens=v[10], entity_counts=orjson.loads(v[11]),
        duration_ms=v[12], detect_ms=v[13], schema_version=v[14], content=bytes(v[15]) if v[15] is not None else None,
    )  # fmt: skip


class SqliteStore:
    def __init__(self, path: Path, *, create: bool = True) -> None:
        self.path = path
        self.create = create
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None

    async def _call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        def run() -> T:
            if self._conn is None:
                raise StoreUnavailable("the SQLite store is closed")
            try:
                return fn(self._conn)
            except sqlite3.Error as exc:
                raise StoreUnavailable(f"SQLite: {type(exc).__name__}") from exc

        if self._executor is None:
            raise StoreUnavailable("the SQLite store is closed")
        return await asyncio.get_running_loop().run_in_executor(self._executor, run)

    async def open(self) -> None:
        if self._executor is not None:
            return
        executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="sqlite")

        def connect() -> sqlite3.Connection:
            if not self.create and not self.path.is_file():
                raise StoreUnavailable(f"no transcript store at {self.path} (this command never creates one)")
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fresh = not self.path.exists()
            conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
            try:
                if fresh:
                    os.chmod(self.path, 0o600)
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=FULL")
                conn.execute("PRAGMA secure_delete=ON")  # purged rows are overwritten, not left in free pages
                conn.executescript(SCHEMA)
            except BaseException:
                conn.close()
                raise
            return conn

        try:
            conn = await asyncio.get_running_loop().run_in_executor(executor, connect)
        except (sqlite3.Error, OSError) as exc:
            executor.shutdown(wait=False)
            raise StoreUnavailable(f"SQLite: the store cannot be opened ({type(exc).__name__})") from exc
        except BaseException:
            executor.shutdown(wait=False)
            raise
        self._conn, self._executor = conn, executor

    async def close(self) -> None:
        executor, self._executor = self._executor, None
        if executor is None:
            return

        def close() -> None:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

        await asyncio.get_running_loop().run_in_executor(executor, close)
        executor.shutdown(wait=True)

    async def write(self, rows: Sequence[TranscriptRow]) -> None:
        values = [row_values(r) for r in rows]

        def write(conn: sqlite3.Connection) -> None:
            with conn:
                conn.execute("BEGIN IMMEDIATE")
                conn.executemany(
                    f"INSERT INTO transcripts ({COLUMNS}) VALUES ({', '.join('?' * 16)}) ON CONFLICT(id) DO NOTHING",
                    values,
                )

        await self._call(write)

    async def get(self, transcript_id: str) -> TranscriptRow | None:
        def get(conn: sqlite3.Connection) -> TranscriptRow | None:
            found = conn.execute(f"SELECT {COLUMNS} FROM transcripts WHERE id = ?", (transcript_id,)).fetchone()
            return to_row(found) if found else None

        return await self._call(get)

    async def query(self, query: Query) -> list[TranscriptRow]:
        clause, params = where(query, lambda _: "?")

        def run(conn: sqlite3.Connection) -> list[TranscriptRow]:
            sql = f"SELECT {COLUMNS} FROM transcripts{clause} ORDER BY {query.order} LIMIT ?"
            return [to_row(r) for r in conn.execute(sql, [*params, query.limit]).fetchall()]

        return await self._call(run)

    async def count(self, query: Query) -> int:
        clause, params = where(query, lambda _: "?")

        def run(conn: sqlite3.Connection) -> int:
            return int(conn.execute(f"SELECT count(*) FROM transcripts{clause}", params).fetchone()[0])

        return await self._call(run)

    async def purge(self, older_than: float) -> int:
        def purge(conn: sqlite3.Connection) -> int:
            with conn:
                return conn.execute("DELETE FROM transcripts WHERE created < ?", (older_than,)).rowcount

        return await self._call(purge)

    async def delete_tenant(self, tenant: str) -> int:
        def delete(conn: sqlite3.Connection) -> int:
            with conn:
                return conn.execute("DELETE FROM transcripts WHERE tenant = ?", (tenant,)).rowcount

        return await self._call(delete)

    async def get_data_key(self, tenant: str) -> DataKeyRow | None:
        def get(conn: sqlite3.Connection) -> DataKeyRow | None:
            found = conn.execute(
                "SELECT tenant, key_id, wrapped, master_key_id, created FROM data_keys WHERE tenant = ?", (tenant,)
            ).fetchone()
            return DataKeyRow(found[0], found[1], bytes(found[2]), found[3], found[4]) if found else None

        return await self._call(get)

    async def insert_data_key(self, row: DataKeyRow) -> DataKeyRow:
        def insert(conn: sqlite3.Connection) -> None:
            with conn:
                conn.execute(
                    "INSERT INTO data_keys (tenant, key_id, wrapped, master_key_id, created) VALUES (?, ?, ?, ?, ?) "
                    "ON CONFLICT(tenant) DO NOTHING",
                    (row.tenant, row.key_id, row.wrapped, row.master_key_id, row.created),
                )

        await self._call(insert)
        found = await self.get_data_key(row.tenant)
        if found is None:
            raise StoreUnavailable("a data key vanished right after it was written")
        return found

    async def destroy_data_key(self, tenant: str) -> bool:
        def destroy(conn: sqlite3.Connection) -> bool:
            with conn:
                conn.execute("BEGIN IMMEDIATE")
                found = conn.execute("SELECT key_id FROM data_keys WHERE tenant = ?", (tenant,)).fetchone()
                if found is not None:
                    conn.execute(
                        "INSERT INTO destroyed_data_keys (key_id, destroyed) VALUES (?, ?) ON CONFLICT DO NOTHING",
                        (found[0], time.time()),
                    )
                    conn.execute("DELETE FROM data_keys WHERE tenant = ?", (tenant,))
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # do not leave the wrapped key in the WAL file
            return found is not None

        return await self._call(destroy)

    async def data_key_destroyed(self, key_id: str) -> bool:
        def find(conn: sqlite3.Connection) -> bool:
            return conn.execute("SELECT 1 FROM destroyed_data_keys WHERE key_id = ?", (key_id,)).fetchone() is not None

        return await self._call(find)

    async def data_keys(self) -> list[DataKeyRow]:
        def all_keys(conn: sqlite3.Connection) -> list[DataKeyRow]:
            rows = conn.execute("SELECT tenant, key_id, wrapped, master_key_id, created FROM data_keys").fetchall()
            return [DataKeyRow(r[0], r[1], bytes(r[2]), r[3], r[4]) for r in rows]

        return await self._call(all_keys)

    async def rewrap_data_key(self, row: DataKeyRow, expected_master_key_id: str) -> bool:
        def rewrap(conn: sqlite3.Connection) -> bool:
            with conn:
                return (
                    conn.execute(
                        "UPDATE data_keys SET wrapped = ?, master_key_id = ? "
                        "WHERE tenant = ? AND key_id = ? AND master_key_id = ?",
                        (row.wrapped, row.master_key_id, row.tenant, row.key_id, expected_master_key_id),
                    ).rowcount
                    == 1
                )

        return await self._call(rewrap)
