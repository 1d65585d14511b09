"""Slow and oversized clients against the real gateway app: they cost a socket each, not the service.

Slowloris-style connections dribble header bytes, or a declared body, while ordinary clients keep
being served. Oversized bodies, declared or chunked, are refused with 413 before they are read whole,
and nothing reaches the upstream. No timing is asserted: only who gets answered.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import aiohttp
import orjson
from aiohttp import web
from aiohttp.test_utils import TestServer

from gateway.app import create_app
from gateway.detector import PresidioDetector
from gateway.policy import PolicyBook
from gateway.settings import LimitSettings, Settings
from tests.conftest import address, raw_connection
from tests.fake_upstream import FakeUpstream

SLOW_HEADERS = 50
SLOW_BODIES = 20
LIMIT = 8 * 1024 * 1024
PROMPT = "Please write to John Smith at john.smith@example.com."
SLOW_HEAD = b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\nX-Slow: "
SLOW_BODY = (
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
    b"Content-Length: 100000\r\n\r\n"
    b'{"model": "m", "messages": [{"role": "user", "content": "'
)
ServerFactory = Callable[[web.Application], Awaitable[TestServer]]


class SlowClient:
    """One connection that sends a request a few bytes at a time and never finishes it."""

    def __init__(self, host: str, port: int, head: bytes, warmed: asyncio.Event) -> None:
        self.host, self.port, self.head = host, port, head
        self.dribbles = 0
        self.warmed = warmed
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def run(self, body_bytes: bool, stop: asyncio.Event) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        self.writer.write(self.head)
        await self.writer.drain()
        filler = b"a" if body_bytes else b"x"
        while not stop.is_set():
            self.writer.write(filler)
            await self.writer.drain()
            self.dribbles += 1
            if self.dribbles == 3:
                self.warmed.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.05)

    async def answered_or_closed(self) -> bool:
        """True if the server sent anything back or closed the connection."""
        assert self.reader is not None
        try:
            await asyncio.wait_for(self.reader.read(1), 0.01)
        except TimeoutError:
            return False
        return True

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(ConnectionError):
                await self.writer.wait_closed()


async def test_slow_headers_and_slow_bodies_do_not_starve_other_clients(
    gateway_url: str, fake_upstream: FakeUpstream
) -> None:
    host, port = address(gateway_url)
    slow_head, slow_body = SLOW_HEAD, SLOW_BODY
    warmed = [asyncio.Event() for _ in range(SLOW_HEADERS + SLOW_BODIES)]
    clients = [SlowClient(host, port, slow_head, warmed[i]) for i in range(SLOW_HEADERS)]
    clients += [SlowClient(host, port, slow_body, warmed[SLOW_HEADERS + i]) for i in range(SLOW_BODIES)]
    stop = asyncio.Event()
    tasks = [asyncio.create_task(c.run(i >= SLOW_HEADERS, stop)) for i, c in enumerate(clients)]
    try:
        # Every slow client is connected and mid-request before the ordinary clients start.
        await asyncio.wait_for(asyncio.gather(*(w.wait() for w in warmed)), 60)
        statuses = []
        async with aiohttp.ClientSession() as session:
            for i in range(12):
                body = {"model": "m", "stream": i % 2 == 1, "messages": [{"role": "user", "content": PROMPT}]}
                async with session.post(gateway_url + "/v1/chat/completions", json=body) as r:
                    await r.read()
                    statuses.append(r.status)
                async with session.get(gateway_url + "/healthz") as r:
                    statuses.append(r.status)
        assert statuses == [200] * 24
        assert len(fake_upstream.requests) == 12
        # The slow ones are still there, unanswered, still dribbling: they were never the service's problem.
        before = [c.dribbles for c in clients]
        await asyncio.sleep(0.2)
        assert all(c.dribbles > b for c, b in zip(clients, before, strict=True))
        assert not any([await c.answered_or_closed() for c in clients])
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        for c in clients:
            await c.close()


async def test_slow_bodies_do_not_use_up_the_concurrency_slots(
    settings: Settings,
    fake_upstream: FakeUpstream,
    detector: PresidioDetector,
    policy_book: PolicyBook,
    gateway_server: ServerFactory,
) -> None:
    """In pass-through mode every anonymous client shares one key (the default tenant) for the caps."""
    settings = settings.model_copy(update={"limits": LimitSettings(max_concurrent_per_key=4)})
    server = await gateway_server(create_app(settings, detector=detector, policies=policy_book))
    url = str(server.make_url(""))
    host, port = address(url)
    warmed = [asyncio.Event() for _ in range(6)]
    clients = [SlowClient(host, port, SLOW_BODY, w) for w in warmed]
    stop = asyncio.Event()
    tasks = [asyncio.create_task(c.run(True, stop)) for c in clients]
    try:
        await asyncio.wait_for(asyncio.gather(*(w.wait() for w in warmed)), 60)
        async with aiohttp.ClientSession() as session:
            body = {"model": "m", "messages": [{"role": "user", "content": PROMPT}]}
            async with session.post(url + "/v1/chat/completions", json=body) as r:
                await r.read()
                assert r.status == 200, "six slow uploads locked every other client of the tenant out"
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        for c in clients:
            await c.close()


async def read_status_and_body(reader: asyncio.StreamReader) -> tuple[int, dict[str, object]]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
    status = int(head.split(b" ", 2)[1])
    length = next(
        int(line.split(b":", 1)[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")
    )
    body = await asyncio.wait_for(reader.readexactly(length), 30)
    return status, orjson.loads(body)


async def test_a_declared_oversized_body_is_refused_before_it_is_sent(
    gateway_url: str, fake_upstream: FakeUpstream
) -> None:
    async with raw_connection(gateway_url) as (reader, writer):
        writer.write(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {LIMIT + 1}\r\n\r\n".encode()
            + b'{"model": "m", "messages": [{"role": "user", "content": "'
        )
        await writer.drain()
        # Only a few bytes of the 8 MiB + 1 were sent: the answer cannot have waited for the rest.
        status, body = await read_status_and_body(reader)
    assert status == 413
    assert body["error"]["code"] == "payload_too_large"  # type: ignore[index]
    assert fake_upstream.requests == []


async def test_a_chunked_body_that_grows_past_the_limit_is_refused_while_it_is_still_coming(
    gateway_url: str, fake_upstream: FakeUpstream
) -> None:
    sent = 0

    async def keep_sending(writer: asyncio.StreamWriter) -> None:
        nonlocal sent
        piece = b"x" * (256 * 1024)
        frame = f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
        # Bounded, and the terminating zero-length chunk is never sent: the body never ends, so an
        # answer proves the gateway did not wait to read it whole.
        while sent < 4 * LIMIT:
            writer.write(frame)
            await writer.drain()
            sent += len(piece)

    async with raw_connection(gateway_url) as (reader, writer):
        writer.write(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        sender = asyncio.create_task(keep_sending(writer))
        status, body = await read_status_and_body(reader)
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError, ConnectionError):
            await sender
    assert status == 413
    assert body["error"]["code"] == "payload_too_large"  # type: ignore[index]
    assert fake_upstream.requests == []
