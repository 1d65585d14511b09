"""Transcript stores: the interface, its rows, and open_store() that picks SQLite or PostgreSQL.

Rows hold searchable metadata in clear (never personal data: ids, time, tenant, model, status,
usage, entity counts by type, durations, policy) and the content only as a sealed record.
Writes are idempotent by id, so a spool replay after a crash never duplicates a transcript.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

SCHEMA_VERSION = 1

#: The transcripts table's columns, in TranscriptRow order (both backends' SQL uses them).
COLUMNS = (
    "id, created, tenant, route, status, outcome, model, policy, stream, input_tokens, output_tokens, "
    "entity_counts, duration_ms, detect_ms, schema_version, content"
)


@dataclass(frozen=True)
class TranscriptRow:
    id: str
    created: float
    tenant: str
    route: str
    status: int
    outcome: str
    model: str | None = None
    policy: str | None = None
    stream: bool = False
    input_tokens: int | None = None
    output_tokens: int | None = None
    entity_counts: dict[str, int] = field(default_factory=dict)
    duration_ms: float | None = None
    detect_ms: float | None = None
    schema_version: int = SCHEMA_VERSION
    #: The sealed record (see crypto.py), or None when the policy keeps no content.
    content: bytes | None = None


@dataclass(frozen=True)
class DataKeyRow:
    tenant: str
    key_id: str
    wrapped: bytes
    master_key_id: str
    created: float


@dataclass(frozen=True)
class Query:
    since: float | None = None
    until: float | None = None
    tenant: str | None = None
    model: str | None = None
    status: int | None = None
    limit: int = 100
    #: Keyset pagination: rows created after (created, id).
    after: tuple[float, str] | None = None
    #: Newest first (for listing); pagination with ``after`` needs oldest first.
    newest_first: bool = False

    @property
    def order(self) -> str:
        return "created DESC, id DESC" if self.newest_first else "created, id"


def where(query: Query, placeholder: Callable[[int], str]) -> tuple[str, list[Any]]:
    """The WHERE clause for a query, shared by both backends (placeholder style differs)."""
    clauses: list[str] = []
    params: list[Any] = []

    def add(sql: str, value: Any) -> None:
        params.append(value)
        clauses.append(sql.format(p=placeholder(len(params))))

    if query.since is not None:
        add("created >= {p}", query.since)
    if query.until is not None:
        add("created < {p}", query.until)
    if query.tenant is not None:
        add("tenant = {p}", query.tenant)
    if query.model is not None:
        add("model = {p}", query.model)
    if query.status is not None:
        add("status = {p}", query.status)
    if query.after is not None:
        params.extend(query.after)
        clauses.append(f"(created, id) > ({placeholder(len(params) - 1)}, {placeholder(len(params))})")
    return (" WHERE " + " AND ".join(clauses)) if clauses else "", params


class StoreUnavailable(Exception):
    """The store cannot be reached or refused a write. The message never holds content."""


class TranscriptStore(Protocol):
    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def write(self, rows: Sequence[TranscriptRow]) -> None: ...

    async def get(self, transcript_id: str) -> TranscriptRow | None: ...

    async def query(self, query: Query) -> list[TranscriptRow]: ...

    async def purge(self, older_than: float) -> int: ...

    async def delete_tenant(self, tenant: str) -> int: ...

    async def get_data_key(self, tenant: str) -> DataKeyRow | None: ...

    async def insert_data_key(self, row: DataKeyRow) -> DataKeyRow:
        """Insert unless the tenant already has a key; return the key that is in the store."""
        ...

    async def count(self, query: Query) -> int:
        """How many rows match (``limit`` and ``after`` ignored): the total of a progress bar."""
        ...

    async def destroy_data_key(self, tenant: str) -> bool:
        """Delete the tenant's data key and remember its id as destroyed, in one transaction."""
        ...

    async def data_key_destroyed(self, key_id: str) -> bool:
        """Whether ``key_id`` was destroyed by ``destroy_data_key`` (only ids are kept, never a tenant)."""
        ...

    async def data_keys(self) -> list[DataKeyRow]: ...

    async def rewrap_data_key(self, row: DataKeyRow, expected_master_key_id: str) -> bool:
        """Replace a key's wrapping if it is still wrapped by ``expected_master_key_id``."""
        ...


def open_store(dsn: str | None, data_dir: Path, *, create: bool = True) -> TranscriptStore:
    """The configured store, not opened yet. Without ``create``, ``open()`` refuses a store that does
    not exist yet (no SQLite file, or no transcripts table in the PostgreSQL schema) instead of
    creating an empty one: the operator's read commands must not mistake a typo for an empty store."""
    if dsn:
        from .postgres import PostgresStore

        return PostgresStore(dsn, create=create)
    from .sqlite import SqliteStore

    return SqliteStore(data_dir / "transcripts.db", create=create)
