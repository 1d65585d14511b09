"""Transcripts under failure, with real gateway processes: ``kill -9`` with 200 exchanges in flight on the
SQLite store, and two replicas sharing one PostgreSQL store through a tenant's first requests and a
master-key rotation under load.

What "acknowledged" means here: a transcript is acknowledged once the store has committed it (the
SQLite transaction returned: WAL + ``synchronous=FULL``; or the PostgreSQL transaction committed).
The gateway records an exchange *after* answering it (``TranscriptRecorder.record`` only queues), so a
``kill -9`` loses the transcripts still queued, answered or not; it must never leave one half-written
or make the store unreadable. A graceful stop (SIGTERM) drains the queue, so there nothing is lost.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import secrets
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from gateway.crypto import LocalKeyProvider, Sealed, key_id_of
from gateway.envelope import DataKeys
from gateway.exchange import Exchange
from gateway.metrics import Metrics
from gateway.settings import TranscriptSettings
from gateway.spool import Spool
from gateway.store import Query
from gateway.store.sqlite import SqliteStore
from gateway.transcripts import TranscriptRecorder
from tests.fake_upstream import FakeUpstream
from tests.test_cli import free_port
from tests.test_transcripts import postgres_schema
from tests.test_transcripts_cli import BASE_ENV, cli

ServerFactory = Callable[[web.Application], Awaitable[TestServer]]
DONE = b"data: [DONE]\n\n"


@dataclass
class GatewayProcess:
    """``python -m gateway serve`` in a subprocess; its log goes to a file (a pipe could fill and block it)."""

    proc: subprocess.Popen[bytes]
    url: str
    log: Path

    @classmethod
    def start(cls, args: Sequence[str], log: Path, env: Mapping[str, str] | None = None) -> GatewayProcess:
        port = free_port()
        with log.open("wb") as sink:
            proc = subprocess.Popen(
                [sys.executable, "-m", "gateway", "serve", "--port", str(port), "--workers", "0", *args],
                stdout=subprocess.DEVNULL, stderr=sink, env={**BASE_ENV, **(env or {})},
            )  # fmt: skip
        return cls(proc, f"http://127.0.0.1:{port}", log)

    async def ready(self, seconds: float = 120) -> None:
        deadline = time.monotonic() + seconds
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise AssertionError(f"gateway exited early:\n{self.log.read_text()[-3000:]}")
                with contextlib.suppress(aiohttp.ClientConnectionError):
                    async with session.get(self.url + "/readyz") as r:
                        if r.status == 200:
                            return
                await asyncio.sleep(0.1)
        raise AssertionError(f"gateway never became ready:\n{self.log.read_text()[-3000:]}")

    async def wait(self, seconds: float = 60) -> int:
        """Wait for the exit without blocking the loop (the fake upstream in this loop may still serve it)."""
        deadline = time.monotonic() + seconds
        while self.proc.poll() is None:
            if time.monotonic() > deadline:
                raise AssertionError("gateway did not exit")
            await asyncio.sleep(0.05)
        return self.proc.returncode

    async def stop(self) -> None:
        """SIGTERM: a graceful stop drains the transcript queue. Must exit 0."""
        self.proc.send_signal(signal.SIGTERM)
        assert await self.wait() == 0, self.log.read_text()[-3000:]

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


@contextlib.asynccontextmanager
async def gateways(*started: GatewayProcess) -> AsyncIterator[None]:
    try:
        yield
    finally:
        for g in started:
            g.kill()


def prompt(i: int) -> str:
    return f"Hi, I'm Maria Gonzalez, write to maria.gonzalez@example.com. This is request {i}."


@dataclass
class Outcome:
    request_id: str | None = None
    status: int | None = None
    complete: bool = False


async def post_chat(
    session: aiohttp.ClientSession, url: str, i: int, *, stream: bool, key: str = "sk-client"
) -> Outcome:
    """One raw chat request; a dropped connection is an outcome, not an error."""
    outcome = Outcome()
    body = {"model": "m", "stream": stream, "messages": [{"role": "user", "content": prompt(i)}]}
    try:
        async with session.post(
            url + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}
        ) as resp:
            outcome.request_id, outcome.status = resp.headers.get("X-Request-Id"), resp.status
            answer = await resp.read()
            outcome.complete = resp.status == 200 and (answer.endswith(DONE) if stream else b"Maria" in answer)
    except (aiohttp.ClientError, ConnectionError):
        pass
    return outcome


def sqlite_check(db: Path) -> tuple[str, dict[str, bytes | None]]:
    """integrity_check and every row's sealed content, read with plain sqlite3 (recovers the WAL)."""
    with contextlib.closing(sqlite3.connect(db)) as conn:
        integrity = conn.execute("PRAGMA integrity_check").fetchone()[0]
        rows = {r[0]: r[1] for r in conn.execute("SELECT id, content FROM transcripts")}
    return integrity, rows


@pytest.mark.slow
async def test_kill_9_with_200_exchanges_in_flight_leaves_a_clean_readable_store(
    aiohttp_server: ServerFactory, tmp_path: Path
) -> None:
    upstream = FakeUpstream(mode="slow_stream")  # ~30 events 50 ms apart: each stream lasts ~1.5 s
    upstream_url = str((await aiohttp_server(upstream.app())).make_url("/v1"))
    data = tmp_path / "data"
    args = ["--upstream", upstream_url, "--data-dir", str(data)]
    unlimited = {"PII_GATEWAY_LIMITS__MAX_CONCURRENT_PER_KEY": "1000"}  # all 200 are one pass-through tenant
    first = GatewayProcess.start(args, tmp_path / "first.log", unlimited)
    async with gateways(first):
        await first.ready()
        outcomes = [Outcome() for _ in range(200)]
        finished = asyncio.Event()
        done = 0

        async def one(session: aiohttp.ClientSession, i: int) -> None:
            nonlocal done
            outcomes[i] = await post_chat(session, first.url, i, stream=True)
            done += outcomes[i].complete
            if done >= 60:
                finished.set()

        timeout = aiohttp.ClientTimeout(total=120)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=timeout) as session:
            tasks = [asyncio.create_task(one(session, i)) for i in range(200)]
            await asyncio.wait_for(finished.wait(), 90)
            first.proc.send_signal(signal.SIGKILL)  # mid-way: ~60 answered, the rest in detection or streaming
            await first.wait()
            await asyncio.gather(*tasks)
        assert first.proc.returncode == -signal.SIGKILL
        assert {o.status for o in outcomes} <= {200, None}, "every request got through to the upstream"

        # The crashed state itself, before anything reopens it: a copy of db + WAL, read by plain sqlite3.
        crash = tmp_path / "crash"
        crash.mkdir()
        for name in ("transcripts.db", "transcripts.db-wal", "transcripts.db-shm"):
            if (data / name).exists():
                shutil.copy2(data / name, crash / name)
        integrity, crashed_rows = sqlite_check(crash / "transcripts.db")
        assert integrity == "ok"
        for blob in crashed_rows.values():
            assert blob is not None
            Sealed.from_bytes(blob)  # a whole sealed record, never a torn one

        # Restart on the same data dir: it opens the store and records again.
        second = GatewayProcess.start(args, tmp_path / "second.log", unlimited)
        async with gateways(second):
            await second.ready()
            async with aiohttp.ClientSession() as session:
                after = [await post_chat(session, second.url, 1000 + i, stream=False) for i in range(5)]
            assert all(o.complete for o in after)
            await second.stop()

    d = ["--data-dir", str(data)]
    listed, exported = await asyncio.gather(
        cli("transcripts", "list", "--limit", "1000", *d), cli("transcripts", "export", "--format", "jsonl", *d)
    )
    stored = {line["id"]: line for line in exported.ok().json_lines()}
    assert set(listed.ok().listed_ids()) == set(stored)
    assert "0 could not be decrypted" in exported.stderr
    new_ids = {o.request_id for o in after}
    assert new_ids <= set(stored)
    assert set(stored) - new_ids == set(crashed_rows)  # the restart neither lost nor invented a row
    seen = {o.request_id for o in outcomes if o.request_id}
    answered = {o.request_id for o in outcomes if o.complete}
    for rid in set(crashed_rows):
        row = stored[rid]
        assert rid in seen
        assert (row["status"], row["outcome"], row["stream"]) == (200, "ok", True)
        content = row["content"]
        assert "Maria Gonzalez" not in content["request_upstream"]["text"]  # the default policy: redacted side
        assert content["response_upstream"]["text"].endswith(DONE.decode())  # a whole exchange, not a torn one
    integrity, _ = sqlite_check(data / "transcripts.db")
    assert integrity == "ok"
    assert list(data.glob("spool/*.spool")) == []  # nothing was left to replay
    print(
        f"\nkill -9: {len(answered)} answered before the kill, {len(seen) - len(answered)} cut mid-stream, "
        f"{200 - len(seen)} never got headers; {len(crashed_rows)} transcripts committed "
        f"({len(answered - set(crashed_rows))} answered but still queued, lost by design); integrity ok"
    )


@dataclass
class Load:
    """Requests answered (X-Request-Id of every 200) and anything else that came back."""

    answered: set[str] = field(default_factory=set)
    other: list[Outcome] = field(default_factory=list)

    def add(self, outcome: Outcome) -> None:
        if outcome.complete and outcome.request_id:
            self.answered.add(outcome.request_id)
        else:
            self.other.append(outcome)


async def pg_value(dsn: str, sql: str, *args: object) -> object:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetchval(sql, *args)
    finally:
        await conn.close()


async def pg_count(dsn: str, sql: str, *args: object) -> int:
    value = await pg_value(dsn, sql, *args)
    assert isinstance(value, int)
    return value


@pytest.mark.slow
async def test_two_replicas_share_one_postgres_store_through_first_use_and_rotation(
    aiohttp_server: ServerFactory, tmp_path: Path
) -> None:
    dsn = await postgres_schema()
    if dsn is None:
        pytest.skip("PostgreSQL is not reachable")
    upstream_url = str((await aiohttp_server(FakeUpstream().app())).make_url("/v1"))
    old, new = secrets.token_bytes(32), secrets.token_bytes(32)
    old_b64, new_b64 = base64.b64encode(old).decode(), base64.b64encode(new).decode()
    shared = {"PII_GATEWAY_KEYS_FILE": str(tmp_path / "keys.yaml"), "PII_GATEWAY_TRANSCRIPTS__DSN": dsn}
    created = (await cli("keys", "create", "--tenant", "newco", "--data-dir", str(tmp_path / "cli"), env=shared)).ok()
    key = created.stdout.strip()

    env = shared | {"PII_GATEWAY_MASTER_KEY": old_b64}
    new_list = shared | {"PII_GATEWAY_MASTER_KEY": f"{new_b64},{old_b64}"}
    replicas = [
        GatewayProcess.start(["--upstream", upstream_url, "--data-dir", str(tmp_path / n)], tmp_path / f"{n}.log", env)
        for n in ("a", "b")
    ]
    load = Load()
    async with gateways(*replicas), aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        await asyncio.gather(*(r.ready() for r in replicas))
        # newco's first requests, at both replicas at once: both race to create its data key.
        first = await asyncio.gather(
            *(post_chat(session, r.url, i, stream=i % 2 == 0, key=key) for i in range(8) for r in replicas)
        )
        for outcome in first:
            load.add(outcome)
        assert load.other == []
        assert await pg_count(dsn, "SELECT count(*) FROM data_keys WHERE tenant = 'newco'") == 1
        newco_key = await pg_value(dsn, "SELECT key_id FROM data_keys WHERE tenant = 'newco'")
        deadline = time.monotonic() + 20
        while await pg_count(dsn, "SELECT count(*) FROM transcripts") < len(load.answered):
            assert time.monotonic() < deadline, "the replicas did not commit their transcripts"
            await asyncio.sleep(0.1)
        from_a, from_b = await asyncio.gather(
            *(cli("transcripts", "export", "--format", "jsonl", "--data-dir", str(tmp_path / n), env=env) for n in "ab")
        )
        for exported in (from_a, from_b):
            assert {line["id"] for line in exported.ok().json_lines()} == load.answered
            assert "0 could not be decrypted" in exported.stderr

        # Rotation while both keep serving newco: the replicas still hold only the old key.
        stop = asyncio.Event()

        async def client(replica: GatewayProcess, n: int) -> None:
            i = 0
            while not stop.is_set():
                load.add(await post_chat(session, replica.url, n * 10_000 + i, stream=i % 3 == 0, key=key))
                i += 1

        clients = [asyncio.create_task(client(r, n)) for n, r in enumerate(replicas * 3)]
        await asyncio.sleep(1.0)
        before_rotation = len(load.answered)
        rotated = await cli("keys", "rotate", "--data-dir", str(tmp_path / "cli"), env=new_list)
        during = len(load.answered) - before_rotation
        await asyncio.sleep(1.0)
        stop.set()
        await asyncio.gather(*clients)
        await asyncio.gather(*(r.stop() for r in replicas))  # drain both queues
    assert f"re-wrapped 1 data keys under {key_id_of(new)}" in rotated.ok().stdout
    assert load.other == []
    assert during > 0, "no request was answered while the rotation ran"

    assert await pg_count(dsn, "SELECT count(*) FROM transcripts") == len(load.answered)
    assert await pg_count(dsn, "SELECT count(*) FROM data_keys WHERE master_key_id = $1", key_id_of(new)) == 1
    assert await pg_value(dsn, "SELECT key_id FROM data_keys WHERE tenant = 'newco'") == newco_key  # re-wrapped only
    new_only = shared | {"PII_GATEWAY_MASTER_KEY": new_b64}
    from_a, from_b, master = await asyncio.gather(
        cli("transcripts", "export", "--format", "jsonl", "--data-dir", str(tmp_path / "a"), env=new_list),
        cli("transcripts", "export", "--format", "jsonl", "--data-dir", str(tmp_path / "b"), env=new_only),
        cli("keys", "master", "--data-dir", str(tmp_path / "cli"), env=new_list),
    )
    for exported in (from_a, from_b):
        assert {line["id"] for line in exported.ok().json_lines()} == load.answered  # nothing lost, all readable
        assert "0 could not be decrypted" in exported.stderr
    assert f"{key_id_of(new)} (current): wraps 1 data keys" in master.ok().stdout
    assert f"{key_id_of(old)}: wraps 0 data keys" in master.stdout
    print(
        f"\nreplicas: {len(load.answered)} answered and recorded ({during} while `keys rotate` ran); "
        f"1 data key for newco; all readable with the new key alone"
    )


async def test_a_transcript_that_cannot_be_sealed_does_not_stop_the_writer(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "t.db")
    await store.open()
    rotated_elsewhere = LocalKeyProvider([b"\x02" * 32])
    await DataKeys(store, rotated_elsewhere).current("acme")  # acme's key wrapped by a key we do not hold
    mine = LocalKeyProvider([b"\x01" * 32])
    settings = TranscriptSettings(retention_days=0)
    recorder = TranscriptRecorder(store, DataKeys(store, mine), Spool(tmp_path / "spool", mine), settings, Metrics())
    await recorder.start()
    try:
        for i, tenant in enumerate(("acme", "other")):
            ex = Exchange(route="chat.completions", request_id=f"req_{i}", tenant=tenant)
            ex.status, ex.capture.request_upstream = 200, b"x"
            recorder.record(ex)
            await asyncio.sleep(0.3)
        written = [r.id for r in await store.query(Query())]
        assert written == ["req_1"], "a healthy tenant's transcript must still be written"
    finally:
        await recorder.close(drain_seconds=0.5)
