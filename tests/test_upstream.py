"""Upstream behaviour: retries only before anything was sent, no redirects, hop-by-hop headers, TLS, SSRF guard."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import ssl
import warnings
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.app import create_app
from gateway.detector import PresidioDetector
from gateway.errors import UpstreamTimeout
from gateway.settings import (
    RetrySettings,
    Secret,
    Settings,
    SettingsError,
    UpstreamGuardSettings,
    UpstreamTimeouts,
    UpstreamTlsSettings,
)
from gateway.tls import ServerTLS
from gateway.upstream import Reply, UpstreamClient, client_headers

Server = Callable[..., Awaitable[TestServer]]
BODY = {"model": "m", "messages": [{"role": "user", "content": "hello"}]}


class Scripted:
    """An upstream that answers from a script: a list of (status, headers) before echoing 200."""

    def __init__(self, script: list[tuple[int, dict[str, str]]], answer_headers: dict[str, str] | None = None) -> None:
        self.script = list(script)
        self.calls = 0
        self.redirect_target_hit = False
        self.answer_headers = answer_headers or {}
        self.received: list[CIMultiDictProxy[str]] = []

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_post("/elsewhere", self.elsewhere)
        return app

    async def chat(self, request: web.Request) -> web.Response:
        self.calls += 1
        self.received.append(request.headers)
        await request.read()
        if self.script:
            status, headers = self.script.pop(0)
            return web.json_response({"error": {"message": f"status {status}"}}, status=status, headers=headers)
        choice = {"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}
        answer = {"id": "x", "object": "chat.completion", "created": 0, "model": "m", "choices": [choice]}
        return web.json_response(answer, headers=self.answer_headers)

    async def elsewhere(self, request: web.Request) -> web.Response:
        self.redirect_target_hit = True
        return web.json_response({})


async def gateway_for(
    settings: Settings, detector: PresidioDetector, server: Server, upstream: str, **update: Any
) -> str:
    configured = settings.model_copy(update={"upstream": upstream, **update})
    return str((await server(create_app(configured, detector=detector))).make_url("/v1/chat/completions"))


async def post(url: str, **kw: Any) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as session, session.post(url, json=BODY, **kw) as r:
        return r.status, await r.json()


async def test_429_and_503_are_retried_honouring_retry_after(
    settings: Settings, detector: PresidioDetector, aiohttp_server: Server
) -> None:
    scripted = Scripted([(429, {"Retry-After": "0"}), (503, {})])
    up = str((await aiohttp_server(scripted.app())).make_url("/v1"))
    url = await gateway_for(
        settings, detector, aiohttp_server, up, retries=RetrySettings(attempts=2, backoff_seconds=0.01)
    )
    status, body = await post(url)
    assert status == 200
    assert body["choices"][0]["message"]["content"] == "ok"
    assert scripted.calls == 3


async def test_no_retry_past_the_budget_or_for_a_long_retry_after_or_a_500(
    settings: Settings, detector: PresidioDetector, aiohttp_server: Server
) -> None:
    retries = RetrySettings(attempts=1, backoff_seconds=0.01, max_wait_seconds=2)
    cases: list[tuple[list[tuple[int, dict[str, str]]], int, int]] = [
        ([(503, {}), (503, {})], 2, 503),  # out of attempts: the last answer goes to the client
        ([(429, {"Retry-After": "3600"})], 1, 429),  # not worth waiting for: passed through at once
        ([(500, {})], 1, 500),  # may have been processed: never retried
    ]
    for script, calls, final in cases:
        scripted = Scripted(script)
        up = str((await aiohttp_server(scripted.app())).make_url("/v1"))
        url = await gateway_for(settings, detector, aiohttp_server, up, retries=retries)
        status, _ = await post(url)
        assert (status, scripted.calls) == (final, calls)


async def test_unreachable_upstream_is_retried_then_a_clean_502(
    settings: Settings, detector: PresidioDetector, aiohttp_server: Server
) -> None:
    url = await gateway_for(
        settings,
        detector,
        aiohttp_server,
        "http://127.0.0.1:9/v1",
        retries=RetrySettings(attempts=2, backoff_seconds=0.01),
    )
    status, body = await post(url)
    assert status == 502
    assert body["error"]["code"] == "upstream_error"


async def test_redirects_are_not_followed(
    settings: Settings, detector: PresidioDetector, aiohttp_server: Server
) -> None:
    scripted = Scripted([(307, {"Location": "/elsewhere"})])
    up_server = await aiohttp_server(scripted.app())
    url = await gateway_for(settings, detector, aiohttp_server, str(up_server.make_url("/v1")))
    async with aiohttp.ClientSession() as session, session.post(url, json=BODY, allow_redirects=False) as r:
        assert r.status == 307
    assert not scripted.redirect_target_hit


# --- hop-by-hop headers (RFC 9110 section 7.6.1) -----------------------------------------------------


async def test_headers_named_in_connection_are_dropped_both_ways(
    settings: Settings, detector: PresidioDetector, aiohttp_server: Server
) -> None:
    scripted = Scripted(
        [], answer_headers={"Connection": "X-Upstream-Hop", "X-Upstream-Hop": "hop", "X-Upstream-Kept": "kept"}
    )
    up = str((await aiohttp_server(scripted.app())).make_url("/v1"))
    url = await gateway_for(settings, detector, aiohttp_server, up)
    sent = {"Connection": "keep-alive, X-Client-Hop", "X-Client-Hop": "hop", "X-Client-Kept": "kept"}
    async with aiohttp.ClientSession() as session, session.post(url, json=BODY, headers=sent) as r:
        assert r.status == 200
        assert r.headers["X-Upstream-Kept"] == "kept"
        assert "X-Upstream-Hop" not in r.headers
        assert r.headers.get("Connection", "").lower() != "x-upstream-hop"
    received = scripted.received[-1]
    assert received["X-Client-Kept"] == "kept"
    assert "X-Client-Hop" not in received


async def test_connection_options_are_read_from_every_connection_line_in_any_case() -> None:
    """Both directions, at the unit level: several ``Connection`` lines, odd spacing and case."""
    headers = CIMultiDict(
        [
            ("Connection", "close ,X-One"),
            ("connection", " x-TWO, , keep-alive"),
            ("X-One", "1"),
            ("x-two", "2"),
            ("X-Three", "3"),
            ("Authorization", "Bearer sk-client"),
        ]
    )
    assert dict(client_headers(headers)) == {"X-Three": "3", "Authorization": "Bearer sk-client"}
    async with aiohttp.ClientSession() as session:
        client = UpstreamClient(session, "http://upstream/v1", UpstreamTimeouts())
        assert dict(client.outbound_headers(headers)) == {"X-Three": "3", "Authorization": "Bearer sk-client"}
        # A client may not strip the gateway's own credential by naming it: the injected key is added after.
        keyed = UpstreamClient(session, "http://upstream/v1", UpstreamTimeouts(), Secret("sk-gateway"))
        named = CIMultiDict([("Connection", "Authorization"), ("Authorization", "Bearer sk-client")])
        assert dict(keyed.outbound_headers(named)) == {"Authorization": "Bearer sk-gateway"}


async def test_ssrf_guard_refuses_private_upstreams(
    settings: Settings, detector: PresidioDetector, aiohttp_server: Server
) -> None:
    guarded = settings.model_copy(update={"upstream_guard": UpstreamGuardSettings(refuse_private_addresses=True)})
    with pytest.raises(SettingsError, match="private or metadata address"):
        await aiohttp_server(create_app(guarded, detector=detector))


# --- TLS -----------------------------------------------------------------------------------------


def make_ca_and_cert(tmp: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1, written as PEM files."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test ca")])
    ca = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True).sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    ca_path, cert_path, key_path = tmp / "ca.pem", tmp / "cert.pem", tmp / "key.pem"
    ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return ca_path, cert_path, key_path


async def test_upstream_tls_is_verified_and_a_corporate_ca_bundle_works(
    settings: Settings, detector: PresidioDetector, aiohttp_server: Server, tmp_path: Path
) -> None:
    ca, cert, key = make_ca_and_cert(tmp_path)
    tls = ServerTLS(str(cert), str(key))
    up = await aiohttp_server(Scripted([]).app(), ssl=tls.context)
    https = f"https://127.0.0.1:{up.port}/v1"
    status, _ = await post(await gateway_for(settings, detector, aiohttp_server, https))
    assert status == 502  # an unknown CA is refused by default
    trusted = UpstreamTlsSettings(ca_bundle=ca)
    status, _ = await post(await gateway_for(settings, detector, aiohttp_server, https, upstream_tls=trusted))
    assert status == 200


async def test_gateway_serves_tls_1_2_or_later(
    settings: Settings, detector: PresidioDetector, aiohttp_server: Server, tmp_path: Path
) -> None:
    ca, cert, key = make_ca_and_cert(tmp_path)
    tls = ServerTLS(str(cert), str(key))
    server = await aiohttp_server(create_app(settings, detector=detector), ssl=tls.context)
    url = f"https://127.0.0.1:{server.port}/v1/chat/completions"
    client_ctx = ssl.create_default_context(cafile=str(ca))
    status, _ = await post(url, ssl=client_ctx)
    assert status == 200
    old = ssl.create_default_context(cafile=str(ca))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # asking for TLS 1.1 on purpose
        old.minimum_version = old.maximum_version = ssl.TLSVersion.TLSv1_1
    with pytest.raises(aiohttp.ClientError):
        await post(url, ssl=old)
    tls.reload()  # rotation: loading again keeps serving
    status, _ = await post(url, ssl=client_ctx)
    assert status == 200


# --- the idle watchdog of a streamed body ----------------------------------------------------------


class Trickle:
    """An upstream body in pieces: ``gaps[i]`` seconds of silence before piece i; a gap of None stalls."""

    def __init__(self, gaps: list[float | None]) -> None:
        self.gaps = gaps

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/", self.body)
        return app

    async def body(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        for i, gap in enumerate(self.gaps):
            await asyncio.sleep(3600 if gap is None else gap)
            await response.write(b"piece %d;" % i)
        await response.write_eof()
        return response


async def read_all(url: str, idle: float, *, pause: float = 0.0) -> list[bytes]:
    got: list[bytes] = []
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        async for chunk in Reply(response, idle).chunks():
            got.append(chunk)
            await asyncio.sleep(pause)  # a slow client being written to
    return got


async def test_an_upstream_silent_for_the_idle_timeout_ends_the_stream(aiohttp_server: Server) -> None:
    server = await aiohttp_server(Trickle([0, 0, None]).app())
    with pytest.raises(UpstreamTimeout) as info:
        await read_all(str(server.make_url("/")), 0.3)
    assert info.value.reason == "timeout_stream_idle"


async def test_only_silence_counts_not_a_long_stream_or_a_slow_client(aiohttp_server: Server) -> None:
    # Each gap is under the timeout though the whole stream is several times longer than it.
    server = await aiohttp_server(Trickle([0.1] * 8).app())
    assert b"".join(await read_all(str(server.make_url("/")), 0.25)).count(b"piece") == 8
    # The client takes longer than the timeout over each piece: the upstream was not silent meanwhile.
    server = await aiohttp_server(Trickle([0, 0, 0]).app())
    assert b"".join(await read_all(str(server.make_url("/")), 0.2, pause=0.3)).count(b"piece") == 3


async def test_a_cancellation_that_is_not_the_watchdogs_stays_a_cancellation(aiohttp_server: Server) -> None:
    server = await aiohttp_server(Trickle([0, None]).app())
    task = asyncio.create_task(read_all(str(server.make_url("/")), 30))
    await asyncio.sleep(0.2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
