"""Per-tenant data keys: get or create (once, even across replicas), cache, re-wrap, destroy.

Each tenant has one 256-bit data key, stored only wrapped by a master key. Transcripts are sealed
with it; the ``hash`` action's HMAC key is derived from it, so forgetting a tenant makes both its
transcripts and its hash tokens unlinkable for good (crypto-shredding).

Rotation re-wraps every data key under the current master key without touching transcripts. Old
master keys stay usable for reading until an operator retires them (``transcripts forget`` retires
them itself when the keys come from a file: see cli_transcripts.py).

Reading a record names its failure: the tenant's key was destroyed (:class:`TenantKeyDestroyed`), or
the record was sealed with a key that is not this tenant's (:class:`NotThisTenantsRecord`: a row moved
to another tenant, or a key id altered).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import time

from .crypto import HASH_ACTION_INFO, CryptoError, KeyProvider, LocalKeyProvider, data_key_aad, hkdf, load_key_provider
from .settings import Settings
from .store import DataKeyRow, TranscriptStore, open_store


class TenantKeyDestroyed(CryptoError):
    """The tenant's data key was destroyed (``transcripts forget``): its records are unreadable."""


class NotThisTenantsRecord(CryptoError):
    """The record names a data key this tenant never had: it was moved from another tenant, or altered."""


class DataKeys:
    def __init__(self, store: TranscriptStore, provider: KeyProvider) -> None:
        self.store = store
        self.provider = provider
        self._cache: dict[str, tuple[str, bytes]] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def current(self, tenant: str, *, fresh: bool = False) -> tuple[str, bytes]:
        """(key id, key) for sealing new records; creates the tenant's key on first use.

        With ``fresh`` the store is asked again, so a key destroyed by ``transcripts forget`` (on
        any replica) is never used to seal another record. The writer asks fresh once per batch.
        """
        cached = self._cache.get(tenant)
        if cached is not None and not fresh:
            return cached
        lock = self._locks.setdefault(tenant, asyncio.Lock())
        async with lock:
            row = await self.store.get_data_key(tenant)
            cached = self._cache.get(tenant)
            if cached is not None and row is not None and row.key_id == cached[0]:
                return cached
            self._cache.pop(tenant, None)
            if row is None:
                key_id = "dk-" + secrets.token_hex(8)
                master_id, wrapped = self.provider.wrap(os.urandom(32), data_key_aad(tenant, key_id))
                # If another replica inserted first, the store returns its key and ours is dropped.
                row = await self.store.insert_data_key(DataKeyRow(tenant, key_id, wrapped, master_id, time.time()))
            key = self.provider.unwrap(row.master_key_id, row.wrapped, data_key_aad(tenant, row.key_id))
            self._cache[tenant] = (row.key_id, key)
            return row.key_id, key

    async def for_record(self, tenant: str, key_id: str) -> bytes:
        """The key that sealed a record; TenantKeyDestroyed if it was destroyed, NotThisTenantsRecord if
        the tenant never had it."""
        cached = self._cache.get(tenant)
        if cached is not None and cached[0] == key_id:
            return cached[1]
        row = await self.store.get_data_key(tenant)
        if row is None or row.key_id != key_id:
            if await self.store.data_key_destroyed(key_id):
                raise TenantKeyDestroyed(
                    f"the data key {key_id} of this tenant was destroyed; the record is unreadable"
                )
            raise NotThisTenantsRecord(
                f"authentication failed: the record was sealed with data key {key_id}, which is not this tenant's "
                "(the row was moved from another tenant, or altered)"
            )
        key = self.provider.unwrap(row.master_key_id, row.wrapped, data_key_aad(tenant, row.key_id))
        self._cache[tenant] = (row.key_id, key)
        return key

    async def hash_key(self, tenant: str) -> bytes:
        _, key = await self.current(tenant)
        return hkdf(key, HASH_ACTION_INFO)

    async def destroy(self, tenant: str) -> bool:
        self._cache.pop(tenant, None)
        return await self.store.destroy_data_key(tenant)

    async def rewrap_all(self) -> tuple[int, int]:
        """Re-wrap every data key under the current master key. Returns (re-wrapped, already current)."""
        done = already = 0
        target = self.provider.current_id
        for row in await self.store.data_keys():
            if row.master_key_id == target:
                already += 1
                continue
            aad = data_key_aad(row.tenant, row.key_id)
            key = self.provider.unwrap(row.master_key_id, row.wrapped, aad)
            master_id, wrapped = self.provider.wrap(key, aad)
            new = DataKeyRow(row.tenant, row.key_id, wrapped, master_id, row.created)
            if await self.store.rewrap_data_key(new, row.master_key_id):
                done += 1
            else:
                already += 1  # another replica re-wrapped it first
        return done, already

    async def wrapped_by(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for row in await self.store.data_keys():
            counts[row.master_key_id] = counts.get(row.master_key_id, 0) + 1
        return counts


def data_keys_for(settings: Settings, *, create: bool = True) -> DataKeys:
    """The master keys and the transcript store the settings name, as DataKeys (``.provider``, ``.store``).

    The store is not opened yet. With ``create`` (``serve``), a missing dev key is generated in the
    data dir (outside production, with a warning) and a missing store is created on open; without it
    (the operator's commands) both are errors: see ``load_key_provider`` and ``open_store``.
    """
    return DataKeys(store_for(settings, create=create), key_provider_for(settings, create=create))


def key_provider_for(settings: Settings, *, create: bool) -> LocalKeyProvider:
    """The master keys the settings name; ``create`` lets a missing dev key be generated (``serve`` only)."""
    provider, _dev_key = load_key_provider(
        settings.master_key.reveal() if settings.master_key else None,
        settings.master_key_file,
        settings.data_dir,
        settings.production,
        generate=create,
    )
    return provider


def store_for(settings: Settings, *, create: bool = True) -> TranscriptStore:
    return open_store(
        settings.transcripts.dsn.reveal() if settings.transcripts.dsn else None, settings.data_dir, create=create
    )
