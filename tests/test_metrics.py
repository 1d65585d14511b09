"""/metrics after real traffic: families, types, labels and values; and no personal data anywhere in it."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import openai
import orjson
import pytest
from aiohttp.test_utils import TestServer
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from gateway.app import PARTS, create_admin_app, create_app
from gateway.detector import PresidioDetector
from gateway.placeholders import PLACEHOLDER_SHAPE
from gateway.settings import Settings
from tests.fake_upstream import FakeUpstream

Server = Callable[..., Awaitable[TestServer]]

POLICY = """\
name: default
entities:
  PERSON: pseudonymize
  EMAIL_ADDRESS: pseudonymize
  PHONE_NUMBER: pseudonymize
  US_SSN: block
  CREDIT_CARD: {action: mask, mask: {keep_last: 4}}
"""
PII = "Maria Gonzalez wrote from maria.gonzalez@example.com about John Smith; card 4111 1111 1111 1111."
VALUES = ["Maria", "Gonzalez", "maria.gonzalez@example.com", "John", "Smith", "4111", "536-22-8174"]


@pytest.fixture
async def metered(
    settings: Settings, detector: PresidioDetector, tmp_path: Path, aiohttp_server: Server
) -> tuple[TestServer, str]:
    folder = tmp_path / "policies"
    folder.mkdir()
    (folder / "default.yaml").write_text(POLICY)
    configured = settings.model_copy(
        update={"policies_dir": folder, "metrics": settings.metrics.model_copy(update={"models": ["gpt-known"]})}
    )
    server = await aiohttp_server(create_app(configured, detector=detector))
    return server, str(server.make_url("/v1"))


async def scrape(server: TestServer) -> dict[str, Any]:
    async with aiohttp.ClientSession() as session, session.get(str(server.make_url("/metrics"))) as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/plain")
        text = await r.text()
    return {f.name: f for f in text_string_to_metric_families(text)} | {"__text__": text}


def samples(families: dict[str, Any], family: str, sample: str | None = None) -> list[Sample]:
    return [s for s in families[family].samples if sample is None or s.name == sample]


def value(families: dict[str, Any], family: str, sample: str, **labels: str) -> float:
    found = [s.value for s in samples(families, family, sample) if all(s.labels.get(k) == v for k, v in labels.items())]
    return sum(found)


async def drive(base: str, fake: FakeUpstream) -> list[str]:
    """Plain, streamed, blocked and failed-upstream traffic. Returns the redacted texts the upstream saw."""
    seen = []
    async with openai.AsyncOpenAI(base_url=base, api_key="sk", max_retries=0) as client:
        messages: Any = [{"role": "user", "content": PII}]
        await client.chat.completions.create(model="gpt-known", messages=messages)
        seen.append(fake.requests[-1]["messages"][0]["content"])
        stream = await client.chat.completions.create(
            model="some-other-model", messages=messages, stream=True, stream_options={"include_usage": True}
        )
        async for _ in stream:
            pass
        seen.append(fake.requests[-1]["messages"][0]["content"])
        with pytest.raises(openai.BadRequestError):
            await client.chat.completions.create(
                model="gpt-known", messages=[{"role": "user", "content": "SSN 536-22-8174"}]
            )
        fake.mode, fake.status, fake.error_body = "status", 503, b'{"error": {"message": "overloaded"}}'
        with pytest.raises(openai.InternalServerError):
            await client.chat.completions.create(model="gpt-known", messages=[{"role": "user", "content": "hello"}])
    return seen


async def test_families_types_labels_and_values_after_real_traffic(
    metered: tuple[TestServer, str], fake_upstream: FakeUpstream
) -> None:
    server, base = metered
    seen = await drive(base, fake_upstream)
    m = await scrape(server)

    expected_types = {
        "gen_ai_client_token_usage": "histogram",
        "gen_ai_server_request_duration_seconds": "histogram",
        "gen_ai_server_time_to_first_token_seconds": "histogram",
        "gen_ai_server_time_per_output_token_seconds": "histogram",
        "gateway_requests": "counter",
        "gateway_requests_in_flight": "gauge",
        "gateway_added_latency_seconds": "histogram",
        "gateway_detection_duration_seconds": "histogram",
        "gateway_detector_errors": "counter",
        "gateway_entities": "counter",
        "gateway_blocked_requests": "counter",
        "gateway_placeholders_restored": "counter",
        "gateway_placeholders_unresolved": "counter",
        "gateway_upstream_errors": "counter",
        "gateway_upstream_timeouts": "counter",
        "gateway_transcript_queue_depth": "gauge",
        "gateway_transcript_writes": "counter",
        "gateway_transcript_write_failures": "counter",
        "gateway_policy_reloads": "counter",
        "gateway_build_info": "gauge",
    }
    for name, kind in expected_types.items():
        assert name in m, name
        assert m[name].type == kind, name

    # Requests by route, model (configured or "other"), status class and policy.
    assert value(m, "gateway_requests", "gateway_requests_total", model="gpt-known", status_class="2xx") == 1
    assert value(m, "gateway_requests", "gateway_requests_total", model="other", status_class="2xx") == 1
    assert value(m, "gateway_requests", "gateway_requests_total", model="gpt-known", status_class="4xx") == 1
    assert value(m, "gateway_requests", "gateway_requests_total", model="gpt-known", status_class="5xx") == 1
    assert {s.labels["model"] for s in samples(m, "gateway_requests")} <= {"gpt-known", "other"}

    # Entities by type and action equal the placeholders the upstream actually received.
    placeholders: dict[str, int] = {}
    for text in seen:
        for found in PLACEHOLDER_SHAPE.findall(text):
            kind = found[1:].rsplit("_", 1)[0]
            placeholders[kind] = placeholders.get(kind, 0) + 1
    for kind, count in placeholders.items():
        assert value(m, "gateway_entities", "gateway_entities_total", entity_type=kind, action="pseudonymize") == count
    masked = sum(t.count("**** **** **** 1111") for t in seen)
    assert value(m, "gateway_entities", "gateway_entities_total", entity_type="CREDIT_CARD", action="mask") == masked
    assert value(m, "gateway_blocked_requests", "gateway_blocked_requests_total", entity_type="US_SSN") == 1
    restored = value(m, "gateway_placeholders_restored", "gateway_placeholders_restored_total")
    assert restored == sum(placeholders.values())

    # Upstream failures, tokens, latency and streams.
    assert value(m, "gateway_upstream_errors", "gateway_upstream_errors_total", reason="status_5xx") == 1
    assert value(m, "gen_ai_client_token_usage", "gen_ai_client_token_usage_count", token_type="input") == 2
    assert value(m, "gen_ai_client_token_usage", "gen_ai_client_token_usage_sum", token_type="output") == 14
    assert value(m, "gen_ai_server_time_to_first_token_seconds", "gen_ai_server_time_to_first_token_seconds_count") == 1
    assert value(m, "gateway_detection_duration_seconds", "gateway_detection_duration_seconds_count") >= 3
    assert value(m, "gateway_requests_in_flight", "gateway_requests_in_flight") == 0
    assert value(m, "gateway_build_info", "gateway_build_info") == 1
    # The OpenTelemetry GenAI buckets.
    buckets = {
        s.labels["le"]
        for s in samples(m, "gen_ai_server_request_duration_seconds", "gen_ai_server_request_duration_seconds_bucket")
    }
    assert {"0.01", "81.92", "+Inf"} <= buckets
    # Transcript health: every request above was recorded.
    app = server.app
    assert app is not None
    recorder = app[PARTS].recorder
    assert recorder is not None
    await recorder.flush()
    m = await scrape(server)
    assert value(m, "gateway_transcript_writes", "gateway_transcript_writes_total", result="store") == 4


async def test_no_personal_data_anywhere_in_metrics(
    metered: tuple[TestServer, str], fake_upstream: FakeUpstream
) -> None:
    server, base = metered
    await drive(base, fake_upstream)
    text = (await scrape(server))["__text__"]
    for v in VALUES:
        assert v not in text, v
    assert "sk" not in re.findall(r'"([^"]*)"', text)  # no key in any label value


async def test_metrics_on_a_separate_admin_port(
    settings: Settings, detector: PresidioDetector, aiohttp_server: Server
) -> None:
    configured = settings.model_copy(update={"admin": settings.admin.model_copy(update={"port": 0})})
    app = create_app(configured, detector=detector)
    main = await aiohttp_server(app)
    admin = await aiohttp_server(create_admin_app(app))
    async with aiohttp.ClientSession() as session:
        async with session.get(str(main.make_url("/metrics"))) as r:
            assert r.status == 404  # not exposed with the API
        async with session.get(str(admin.make_url("/metrics"))) as r:
            assert r.status == 200
            assert "gateway_build_info" in await r.text()


async def test_tenant_label_is_opt_in_and_bounded(
    settings: Settings, detector: PresidioDetector, aiohttp_server: Server, fake_upstream: FakeUpstream
) -> None:
    from gateway.keys import KeyRing

    ring, known = KeyRing({}).create("acme", None)
    ring, unknown = ring.create("someone-else", None)
    ring.save(settings.resolved_keys_file())
    configured = settings.model_copy(update={"metrics": settings.metrics.model_copy(update={"tenants": ["acme"]})})
    server = await aiohttp_server(create_app(configured, detector=detector))
    for key in (known, unknown):
        async with openai.AsyncOpenAI(base_url=str(server.make_url("/v1")), api_key=key, max_retries=0) as c:
            await c.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    m = await scrape(server)
    assert {s.labels["tenant"] for s in samples(m, "gateway_requests", "gateway_requests_total")} == {"acme", "other"}
    assert orjson.dumps(known).decode() not in m["__text__"]


async def test_every_metric_the_dashboard_and_alerts_use_is_exported(
    metered: tuple[TestServer, str], fake_upstream: FakeUpstream
) -> None:
    """Read the names out of the shipped dashboard's PromQL and the alert rules; the live /metrics has each."""
    server, base = metered
    await drive(base, fake_upstream)
    m = await scrape(server)
    exported: set[str] = set()
    for name, family in m.items():
        if name == "__text__":
            continue
        exported.add(name)
        exported.update(s.name for s in family.samples)
        if family.type == "counter":
            exported.add(name + "_total")
        if family.type == "histogram":
            exported.update(name + suffix for suffix in ("_bucket", "_sum", "_count"))
    chart = Path(__file__).resolve().parent.parent / "helm" / "pii-gateway"
    names = re.compile(r"\b((?:gateway|gen_ai)_[a-z0-9_]+)\b")
    dashboard = orjson.loads((chart / "dashboards" / "pii-gateway.json").read_bytes())
    used = {n for panel in dashboard["panels"] for t in panel.get("targets", []) for n in names.findall(t["expr"])}
    rules = (chart / "files" / "alerts.yaml").read_text()
    used |= set(names.findall(rules))
    assert used, "the dashboard and alerts reference no metric"
    assert used <= exported, sorted(used - exported)
