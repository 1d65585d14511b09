"""Reloading policies under load: valid and invalid changes, binding by key, model and route, via the SDK."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
from aiohttp.test_utils import TestServer

from gateway.app import PARTS, create_app
from gateway.detector import PresidioDetector
from gateway.keys import KeyRing
from gateway.metrics import Metrics
from gateway.policy import load_policy_dir
from gateway.reloader import KeyHolder, PolicyHolder, Reloader
from gateway.settings import PolicyBindingSettings, Settings
from tests.fake_upstream import FakeUpstream, MultiUpstream

Server = Callable[..., Awaitable[TestServer]]

HIDE = "name: {name}\nentities:\n  PERSON: pseudonymize\n  EMAIL_ADDRESS: pseudonymize\n"
SHOW = "name: {name}\nentities:\n  PERSON: allow\n"
HASH = "name: {name}\nentities:\n  PERSON: hash\n  EMAIL_ADDRESS: hash\n"
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


async def test_binding_by_route(
    settings: Settings, detector: PresidioDetector, folder: Path, aiohttp_server: Server
) -> None:
    """A route binding applies on its route only; with a model too, both must match."""
    multi = MultiUpstream()
    upstream = await aiohttp_server(multi.app())
    server = await start(
        settings, detector, folder, aiohttp_server,
        upstream=str(upstream.make_url("/v1")),
        policy_bindings=[
            PolicyBindingSettings(route="embeddings", policy="open"),
            PolicyBindingSettings(route="completions", model="research-*", policy="open"),
        ],
    )  # fmt: skip
    async with openai.AsyncOpenAI(base_url=str(server.make_url("/v1")), api_key="sk", max_retries=0) as c:
        await c.embeddings.create(model="m", input=TEXT)
        assert "John Smith" in multi.requests[-1]["input"]  # bound by route
        await c.chat.completions.create(model="m", messages=[{"role": "user", "content": TEXT}])
        assert "John Smith" not in multi.requests[-1]["messages"][0]["content"]  # another route: the default
        await c.completions.create(model="research-7b", prompt=TEXT)
        assert "John Smith" in multi.requests[-1]["prompt"]  # route and model both match
        await c.completions.create(model="m", prompt=TEXT)
        assert "John Smith" not in multi.requests[-1]["prompt"]  # the route alone is not enough
        await c.chat.completions.create(model="research-7b", messages=[{"role": "user", "content": TEXT}])
        assert "John Smith" not in multi.requests[-1]["messages"][0]["content"]  # nor the model alone


async def test_a_key_bound_to_a_policy_that_is_not_loaded_fails_closed(
    settings: Settings, detector: PresidioDetector, folder: Path, aiohttp_server: Server, fake_upstream: FakeUpstream
) -> None:
    ring, key = KeyRing({}).create("lab", "gone")
    ring.save(settings.resolved_keys_file())
    server = await start(settings, detector, folder, aiohttp_server)
    async with openai.AsyncOpenAI(base_url=str(server.make_url("/v1")), api_key=key, max_retries=0) as c:
        with pytest.raises(openai.PermissionDeniedError) as info:
            await c.chat.completions.create(model="m", messages=[{"role": "user", "content": TEXT}])
    body: Any = info.value.body
    assert body["code"] == "policy_not_allowed"
    assert body["message"].startswith("The policy 'gone' that this API key requires is not loaded")
    assert fake_upstream.requests == []


def reloader_for(folder: Path, keys_file: Path, bindings: Sequence[PolicyBindingSettings] = ()) -> Reloader:
    """A Reloader as create_app builds it, with the settings' bindings and the engine's language."""
    book = load_policy_dir(folder, "default", languages=["en"], bindings=bindings)
    return Reloader(
        PolicyHolder(book), KeyHolder(KeyRing.load(keys_file)), folder, keys_file, "default", Metrics(),
        languages=["en"], bindings=tuple(bindings),
    )  # fmt: skip


async def test_a_reload_that_drops_a_policy_in_use_is_rejected(tmp_path: Path, folder: Path) -> None:
    """Dropping the default, a bound policy or an active key's policy is an invalid change: rejected, counted."""
    keys_file = tmp_path / "keys.yaml"
    ring, _ = KeyRing({}).create("sales", "default")
    ring.save(keys_file)
    reloader = reloader_for(folder, keys_file, [PolicyBindingSettings(model="research-*", policy="open")])
    before = reloader.policies.book
    (folder / "open.yaml").unlink()
    ok, message = await reloader.reload()
    assert not ok
    assert message == "setting 'policy_bindings.0.policy': no policy named 'open' is loaded (loaded: default)"
    (folder / "open.yaml").write_text(SHOW.format(name="open"))
    (folder / "default.yaml").write_text(HIDE.format(name="other"))
    ok, message = await reloader.reload()
    assert not ok
    assert message.startswith("setting 'default_policy': the default policy 'default' is not among")
    (folder / "default.yaml").write_text(HIDE.format(name="default"))
    (folder / "open.yaml").write_text(SHOW.format(name="open2"))
    (folder / "extra.yaml").write_text(SHOW.format(name="open"))
    assert (await reloader.reload())[0]  # 'open' still exists (in another file): fine
    before = reloader.policies.book
    # A key bound to the policy the change drops.
    ring, _ = ring.create("lab", "open2")
    ring.save(keys_file)
    (folder / "open.yaml").unlink()
    ok, message = await reloader.reload()
    assert not ok
    assert message == f"{keys_file}: 1 active key(s) are bound to policy 'open2', which the new set drops " \
        "(see pii-gateway keys list)"  # fmt: skip
    assert reloader.policies.book is before
    registry = reloader.metrics.registry
    assert registry.get_sample_value("gateway_policy_reloads_total", {"result": "failure"}) == 3
    # Once the key is revoked, the policy may go.
    key_id = next(r.id for r in ring.records.values() if r.policy == "open2")
    ring.revoke(key_id).save(keys_file)
    assert (await reloader.reload())[0]
    assert sorted(reloader.policies.book.policies) == ["default", "open"]


async def test_a_key_file_naming_a_missing_policy_is_loaded_with_a_warning(
    tmp_path: Path, folder: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Rejecting it would hold back revocations made in the same change; its requests fail closed instead."""
    keys_file = tmp_path / "keys.yaml"
    KeyRing({}).save(keys_file)
    reloader = reloader_for(folder, keys_file)
    ring, _ = KeyRing({}).create("lab", "nowhere")
    ring.save(keys_file)
    with caplog.at_level(logging.WARNING, logger="gateway.reloader"):
        assert (await reloader.reload())[0]
    assert len(reloader.keys.ring.records) == 1
    (warning,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert warning.__dict__["policy"] == "nowhere"


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
    """No request fails, and each is served wholly by one of two different valid policies, never a mix.

    The valid reloads alternate between pseudonymizing and hashing both PERSON and EMAIL_ADDRESS, so
    a request redacted half by one and half by the other (or restored under the other) would show.
    """
    server = await start(settings, detector, folder, aiohttp_server, reload_interval_seconds=0)
    app = server.app
    assert app is not None
    reloader = app[PARTS].reloader
    answers: list[tuple[int, str, str]] = []  # (status, sent, answer)

    async def client_loop(session: aiohttp.ClientSession, n: int) -> None:
        for _ in range(3):
            text = f"{TEXT} ({n})"
            body = {"model": "m", "messages": [{"role": "user", "content": text}]}
            async with session.post(str(server.make_url("/v1/chat/completions")), json=body) as r:
                reply = await r.json()
                answers.append((r.status, text, reply["choices"][0]["message"]["content"] if r.status == 200 else ""))

    async def flip() -> None:
        for i in range(20):
            text = (
                "name: default\nentities: {PERSON: nonsense}\n"
                if i % 2 == 0
                else (HASH if i % 4 == 1 else HIDE).format(name="default")
            )
            (folder / "default.yaml").write_text(text)
            await reloader.reload()
            # Let some requests through under each set before the next change (bounded wait).
            for _ in range(200):
                if len(answers) >= min(150, 7 * (i + 1)):
                    break
                await asyncio.sleep(0.005)

    async with aiohttp.ClientSession() as session:
        await asyncio.gather(flip(), *(client_loop(session, n) for n in range(50)))
    assert [status for status, _, _ in answers] == [200] * 150
    pseudonymized = re.compile(r"Please forward this to <PERSON_1> at <EMAIL_ADDRESS_1>\. \(\d+\)")
    hashed = re.compile(r"Please forward this to <PERSON:[0-9a-f]{12}> at <EMAIL_ADDRESS:[0-9a-f]{12}>\. \(\d+\)")
    served = {"pseudonymize": 0, "hash": 0}
    for request in fake_upstream.requests:
        content = request["messages"][0]["content"]
        if pseudonymized.fullmatch(content):
            served["pseudonymize"] += 1
        else:
            assert hashed.fullmatch(content), content
            served["hash"] += 1
    for _, sent, answer in answers:
        # Pseudonymized: restored to exactly what was sent. Hashed: the tokens stay (one-way).
        assert answer == sent or hashed.fullmatch(answer), answer
    assert served["pseudonymize"] > 0
    assert served["hash"] > 0
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
    by_type = {f["entity_type"]: f for f in body["findings"]}
    assert by_type["PERSON"]["decision"] == "pseudonymize"
    assert by_type["PERSON"]["replacement"] == "<PERSON_1>"
    assert by_type["EMAIL_ADDRESS"]["replacement"] == "<EMAIL_ADDRESS_1>"
    assert fake_upstream.requests == []
