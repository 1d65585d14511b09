"""Transcripts on both backends: recording through the gateway, encryption at rest, rotation, purge
(by hand and by the recorder's retention task), crypto-shredding, a key provider that can only wrap and
unwrap (as a KMS), and the fail_closed and buffer behaviours with a store that is made to fail, at
start-up too."""

from __future__ import annotations

import asyncio
import base64
import os
import secrets
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import asyncpg
import openai
import pytest
from aiohttp import ClientSession
from aiohttp.test_utils import TestServer
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from gateway.app import PARTS, create_app
from gateway.crypto import CryptoError, KeyProvider, LocalKeyProvider
from gateway.detector import PresidioDetector
from gateway.envelope import DataKeys, NotThisTenantsRecord, TenantKeyDestroyed
from gateway.exchange import Exchange
from gateway.metrics import Metrics
from gateway.settings import Secret, Settings, TranscriptSettings
from gateway.spool import Spool
from gateway.store import Query, StoreUnavailable, TranscriptRow, TranscriptStore
from gateway.store.postgres import PostgresStore
from gateway.store.sqlite import SqliteStore
from gateway.transcripts import Draft, TranscriptReader, TranscriptRecorder
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
    """A real store with a switch that makes every call fail, as a store that is down would; with
    ``unopenable``, ``open`` fails too (a store that is down when the gateway starts)."""

    def __init__(self, inner: TranscriptStore, *, unopenable: bool = False) -> None:
        self.inner = inner
        self.down = unopenable
        self.unopenable = unopenable
        self.open_attempts = 0

    async def open(self) -> None:
        self.open_attempts += 1
        if self.unopenable and self.down:
            raise StoreUnavailable("made to fail at open")
        await self.inner.open()

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        if name == "close":
            return attr

        async def call(*args: Any, **kwargs: Any) -> Any:
            if self.down:
                raise StoreUnavailable("made to fail")
            return await attr(*args, **kwargs)

        return call


def recorder_for(
    store: Any,
    tmp_path: Path,
    mode: str = "buffer",
    queue: int = 100,
    provider: KeyProvider | None = None,
    retention_days: int = 0,
    **intervals: float,
) -> TranscriptRecorder:
    provider = provider or LocalKeyProvider([b"\x05" * 32])
    settings = TranscriptSettings(on_store_failure=mode, queue_size=queue, retention_days=retention_days)  # type: ignore[arg-type]
    return TranscriptRecorder(
        store, DataKeys(store, provider), Spool(tmp_path / "spool", provider), settings, Metrics(), **intervals
    )


async def eventually(check: Callable[[], Awaitable[bool]], seconds: float = 15.0) -> None:
    deadline = time.monotonic() + seconds
    while not await check():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


class FakeKms:
    """A key provider that, like a cloud KMS, only wraps and unwraps: its key material never leaves it
    (no ``legacy_spool_key``, no key bytes). ``rotate`` adds a key version, as a KMS does."""

    def __init__(self) -> None:
        self._versions: dict[str, AESGCM] = {}
        self.calls: list[str] = []
        self.rotate()

    def rotate(self) -> None:
        self._current = f"kms-v{len(self._versions) + 1}"
        self._versions[self._current] = AESGCM(AESGCM.generate_key(bit_length=256))

    @property
    def current_id(self) -> str:
        return self._current

    def key_ids(self) -> list[str]:
        return list(self._versions)

    def wrap(self, plaintext: bytes, aad: bytes) -> tuple[str, bytes]:
        self.calls.append("wrap")
        nonce = os.urandom(12)
        return self._current, nonce + self._versions[self._current].encrypt(nonce, plaintext, aad)

    def unwrap(self, key_id: str, blob: bytes, aad: bytes) -> bytes:
        self.calls.append("unwrap")
        if key_id not in self._versions:
            raise CryptoError(f"KMS key {key_id} is not available")
        try:
            return self._versions[key_id].decrypt(blob[:12], blob[12:], aad)
        except InvalidTag:
            raise CryptoError("KMS: authentication failed") from None


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
    # A row copied onto another id, or another tenant, fails to decrypt, and says why.
    with pytest.raises(CryptoError, match="failed authentication"):
        await reader.content(replace(two, content=one.content))
    with pytest.raises(NotThisTenantsRecord, match="not this tenant's"):
        await reader.content(replace(one, tenant="beta"))  # beta has no data key at all
    await recorder.keys.current("beta")
    with pytest.raises(NotThisTenantsRecord, match="authentication failed"):
        await reader.content(replace(one, tenant="beta"))  # beta has a key of its own


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
    with pytest.raises(TenantKeyDestroyed, match="was destroyed"):
        await TranscriptReader(DataKeys(store, rotated)).content(row)
    # Still "destroyed" (not "another tenant's") once the tenant has a new key, and when moved elsewhere.
    await DataKeys(store, rotated).current("acme")
    with pytest.raises(TenantKeyDestroyed, match="was destroyed"):
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


async def test_a_store_down_at_start_does_not_stop_buffer_mode_and_is_replayed(
    store: TranscriptStore, tmp_path: Path
) -> None:
    await store.close()
    flaky = FlakyStore(store, unopenable=True)
    recorder = recorder_for(flaky, tmp_path, mode="buffer", queue=5, replay_interval=0.05)
    await recorder.start()  # the old code raised StoreUnavailable here, and `serve` stopped
    try:
        assert recorder.accepting and not recorder.store_reachable
        for i in range(12):
            recorder.record(exchange(i))
        await recorder.flush()
        assert recorder.spool.pending() >= 1
        flaky.down = False  # the store comes back: opened in the background, then the spool replayed
        await eventually(lambda: _spool_empty(recorder))
        assert flaky.open_attempts >= 2 and recorder.store_reachable
    finally:
        await recorder.close()
    await store.open()
    assert len(await store.query(Query(limit=100))) == 12


async def _spool_empty(recorder: TranscriptRecorder) -> bool:
    return recorder.spool.pending() == 0


async def test_a_store_down_at_start_refuses_in_fail_closed_mode_until_it_opens(
    store: TranscriptStore, tmp_path: Path
) -> None:
    await store.close()
    flaky = FlakyStore(store, unopenable=True)
    recorder = recorder_for(flaky, tmp_path, mode="fail_closed")
    await recorder.start()
    try:
        assert not recorder.accepting
        flaky.down = False

        async def accepting() -> bool:
            return recorder.accepting

        await eventually(accepting)
        recorder.record(exchange(1))
        await recorder.flush()
    finally:
        await recorder.close()
    await store.open()
    assert [r.id for r in await store.query(Query())] == ["req_0001"]
    assert recorder.spool.pending() == 0


async def test_spool_writes_never_run_on_the_event_loop_and_keep_their_order(
    store: TranscriptStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fsyncs_on: list[str] = []
    real_fsync = os.fsync

    def watched(fd: int) -> None:
        fsyncs_on.append(threading.current_thread().name)
        real_fsync(fd)

    flaky = FlakyStore(store)
    recorder = recorder_for(flaky, tmp_path, mode="buffer", queue=1)
    await recorder.start()
    try:
        flaky.down = True
        monkeypatch.setattr(os, "fsync", watched)
        loop_thread = threading.current_thread().name
        for i in range(30):
            recorder.record(exchange(i))  # the queue holds 1: the rest is spilled at once
        await recorder.flush()
        assert fsyncs_on, "nothing was spooled"
        assert loop_thread not in fsyncs_on, "a spool fsync ran on the event loop"
        spooled = [Draft.from_bytes(p).row.id for path in recorder.spool.files() for p in recorder.spool.read(path)]
        assert sorted(spooled) == [f"req_{i:04d}" for i in range(30)]  # nothing lost
        assert [i for i in spooled if i != "req_0000"] == sorted(i for i in spooled if i != "req_0000")  # in order
        monkeypatch.undo()
        flaky.down = False
        assert await recorder.replay_spool() == 30
    finally:
        await recorder.close()


async def test_retention_purges_old_transcripts_by_itself(store: TranscriptStore, tmp_path: Path) -> None:
    recorder = recorder_for(store, tmp_path, retention_days=2, retention_interval=0.05)
    await recorder.start()
    try:
        await asyncio.sleep(0.1)  # past the first purge round: what follows must be caught by a later one
        now = time.time()
        await store.write([make_row(1, created=now - 3 * 86400), make_row(2, created=now - 60)])

        async def purged() -> bool:
            return await store.get("req_0001") is None

        await eventually(purged, seconds=5)  # the recorder's own periodic task, no command run
        recorder.record(exchange(3))
        await recorder.flush()
        await asyncio.sleep(0.2)  # a few more purge rounds: recent rows stay
        assert {r.id for r in await store.query(Query())} == {"req_0002", "req_0003"}
    finally:
        await recorder.close()


async def test_a_provider_with_only_wrap_and_unwrap_runs_everything(store: TranscriptStore, tmp_path: Path) -> None:
    kms = FakeKms()
    assert not hasattr(kms, "legacy_spool_key")
    flaky = FlakyStore(store)
    recorder = recorder_for(flaky, tmp_path, mode="buffer", queue=2, provider=kms)
    await recorder.start()
    try:
        recorder.record(exchange(1))
        await recorder.flush()
        flaky.down = True
        for i in range(2, 8):
            recorder.record(exchange(i, tenant="beta" if i % 2 else "acme"))
        await recorder.flush()
        assert recorder.spool.pending() >= 1  # the spool key is wrapped by the KMS too
        assert recorder.spool.key_master_id == "kms-v1"
        kms.rotate()
        assert await asyncio.to_thread(recorder.spool.rewrap_key)
        flaky.down = False
        assert await recorder.replay_spool() == 6
    finally:
        await recorder.close()
    await store.open()
    keys = DataKeys(store, kms)
    assert await keys.rewrap_all() == (1, 1)  # acme (made under v1); beta was made at replay, under v2
    assert await keys.wrapped_by() == {"kms-v2": 2}
    reader = TranscriptReader(keys)
    for row in await store.query(Query(limit=100)):
        content = await reader.content(row)
        assert content is not None and content["request_client"]["text"].startswith("Maria Gonzalez")
    assert set(kms.calls) == {"wrap", "unwrap"}
    assert len(await keys.hash_key("acme")) == 32


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


async def test_a_policy_blocked_exchange_is_recorded_as_blocked(
    settings: Settings, detector: PresidioDetector, aiohttp_server: Server, fake_upstream: FakeUpstream
) -> None:
    app = create_app(settings, detector=detector)
    server = await aiohttp_server(app)
    async with openai.AsyncOpenAI(
        base_url=str(server.make_url("/v1")), api_key="sk", max_retries=0, default_headers={"X-PII-Policy": "strict"}
    ) as client:
        messages: Any = [{"role": "user", "content": "Charge card 4111 1111 1111 1111 please."}]
        with pytest.raises(openai.BadRequestError) as refused:
            await client.chat.completions.create(model="m", messages=messages)
    assert fake_upstream.requests == []  # never forwarded
    recorder = app[PARTS].recorder
    assert recorder is not None
    await recorder.flush()
    rows = await recorder.store.query(Query())
    assert [(r.id, r.status, r.outcome, r.policy) for r in rows] == [
        (refused.value.response.headers["x-request-id"], 400, "blocked", "strict")
    ]
    assert rows[0].entity_counts == {"CREDIT_CARD": 1}
    await server.close()


def _unopenable_sqlite(settings: Settings, mode: str) -> tuple[Settings, Path]:
    """Settings whose SQLite store cannot be opened: its file's path is taken by a folder."""
    blocker = settings.data_dir / "transcripts.db"
    blocker.mkdir(parents=True)
    transcripts = settings.transcripts.model_copy(update={"on_store_failure": mode, "retention_days": 0})
    return settings.model_copy(update={"transcripts": transcripts}), blocker


async def test_fail_closed_serves_503_until_a_store_that_was_down_at_start_opens(
    settings: Settings, detector: PresidioDetector, aiohttp_server: Server
) -> None:
    configured, blocker = _unopenable_sqlite(settings, "fail_closed")
    app = create_app(configured, detector=detector)
    server = await aiohttp_server(app)  # the old code failed here: the store's open raised at start
    recorder = app[PARTS].recorder
    assert recorder is not None
    messages: Any = [{"role": "user", "content": PROMPT}]
    async with openai.AsyncOpenAI(base_url=str(server.make_url("/v1")), api_key="sk", max_retries=0) as client:
        with pytest.raises(openai.InternalServerError) as refused:
            await client.chat.completions.create(model="m", messages=messages)
        assert refused.value.status_code == 503
        body: Any = refused.value.body
        assert body["code"] == "transcripts_unavailable"
        assert refused.value.response.headers.get("retry-after") == "1"
        async with ClientSession() as probe, probe.get(server.make_url("/readyz")) as readyz:
            assert readyz.status == 503
            assert (await readyz.json())["status"] == "transcripts_unavailable"
        blocker.rmdir()  # the store can be opened now

        async def accepting() -> bool:
            return recorder.accepting

        await eventually(accepting)
        answer = await client.chat.completions.create(model="m", messages=messages)
    await recorder.flush()
    rows = await recorder.store.query(Query())
    assert [r.status for r in rows] == [503, 200]  # the refusal is recorded too, once the store is back
    assert answer.choices[0].message.content == PROMPT
    await server.close()


async def test_buffer_mode_serves_and_spools_when_the_store_is_down_at_start(
    settings: Settings, detector: PresidioDetector, aiohttp_server: Server
) -> None:
    configured, blocker = _unopenable_sqlite(settings, "buffer")
    app = create_app(configured, detector=detector)
    server = await aiohttp_server(app)
    recorder = app[PARTS].recorder
    assert recorder is not None
    recorder.replay_interval = 0.05
    messages: Any = [{"role": "user", "content": PROMPT}]
    async with openai.AsyncOpenAI(base_url=str(server.make_url("/v1")), api_key="sk", max_retries=0) as client:
        for _ in range(3):
            await client.chat.completions.create(model="m", messages=messages)
    await recorder.flush()
    assert recorder.spool.pending() >= 1
    for path in recorder.spool.directory.iterdir():
        for value in VALUES:
            assert value.encode() not in path.read_bytes()
    blocker.rmdir()
    await eventually(lambda: _spool_empty(recorder))
    rows = await recorder.store.query(Query())
    assert [r.status for r in rows] == [200, 200, 200]
    await server.close()
