"""Transcripts on both backends: recording through the gateway, encryption at rest, rotation, purge,
crypto-shredding, and the fail_closed and buffer behaviours with a store that is made to fail."""

from __future__ import annotations

import base64
import os
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import asyncpg
import openai
import pytest
from aiohttp.test_utils import TestServer

from gateway.app import PARTS, create_app
from gateway.crypto import CryptoError, LocalKeyProvider
from gateway.detector import PresidioDetector
from gateway.envelope import DataKeys, TenantKeyDestroyed
from gateway.exchange import Exchange
from gateway.metrics import Metrics
from gateway.settings import Secret, Settings, TranscriptSettings
from gateway.spool import Spool
from gateway.store import Query, StoreUnavailable, TranscriptRow, TranscriptStore
from gateway.store.postgres import PostgresStore
from gateway.store.sqlite import SqliteStore
from gateway.transcripts import TranscriptReader, TranscriptRecorder
from tests.fake_upstream import FakeUpstream

PG_DSN = os.environ.get("PII_GATEWAY_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
Server = Callable[..., Awaitable[TestServer]]


async def postgres_schema() -> str | None:
    """A fresh schema in the test database, or None when PostgreSQL is not there."""
    try:
        conn = await asyncpg.connect(PG_DSN, timeout=3)
    except (OSError, asyncpg.PostgresError):
        return None
    schema = "t_" + secrets.token_hex(6)
    await conn.execute(f"CREATE SCHEMA {schema}")
    await conn.close()
    return f"{PG_DSN}?search_path={schema}"


@pytest.fixture(params=["sqlite", "postgres"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[TranscriptStore]:
    if request.param == "sqlite":
        backend: TranscriptStore = SqliteStore(tmp_path / "t.db")
    else:
        dsn = await postgres_schema()
        if dsn is None:
            pytest.skip(f"PostgreSQL is not reachable at {PG_DSN}")
        backend = PostgresStore(dsn)
    await backend.open()
    yield backend
    await backend.close()


def make_row(i: int, tenant: str = "acme", created: float | None = None) -> TranscriptRow:
    return TranscriptRow(
        id=f"req_{i:04d}", created=created if created is not None else time.time(), tenant=tenant,
        route="chat.completions", status=200, outcome="ok", model="m", entity_counts={"PERSON": 2},
    )  # fmt: skip


def exchange(i: int, tenant: str = "acme", keep: str = "original") -> Exchange:
    ex = Exchange(route="chat.completions", request_id=f"req_{i:04d}", tenant=tenant)
    ex.status, ex.policy = 200, "default"
    ex.capture.keep = keep
    ex.capture.request_client = f"Maria Gonzalez #{i}".encode()
    ex.capture.request_upstream = f"<PERSON_1> #{i}".encode()
    ex.capture.add("response_upstream", b"<PERSON_1> ok")
    ex.capture.add("response_client", b"Maria Gonzalez ok")
    return ex


class FlakyStore:
    """A real store with a switch that makes every call fail, as a store that is down would."""

    def __init__(self, inner: TranscriptStore) -> None:
        self.inner = inner
        self.down = False

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        if name in ("open", "close"):
            return attr

        async def call(*args: Any, **kwargs: Any) -> Any:
            if self.down:
                raise StoreUnavailable("made to fail")
            return await attr(*args, **kwargs)

        return call


def recorder_for(
    store: Any, tmp_path: Path, mode: str = "buffer", queue: int = 100, provider: LocalKeyProvider | None = None
) -> TranscriptRecorder:
    provider = provider or LocalKeyProvider([b"\x05" * 32])
    settings = TranscriptSettings(on_store_failure=mode, queue_size=queue, retention_days=0)  # type: ignore[arg-type]
    return TranscriptRecorder(
        store, DataKeys(store, provider), Spool(tmp_path / "spool", provider), settings, Metrics()
    )


async def test_store_round_trip_query_purge_and_idempotent_writes(store: TranscriptStore) -> None:
    now = time.time()
    rows = [make_row(i, created=now - 100 + i) for i in range(10)] + [make_row(99, "beta", created=now - 90 * 86400)]
    await store.write(rows)
    await store.write(rows[:3])  # replaying the same ids never duplicates
    assert len(await store.query(Query(limit=100))) == 11
    assert [r.id for r in await store.query(Query(tenant="beta"))] == ["req_0099"]
    page = await store.query(Query(limit=4))
    nxt = await store.query(Query(limit=4, after=(page[-1].created, page[-1].id)))
    assert {r.id for r in page}.isdisjoint({r.id for r in nxt})
    assert (await store.get("req_0003")) == rows[3]
    assert await store.purge(now - 30 * 86400) == 1
    assert await store.get("req_0099") is None


async def test_one_data_key_per_tenant_even_when_created_concurrently(store: TranscriptStore) -> None:
    provider = LocalKeyProvider([b"\x05" * 32])
    replicas = [DataKeys(store, provider) for _ in range(8)]  # eight "replicas", one store
    import asyncio

    results = await asyncio.gather(*(r.current("new-tenant") for r in replicas))
    assert len({key_id for key_id, _ in results}) == 1
    assert len({key for _, key in results}) == 1
    assert len([k for k in await store.data_keys() if k.tenant == "new-tenant"]) == 1


async def test_recorded_content_is_sealed_and_readable_and_bound_to_its_row(
    store: TranscriptStore, tmp_path: Path
) -> None:
    recorder = recorder_for(store, tmp_path)
    await recorder.start()
    recorder.record(exchange(1))
    recorder.record(exchange(2, keep="redacted"))
    recorder.record(exchange(3, keep="none"))
    await recorder.close()
    await store.open()
    reader = TranscriptReader(recorder.keys)
    one, two, three = [await store.get(f"req_{i:04d}") for i in (1, 2, 3)]
    assert one is not None and two is not None and three is not None
    assert b"Maria" not in (one.content or b"")
    full = await reader.content(one)
    assert full is not None
    assert full["request_client"]["text"] == "Maria Gonzalez #1"
    assert full["response_client"]["text"] == "Maria Gonzalez ok"
    redacted = await reader.content(two)
    assert redacted is not None
    assert "request_client" not in redacted
    assert redacted["request_upstream"]["text"] == "<PERSON_1> #2"
    assert three.content is None
    # A row copied onto another id, or another tenant, fails to decrypt.
    with pytest.raises(CryptoError):
        await reader.content(replace(two, content=one.content))
    with pytest.raises(CryptoError):
        await reader.content(replace(one, tenant="beta"))


async def test_rotation_keeps_old_and_new_readable_and_forget_shreds(store: TranscriptStore, tmp_path: Path) -> None:
    old_key, new_key = b"\x01" * 32, b"\x02" * 32
    old = LocalKeyProvider([old_key])
    recorder = recorder_for(store, tmp_path, provider=old)
    await recorder.start()
    recorder.record(exchange(1))
    await recorder.close()
    await store.open()

    rotated = LocalKeyProvider([new_key, old_key])
    keys = DataKeys(store, rotated)
    done, _ = await keys.rewrap_all()
    assert done == 1
    assert await keys.wrapped_by() == {rotated.current_id: 1}
    recorder2 = recorder_for(store, tmp_path, provider=rotated)
    await recorder2.start()
    recorder2.record(exchange(2))
    await recorder2.close()
    await store.open()
    # After re-wrapping, the new key alone reads both old and new records.
    reader = TranscriptReader(DataKeys(store, LocalKeyProvider([new_key])))
    for i in (1, 2):
        row = await store.get(f"req_{i:04d}")
        assert row is not None
        assert (await reader.content(row)) is not None
    # The wrong master key version: a provider without the key that wraps the data key.
    with pytest.raises(CryptoError, match="not available"):
        row = await store.get("req_0001")
        assert row is not None
        await TranscriptReader(DataKeys(store, LocalKeyProvider([old_key]))).content(row)
    # Crypto-shredding: the tenant's key is destroyed; its records cannot be read any more.
    assert await DataKeys(store, rotated).destroy("acme")
    row = await store.get("req_0001")
    assert row is not None
    with pytest.raises(TenantKeyDestroyed):
        await TranscriptReader(DataKeys(store, rotated)).content(row)


async def test_buffer_mode_spools_while_the_store_is_down_and_replays(store: TranscriptStore, tmp_path: Path) -> None:
    flaky = FlakyStore(store)
    recorder = recorder_for(flaky, tmp_path, mode="buffer", queue=5)
    await recorder.start()
    recorder.record(exchange(0))
    await recorder.flush()
    flaky.down = True
    for i in range(1, 21):
        recorder.record(exchange(i))
    assert recorder.accepting  # buffer mode never refuses
    await recorder.flush()
    assert recorder.spool.pending() >= 1
    spool_bytes = b"".join(p.read_bytes() for p in recorder.spool.files())
    assert b"Maria" not in spool_bytes  # the spool is encrypted too
    flaky.down = False
    assert await recorder.replay_spool() == 20
    await recorder.close()
    await store.open()
    assert len(await store.query(Query(limit=100))) == 21
    assert recorder.spool.pending() == 0


async def test_fail_closed_mode_refuses_while_the_store_is_down_and_loses_nothing(
    store: TranscriptStore, tmp_path: Path
) -> None:
    flaky = FlakyStore(store)
    recorder = recorder_for(flaky, tmp_path, mode="fail_closed", queue=3)
    await recorder.start()
    flaky.down = True
    for i in range(3):
        recorder.record(exchange(i))
    import asyncio

    for _ in range(100):
        if not recorder.accepting:
            break
        await asyncio.sleep(0.01)
    assert not recorder.accepting
    flaky.down = False
    await recorder.flush()
    assert recorder.accepting
    await recorder.close()
    await store.open()
    assert len(await store.query(Query(limit=100))) == 3


# --- through the gateway ------------------------------------------------------------------------

VALUES = ["Maria Gonzalez", "maria.gonzalez@example.com", "4111 1111 1111 1111", "John Smith"]
PROMPT = "Hi, I'm Maria Gonzalez (maria.gonzalez@example.com). Card 4111 1111 1111 1111. Ask John Smith."


async def test_every_exchange_is_recorded_and_nothing_readable_sits_on_disk(
    settings: Settings, detector: PresidioDetector, aiohttp_server: Server, fake_upstream: FakeUpstream, tmp_path: Path
) -> None:
    keyed = settings.model_copy(update={"master_key": Secret(base64.b64encode(b"\x09" * 32).decode())})
    app = create_app(keyed, detector=detector)
    server = await aiohttp_server(app)
    base = str(server.make_url("/v1"))
    async with openai.AsyncOpenAI(base_url=base, api_key="sk", max_retries=0) as client:
        messages: Any = [{"role": "user", "content": PROMPT}]
        await client.chat.completions.create(model="m", messages=messages)
        stream = await client.chat.completions.create(model="m", messages=messages, stream=True)
        async for _ in stream:
            pass
        fake_upstream.mode, fake_upstream.status = "status", 500
        fake_upstream.error_body = b'{"error": {"message": "boom"}}'
        with pytest.raises(openai.InternalServerError):
            await client.chat.completions.create(model="m", messages=messages)
        with pytest.raises(openai.BadRequestError):  # refused by the gateway itself
            image: Any = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
            bad: Any = [{"role": "user", "content": [image]}]
            await client.chat.completions.create(model="m", messages=bad)
    parts = app[PARTS]
    assert parts.recorder is not None
    await parts.recorder.flush()
    rows = await parts.recorder.store.query(Query(limit=10))
    assert [r.status for r in rows] == [200, 200, 500, 400]
    assert rows[1].stream
    assert rows[0].entity_counts.get("PERSON", 0) >= 2
    content = await TranscriptReader(parts.data_keys).content(rows[1])
    assert content is not None
    assert "Maria Gonzalez" not in content["request_upstream"]["text"]  # default policy keeps the redacted side
    await server.close()  # drains the recorder and closes the store

    for path in keyed.data_dir.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            for value in VALUES:
                assert value.encode() not in data, (path.name, value)
