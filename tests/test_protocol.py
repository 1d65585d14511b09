"""The connection layer: request heads that are too big, malformed or too slow, against the real app.

aiohttp's own answers quote the offending bytes (an ``Authorization`` header, a cookie) in a text/plain
400; the gateway's are OpenAI-shaped, numbered 431 where the head is too big, and quote nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import aiohttp
import orjson
import pytest

from gateway.app import create_app
from gateway.detector import PresidioDetector
from gateway.policy import PolicyBook
from gateway.settings import LimitSettings, Settings
from tests.conftest import ServerFactory, raw_connection
from tests.fake_upstream import FakeUpstream

SECRET = "sk-proj-HEADERSECRET0123456789abcdef"
START = b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"


async def exchange(url: str, raw: bytes) -> tuple[int, bytes, bytes]:
    """Send raw bytes, read until the server closes: (status, head, body)."""
    async with raw_connection(url) as (reader, writer):
        writer.write(raw)
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), 30)
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), head, body


@pytest.mark.parametrize(
    ("head", "status", "code"),
    [
        (START + b"Authorization: Bearer " + SECRET.encode() + b"x" * 20_000 + b"\r\n\r\n", 431, None),
        (START + b"Cookie: name=" + SECRET.encode() + b"y" * 40_000 + b"\r\n\r\n", 431, None),
        (START + b"".join(b"X-H%d: 1\r\n" % i for i in range(300)) + b"\r\n", 431, None),
        (b"POST /v1/chat/completions?" + SECRET.encode() + b"z" * 20_000 + b" HTTP/1.1\r\nHost: gw\r\n\r\n", 431, None),
        (b"BR\x00KEN " + SECRET.encode() + b"\r\n\r\n", 400, "invalid_request"),
        (START + b"Bad Header " + SECRET.encode() + b"\r\n\r\n", 400, "invalid_request"),
    ],
    ids=["long authorization", "long cookie", "too many headers", "long request line", "bad method", "bad header"],
)
async def test_a_bad_head_gets_a_json_error_that_quotes_nothing(
    gateway_url: str,
    fake_upstream: FakeUpstream,
    caplog: pytest.LogCaptureFixture,
    head: bytes,
    status: int,
    code: str | None,
) -> None:
    caplog.set_level(logging.DEBUG)
    got, raw_head, body = await exchange(gateway_url, head)
    assert got == status
    assert b"application/json" in raw_head.lower()
    error = orjson.loads(body)["error"]
    assert error["code"] == (code or "request_header_fields_too_large")
    assert error["type"] == "invalid_request_error"
    assert SECRET not in body.decode("latin-1")
    assert "HEADERSECRET" not in caplog.text
    # The log line and the answer carry the same request id, as every other exchange does.
    request_id = raw_head.split(b"X-Request-Id: ", 1)[1].split(b"\r\n", 1)[0].decode()
    assert any(getattr(r, "request_id", None) == request_id for r in caplog.records)
    assert fake_upstream.requests == []


async def test_the_gateway_still_serves_after_bad_heads(gateway_url: str, fake_upstream: FakeUpstream) -> None:
    for _ in range(3):
        status, _, _ = await exchange(gateway_url, START + b"X-Long: " + b"a" * 20_000 + b"\r\n\r\n")
        assert status == 431
    async with aiohttp.ClientSession() as session:
        body = {"model": "m", "messages": [{"role": "user", "content": "hello"}]}
        async with session.post(gateway_url + "/v1/chat/completions", json=body) as r:
            assert r.status == 200
    assert len(fake_upstream.requests) == 1


async def test_a_head_that_never_completes_is_cut_off(
    settings: Settings,
    detector: PresidioDetector,
    policy_book: PolicyBook,
    gateway_server: ServerFactory,
) -> None:
    """A slowloris head is closed once ``header_read_seconds`` pass, however steadily it dribbles."""
    settings = settings.model_copy(update={"limits": LimitSettings(header_read_seconds=0.5)})
    server = await gateway_server(create_app(settings, detector=detector, policies=policy_book))
    sent = 0
    async with raw_connection(str(server.make_url(""))) as (reader, writer):
        with contextlib.suppress(ConnectionError):
            writer.write(START + b"X-Slow: ")
            # A bound, not a timing: a connection still open after 200 dribbles (≥ 10 s) was never cut off.
            while sent < 200 and not reader.at_eof():
                writer.write(b"x")
                await writer.drain()
                sent += 1
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(reader.read(1), 0.05)
    assert sent < 200, "the slow head was never cut off"
