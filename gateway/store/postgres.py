"""PostgresStore: one store shared by several gateway replicas (asyncpg).

Races between replicas are settled by the database: a tenant's first data key is inserted with
``ON CONFLICT DO NOTHING`` and then read back, so two replicas that create one at the same moment both
end up using the single key that won; rotation re-wraps with a compare-and-set on the master key id.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import asyncpg
import orjson

from . import COLUMNS, DataKeyRow, Query, StoreUnavailable, TranscriptRow, where

SCHEMA = """
CREATE TABLE IF NOT EXISTS transcripts (
    id TEXT PRIMARY KEY,
    created DOUBLE PRECISION NOT NULL,
    tenant TEXT NOT NULL,
    route TEXT NOT NULL,
    status INTEGER NOT NULL,
    outcome TEXT NOT NULL,
    model TEXT,
    policy TEXT,
    stream BOOLEAN NOT NULL,
    input_tokens INTEGER,
    output_tokens INTEGER,
    entity_counts JSONB NOT NULL,
    duration_ms DOUBLE PRECISION,
    detect_ms DOUBLE PRECISION,
    schema_version INTEGER NOT NULL,
    content BYTEA
);
CREATE INDEX IF NOT EXISTS transcripts_created ON transcripts (created, id);
CREATE INDEX IF NOT EXISTS transcripts_tenant ON transcripts (tenant, created);
CREATE TABLE IF NOT EXISTS data_keys (
    tenant TEXT PRIMARY KEY,
    key_id TEXT NOT NULL,
    wrapped BYTEA NOT NULL,
    master_key_id TEXT NOT NULL,
    created DOUBLE PRECISION NOT NULL
);
CREATE TABLE IF NOT EXISTS destroyed_data_keys (
    key_id TEXT PRIMARY KEY,
    destroyed DOUBLE PRECISION NOT NULL
);
"""


def _values(r: TranscriptRow) -> tuple[Any, ...]:
    return (
        r.id, r.created, r.tenant, r.route, r.status, r.outcome, r.model, r.policy, r.stream,
        r.input_tokens, r.output_tokens, orjson.dumps(r.entity_counts).decode(), r.duration_ms, r.detect_ms,
        r.schema_version, r.content,
    )  # fmt: skip


def _row(v: Any) -> TranscriptRow:
    counts = v["entity_counts"]
    return TranscriptRow(
        id=v["id"], created=v["created"], tenant=v["tenant"], route=v["route"], status=v["status"],
        outcome=v["outcome"], model=v["model"], policy=v["policy"], stream=v["stream"],
        input_tokens=v["input_tokens"], output_tokens=v["output_tokens"],
        entity_counts=orjson.loads(counts) if isinstance(counts, str) else dict(counts),
        duration_ms=v["duration_ms"], detect_ms=v["detect_ms"], schema_version=v["schema_version"],
        content=bytes(v["content"]) if v["content"] is not None else None,
    )  # fmt: skip


def _key(v: Any) -> DataKeyRow:
    return DataKeyRow(v["tenant"], v["key_id"], bytes(v["wrapped"]), v["master_key_id"], v["created"])


class PostgresStore:
    def __init__(self, dsn: str, *, create: bool = True) -> None:
        self._dsn = dsn
        self.create = create
        self._pool: asyncpg.Pool | None = None

    def _require(self) -> asyncpg.Pool:
        if self._pool is None:
            raise StoreUnavailable("the PostgreSQL store is not open")
        return self._pool

    async def open(self) -> None:
        if self._pool is not None:
            return
        pool: asyncpg.Pool | None = None
        missing = False
        try:
            pool = await asyncpg.create_pool(self._dsn, min_size=1, max_size=4, command_timeout=30)
            async with pool.acquire() as conn:
                missing = not self.create and await conn.fetchval("SELECT to_regclass('transcripts')") is None
                if not missing:
                    # Several replicas may start at once: serialise schema creation.
                    async with conn.transaction():
                        await conn.execute("SELECT pg_advisory_xact_lock(7417301)")
                        await conn.execute(SCHEMA)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            if pool is not None:
                await pool.close()
            raise StoreUnavailable(f"PostgreSQL: {type(exc).__name__}") from exc
        if missing:
            await pool.close()
            raise StoreUnavailable(
                "no transcript store in this PostgreSQL database and search_path (this command never creates one)"
            )
        self._pool = pool

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def _run(self, sql: str, *args: Any) -> str:
        try:
            result: str = await self._require().execute(sql, *args)
            return result
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise StoreUnavailable(f"PostgreSQL: {type(exc).__name__}") from exc

    async def _fetch(self, sql: str, *args: Any) -> list[Any]:
        try:
            return list(await self._require().fetch(sql, *args))
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise StoreUnavailable(f"PostgreSQL: {type(exc).__name__}") from exc

    async def write(self, rows: Sequence[TranscriptRow]) -> None:
        placeholders = ", ".join(f"${i}" for i in range(1, 17)).replace("$12", "$12::jsonb")
        try:
            async with self._require().acquire() as conn, conn.transaction():
                await conn.executemany(
                    f"INSERT INTO transcripts ({COLUMNS}) VALUES ({placeholders}) ON CONFLICT (id) DO NOTHING",
                    [_values(r) for r in rows],
                )
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise StoreUnavailable(f"PostgreSQL: {type(exc).__name__}") from exc

    async def get(self, transcript_id: str) -> TranscriptRow | None:
        found = await self._fetch(f"SELECT {COLUMNS} FROM transcripts WHERE id = $1", transcript_id)
        return _row(found[0]) if found else None

    async def query(self, query: Query) -> list[TranscriptRow]:
        clause, params = where(query, lambda n: f"${n}")
        sql = f"SELECT {COLUMNS} FROM transcripts{clause} ORDER BY {query.order} LIMIT ${len(params) + 1}"
        return [_row(r) for r in await self._fetch(sql, *params, query.limit)]

    async def count(self, query: Query) -> int:
        clause, params = where(query, lambda n: f"${n}")
        found = await self._fetch(f"SELECT count(*) AS n FROM transcripts{clause}", *params)
        return int(found[0]["n"])

    async def purge(self, older_than: float) -> int:
        return int((await self._run("DELETE FROM transcripts WHERE created < $1", older_than)).split()[-1])

    async def delete_tenant(self, tenant: str) -> int:
        return int((await self._run("DELETE FROM transcripts WHERE tenant = $1", tenant)).split()[-1])

    async def get_data_key(self, tenant: str) -> DataKeyRow | None:
        found = await self._fetch(
            "SELECT tenant, key_id, wrapped, master_key_id, created FROM data_keys WHERE tenant = $1", tenant
        )
        return _key(found[0]) if found else None

    async def insert_data_key(self, row: DataKeyRow) -> DataKeyRow:
        await self._run(
            "INSERT INTO data_keys (tenant, key_id, wrapped, master_key_id, created) VALUES ($1, $2, $3, $4, $5) "
            "ON CONFLICT (tenant) DO NOTHING",
            row.tenant, row.key_id, row.wrapped, row.master_key_id, row.created,
        )  # fmt: skip
        found = await self.get_data_key(row.tenant)
        if found is None:
            raise StoreUnavailable("a data key vanished right after it was written")
        return found

    async def destroy_data_key(self, tenant: str) -> bool:
        try:
            async with self._require().acquire() as conn, conn.transaction():
                key_id = await conn.fetchval("DELETE FROM data_keys WHERE tenant = $1 RETURNING key_id", tenant)
                if key_id is not None:
                    await conn.execute(
                        "INSERT INTO destroyed_data_keys (key_id, destroyed) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                        key_id, time.time(),
                    )  # fmt: skip
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise StoreUnavailable(f"PostgreSQL: {type(exc).__name__}") from exc
        return key_id is not None

    async def data_key_destroyed(self, key_id: str) -> bool:
        return bool(await self._fetch("SELECT 1 FROM destroyed_data_keys WHERE key_id = $1", key_id))

    async def data_keys(self) -> list[DataKeyRow]:
        return [
            _key(r) for r in await self._fetch("SELECT tenant, key_id, wrapped, master_key_id, created FROM data_keys")
        ]

    async def rewrap_data_key(self, row: DataKeyRow, expected_master_key_id: str) -> bool:
        status = await self._run(
            "UPDATE data_keys SET wrapped = $1, master_key_id = $2 WHERE tenant = $3 AND key_id = $4 "
            "AND master_key_id = $5",
            row.wrapped, row.master_key_id, row.tenant, row.key_id, expected_master_key_id,
        )  # fmt: skip
        return status.endswith(" 1")
