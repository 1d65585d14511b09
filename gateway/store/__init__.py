"""Transcript stores: the interface, its rows, and open_store() that picks SQLite or PostgreSQL.

Rows hold searchable metadata in clear (never personal data: ids, time, tenant, model, status,
usage, entity counts by type, durations, policy) and the content only as a sealed record.
Writes are idempotent by id, so a spool replay after a crash never duplicates a transcript.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

SCHEMA_VERSION = 1


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

    async def destroy_data_key(self, tenant: str) -> bool: ...

    async def data_keys(self) -> list[DataKeyRow]: ...

    async def rewrap_data_key(self, row: DataKeyRow, expected_master_key_id: str) -> bool:
        """Replace a key's wrapping if it is still wrapped by ``expected_master_key_id``."""
        ...


def open_store(dsn: str | None, data_dir: Path) -> TranscriptStore:
    if dsn:
        from .postgres import PostgresStore

        return PostgresStore(dsn)
    from .sqlite import SqliteStore

    return SqliteStore(data_dir / "transcripts.db")
