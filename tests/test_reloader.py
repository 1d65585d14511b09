"""Reloading policies under load: valid and invalid changes, binding by key, model and route, via the SDK."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
from aiohttp.test_utils import TestServer

from gateway.app import PARTS, create_app
from gateway.detector import PresidioDetector
from gateway.keys import KeyRing
from gateway.settings import Settings
from tests.fake_upstream import FakeUpstream

Server = Callable[..., Awaitable[TestServer]]

HIDE = "name: {name}\nentities:\n  PERSON: pseudonymize\n  EMAIL_ADDRESS: pseudonymize\n"
SHOW = "name: {name}\nentities:\n  PERSON: allow\n"
TEXT = "Please forward this to John Smith at john.smith@example.com."


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    path = tmp_path / "policies"
    path.mkdir()
    (path / "default.yaml").write_text(HIDE.format(name="default"))
    (path / "open.yaml").write_text(SHOW.format(name="open"))
    return path


async def start(
    settings: Settings, detector: PresidioDetector, folder: Path, server: Server, **update: Any
) -> TestServer:
    app = create_app(settings.model_copy(update={"policies_dir": folder, **update}), detector=detector)
    return await server(app)


async def test_binding_by_key_model_and_route_and_refusing_a_weaker_policy(
    settings: Settings, detector: PresidioDetector, folder: Path, aiohttp_server: Server, fake_upstream: FakeUpstream
) -> None:
    from gateway.settings import PolicyBindingSettings

    ring, open_key = KeyRing({}).create("lab", "open")
    ring, default_key = ring.create("sales", "default")
    ring.save(settings.resolved_keys_file())
    server = await start(
        settings, detector, folder, aiohttp_server,
        policy_bindings=[PolicyBindingSettings(model="research-*", policy="open")],
    )  # fmt: skip
    base = str(server.make_url("/v1"))

    async def send(key: str, model: str = "m", **headers: str) -> str:
        async with openai.AsyncOpenAI(base_url=base, api_key=key, max_retries=0, default_headers=headers) as c:
            await c.chat.completions.create(model=model, messages=[{"role": "user", "content": TEXT}])
        content: str = fake_upstream.requests[-1]["messages"][0]["content"]
        return content

    assert "John Smith" not in await send("sk-provider")  # pass-through: default policy
    assert "John Smith" in await send("sk-provider", model="research-7b")  # bound by model
    assert "John Smith" in await send(open_key)  # bound by key
    assert "John Smith" not in await send(default_key, model="research-7b")  # a binding cannot weaken a key
    with pytest.raises(openai.PermissionDeniedError):
        await send(default_key, **{"X-PII-Policy": "open"})
    assert "John Smith" not in await send(open_key, **{"X-PII-Policy": "default"})  # stricter is fine


async def test_editing_files_reloads_and_a_bad_change_keeps_the_old_set(
    settings: Settings, detector: PresidioDetector, folder: Path, aiohttp_server: Server, fake_upstream: FakeUpstream
) -> None:
    server = await start(settings, detector, folder, aiohttp_server, reload_interval_seconds=0.05)
    app = server.app
    assert app is not None
    async with openai.AsyncOpenAI(base_url=str(server.make_url("/v1")), api_key="sk", max_retries=0) as c:
        await c.chat.completions.create(model="m", messages=[{"role": "user", "content": TEXT}])
        assert "John Smith" not in fake_upstream.requests[-1]["messages"][0]["content"]

        (folder / "default.yaml").write_text(SHOW.format(name="default"))
        for _ in range(100):
            await asyncio.sleep(0.05)
            if app[PARTS].policies.book.version > 1:
                break
        await c.chat.completions.create(model="m", messages=[{"role": "user", "content": TEXT}])
        assert "John Smith" in fake_upstream.requests[-1]["messages"][0]["content"]

        version = app[PARTS].policies.book.version
        (folder / "default.yaml").write_text("name: default\nentities:\n  PERSON: obliterate\n")
        ok, message = await app[PARTS].reloader.reload()
        assert not ok
        assert "default.yaml:3: entities.PERSON.action" in message
        assert app[PARTS].policies.book.version == version
        await c.chat.completions.create(model="m", messages=[{"role": "user", "content": TEXT}])
        assert "John Smith" in fake_upstream.requests[-1]["messages"][0]["content"]
    registry = app[PARTS].metrics.registry
    assert registry.get_sample_value("gateway_policy_reloads_total", {"result": "failure"}) == 1
    assert (registry.get_sample_value("gateway_policy_reloads_total", {"result": "success"}) or 0) >= 1


async def test_fifty_concurrent_requests_through_twenty_reloads(
    settings: Settings, detector: PresidioDetector, folder: Path, aiohttp_server: Server, fake_upstream: FakeUpstream
) -> None:
    """No request fails, and none is served by a half-loaded policy: each sees one whole policy."""
    server = await start(settings, detector, folder, aiohttp_server, reload_interval_seconds=0)
    app = server.app
    assert app is not None
    reloader = app[PARTS].reloader
    results: list[int] = []

    async def client_loop(session: aiohttp.ClientSession, n: int) -> None:
        for _ in range(3):
            body = {"model": "m", "messages": [{"role": "user", "content": f"{TEXT} ({n})"}]}
            async with session.post(str(server.make_url("/v1/chat/completions")), json=body) as r:
                results.append(r.status)

    async def flip() -> None:
        for i in range(20):
            text = HIDE.format(name="default") if i % 2 else "name: default\nentities: {PERSON: nonsense}\n"
            (folder / "default.yaml").write_text(text)
            await reloader.reload()
            await asyncio.sleep(0.01)

    async with aiohttp.ClientSession() as session:
        await asyncio.gather(flip(), *(client_loop(session, n) for n in range(50)))
    assert results == [200] * 150
    # Every forwarded request was redacted by the one valid policy: both values hidden, never just one.
    for request in fake_upstream.requests:
        content = request["messages"][0]["content"]
        assert "John Smith" not in content
        assert "john.smith@example.com" not in content
    registry = app[PARTS].metrics.registry
    assert registry.get_sample_value("gateway_policy_reloads_total", {"result": "failure"}) == 10
    assert registry.get_sample_value("gateway_policy_reloads_total", {"result": "success"}) == 10


async def test_explain_endpoint_needs_an_admin_key_and_forwards_nothing(
    settings: Settings, detector: PresidioDetector, folder: Path, aiohttp_server: Server, fake_upstream: FakeUpstream
) -> None:
    ring, admin = KeyRing({}).create("ops", None, "admin")
    ring, client = ring.create("ops", None, "client")
    ring.save(settings.resolved_keys_file())
    server = await start(settings, detector, folder, aiohttp_server)
    url = str(server.make_url("/v1/gateway/explain"))
    async with aiohttp.ClientSession() as session:
        async with session.post(url, json={"text": TEXT}) as r:
            assert r.status == 401
        async with session.post(url, json={"text": TEXT}, headers={"Authorization": f"Bearer {client}"}) as r:
            assert r.status == 403
        async with session.post(url, json={"text": TEXT}, headers={"Authorization": f"Bearer {admin}"}) as r:
            assert r.status == 200
            body = await r.json()
    assert body["output"] == "Please forward this to <PERSON_1> at <EMAIL_ADDRESS_1>."
    decisions = {f["entity_type"]: f["decision"] for f in body["findings"]}
    assert decisions["PERSON"] == "pseudonymize"
    assert fake_upstream.requests == []
