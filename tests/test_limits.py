"""Limits: concurrency caps with Retry-After, per-key rate limits (memory and real Redis), size limits."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
import redis.asyncio as redis_asyncio
from aiohttp.test_utils import TestServer

from gateway.app import create_app
from gateway.detector import PresidioDetector
from gateway.errors import Overloaded, RateLimited
from gateway.keys import KeyRing
from gateway.limits import Admission, RateLimiter
from gateway.settings import LimitSettings, Settings
from tests.fake_upstream import FakeUpstream

Server = Callable[..., Awaitable[TestServer]]
REDIS_URL = "redis://127.0.0.1:6379/0"


def body(text: str = "hello") -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": text}]}


def test_admission_caps_overall_and_per_key() -> None:
    admission = Admission(LimitSettings(max_concurrent=3, max_concurrent_per_key=2))
    with admission.enter("a"), admission.enter("a"):
        with pytest.raises(RateLimited) as per_key, admission.enter("a"):
            pass
        assert per_key.value.retry_after == 1
        with admission.enter("b"), pytest.raises(Overloaded), admission.enter("c"):
            pass
    assert admission.total == 0
    assert not admission.per_key


async def test_memory_rate_limit_counts_requests_and_tokens() -> None:
    limiter = RateLimiter(LimitSettings(requests_per_minute=2, tokens_per_minute=100))
    await limiter.check("k")
    await limiter.check("k")
    with pytest.raises(RateLimited) as info:
        await limiter.check("k")
    assert info.value.retry_after is not None
    assert 1 <= info.value.retry_after <= 61
    await limiter.check("other")
    await limiter.spend("other", 150)
    with pytest.raises(RateLimited, match="Token rate limit"):
        await limiter.check("other")


async def test_redis_rate_limit_is_shared_between_replicas() -> None:
    client = redis_asyncio.from_url(REDIS_URL)
    try:
        await client.ping()
    except (OSError, redis_asyncio.ConnectionError):
        await client.aclose()
        pytest.skip(f"Redis is not reachable at {REDIS_URL}")
    key = "test-" + secrets.token_hex(6)
    try:
        settings = LimitSettings(requests_per_minute=3, redis_url=REDIS_URL)
        one, two = RateLimiter(settings, client), RateLimiter(settings, client)
        await one.check(key)
        await two.check(key)
        await one.check(key)
        with pytest.raises(RateLimited):
            await two.check(key)  # the fourth request in the window, whichever replica gets it
    finally:
        await client.aclose()


async def test_over_the_cap_gets_429_with_retry_after_through_the_gateway(
    settings: Settings, detector: PresidioDetector, aiohttp_server: Server, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.mode = "slow_stream"
    limited = settings.model_copy(update={"limits": LimitSettings(max_concurrent_per_key=2, max_concurrent=10)})
    server = await aiohttp_server(create_app(limited, detector=detector))
    url = str(server.make_url("/v1/chat/completions"))
    stream = body("x" * 200) | {"stream": True}
    async with aiohttp.ClientSession() as session:
        open_streams = [await session.post(url, json=stream) for _ in range(2)]
        async with session.post(url, json=body()) as r:
            assert r.status == 429
            assert r.headers["Retry-After"] == "1"
            assert (await r.json())["error"]["code"] == "rate_limit_exceeded"
        for response in open_streams:
            await response.read()
            response.release()
        async with session.post(url, json=body()) as r:
            assert r.status == 200


async def test_rate_limit_per_key_through_the_gateway(
    settings: Settings, detector: PresidioDetector, aiohttp_server: Server
) -> None:
    ring, key = KeyRing({}).create("acme", None)
    ring, other = ring.create("beta", None)
    ring.save(settings.resolved_keys_file())
    limited = settings.model_copy(update={"limits": LimitSettings(requests_per_minute=2)})
    server = await aiohttp_server(create_app(limited, detector=detector))
    url = str(server.make_url("/v1/chat/completions"))
    statuses = []
    async with aiohttp.ClientSession() as session:
        for k in (key, key, key, other):
            async with session.post(url, json=body(), headers={"Authorization": f"Bearer {k}"}) as r:
                statuses.append(r.status)
    assert statuses == [200, 200, 429, 200]


async def test_message_and_character_limits(
    settings: Settings, detector: PresidioDetector, aiohttp_server: Server, fake_upstream: FakeUpstream
) -> None:
    limited = settings.model_copy(update={"limits": LimitSettings(max_messages=3, max_chars=1000)})
    server = await aiohttp_server(create_app(limited, detector=detector))
    url = str(server.make_url("/v1/chat/completions"))
    many = {"model": "m", "messages": [{"role": "user", "content": "hi"}] * 4}
    async with aiohttp.ClientSession() as session:
        async with session.post(url, json=many) as r:
            assert r.status == 413
            assert "text parts" in (await r.json())["error"]["message"]
        async with session.post(url, json=body("y" * 1001)) as r:
            assert r.status == 413
    assert fake_upstream.requests == []


async def test_concurrent_burst_never_queues_without_bound(
    settings: Settings, detector: PresidioDetector, aiohttp_server: Server, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.mode = "slow_stream"
    limited = settings.model_copy(update={"limits": LimitSettings(max_concurrent=4, max_concurrent_per_key=100)})
    server = await aiohttp_server(create_app(limited, detector=detector))
    url = str(server.make_url("/v1/chat/completions"))
    async with aiohttp.ClientSession() as session:

        async def one() -> int:
            async with session.post(url, json=body("z" * 40) | {"stream": True}) as r:
                await r.read()
                return r.status

        statuses = await asyncio.gather(*(one() for _ in range(12)))
    assert statuses.count(200) >= 4
    assert set(statuses) <= {200, 503}
    assert 503 in statuses
