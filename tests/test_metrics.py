"""/metrics after real traffic: families, types, labels and values; and no personal data anywhere in it."""

from __future__ import annotations

import platform
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import openai
import orjson
import pytest
from aiohttp.test_utils import TestServer
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from gateway.app import PARTS, create_admin_app, create_app
from gateway.detector import PresidioDetector
from gateway.exchange import Exchange
from gateway.metrics import Metrics
from gateway.placeholders import PLACEHOLDER_SHAPE
from gateway.settings import Settings
from tests.fake_upstream import FakeUpstream

Server = Callable[..., Awaitable[TestServer]]

POLICY = """\
name: default
unscannable_content: pass
entities:
  PERSON: pseudonymize
  EMAIL_ADDRESS: pseudonymize
  PHONE_NUMBER: pseudonymize
  US_SSN: block
  CREDIT_CARD: {action: mask, mask: {keep_last: 4}}
  IP_ADDRESS: allow
"""
PII = (
    "Maria Gonzalez wrote from maria.gonzalez@example.com about John Smith; card 4111 1111 1111 1111,"
    " sent from 203.0.113.9."
)
SSN = "536-22-8174"
VALUES = ["Maria", "Gonzalez", "maria.gonzalez@example.com", "John", "Smith", "4111", SSN, "203.0.113.9"]
#: An answer that names a placeholder the request never had: the model invented it.
INVENTED = "<PERSON_7> "
IMAGE = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}

#: Every family: its type and the exact label names of each of its samples (``le`` aside).
FAMILIES: dict[str, tuple[str, set[str]]] = {
    "gen_ai_client_token_usage": ("histogram", {"token_type", "model", "provider"}),
    "gen_ai_server_request_duration_seconds": ("histogram", {"model", "provider", "route"}),
    "gen_ai_server_time_to_first_token_seconds": ("histogram", {"model", "provider", "route"}),
    "gen_ai_server_time_per_output_token_seconds": ("histogram", {"model", "provider", "route"}),
    "gateway_requests": ("counter", {"route", "model", "status_class", "policy"}),
    "gateway_requests_in_flight": ("gauge", {"route"}),
    "gateway_added_latency_seconds": ("histogram", {"route"}),
    "gateway_detection_duration_seconds": ("histogram", {"policy"}),
    "gateway_detector_errors": ("counter", {"reason"}),
    "gateway_detector_cache_lookups": ("counter", {"result"}),
    "gateway_detector_cache_bytes": ("gauge", set()),
    "gateway_detector_worker_recycles": ("counter", set()),
    "gateway_entities": ("counter", {"entity_type", "action", "policy"}),
    "gateway_blocked_requests": ("counter", {"entity_type", "policy"}),
    "gateway_placeholders_restored": ("counter", {"route"}),
    "gateway_placeholders_unresolved": ("counter", {"route"}),
    "gateway_unscanned_parts": ("counter", {"route", "policy"}),
    "gateway_upstream_errors": ("counter", {"reason"}),
    "gateway_upstream_timeouts": ("counter", {"phase"}),
    "gateway_transcript_queue_depth": ("gauge", set()),
    "gateway_transcript_writes": ("counter", {"result"}),
    "gateway_transcript_write_failures": ("counter", set()),
    "gateway_policy_reloads": ("counter", {"result"}),
    "gateway_build_info": ("gauge", {"version", "python"}),
}
#: The families real traffic cannot reach here: a detector failure needs a broken detector
#: (test_label_names_of_the_families_traffic_does_not_reach covers them through observe()).
NOT_REACHED_BY_TRAFFIC = {"gateway_detector_errors"}


@pytest.fixture
async def metered(
    settings: Settings, detector: PresidioDetector, tmp_path: Path, aiohttp_server: Server
) -> tuple[TestServer, str]:
    folder = tmp_path / "policies"
    folder.mkdir()
    (folder / "default.yaml").write_text(POLICY)
    configured = settings.model_copy(
        update={
            "policies_dir": folder,
            "metrics": settings.metrics.model_copy(update={"models": ["gpt-known"]}),
            "timeouts": settings.timeouts.model_copy(update={"first_byte_seconds": 0.5}),
        }
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


def entity_counts(families: dict[str, Any]) -> dict[tuple[str, str], float]:
    """``gateway_entities_total`` as (entity type, action) -> count, zero counts left out."""
    counts: dict[tuple[str, str], float] = {}
    for s in samples(families, "gateway_entities", "gateway_entities_total"):
        key = (s.labels["entity_type"], s.labels["action"])
        counts[key] = counts.get(key, 0) + s.value
    return {k: v for k, v in counts.items() if v}


def placeholder_kinds(texts: list[str]) -> dict[str, int]:
    """Entity type -> placeholders of that type in ``texts`` (what the upstream was sent)."""
    kinds: dict[str, int] = {}
    for text in texts:
        for found in PLACEHOLDER_SHAPE.findall(text):
            kind = found[1:].rsplit("_", 1)[0]
            kinds[kind] = kinds.get(kind, 0) + 1
    return kinds


async def drive(base: str, fake: FakeUpstream) -> list[str]:
    """Plain, streamed, invented-placeholder, unscanned-image, blocked, failed and timed-out traffic.

    Returns the redacted texts the upstream saw, one per request that reached it with personal data.
    """
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
        fake.reply_prefix = INVENTED
        await client.chat.completions.create(model="gpt-known", messages=messages)
        seen.append(fake.requests[-1]["messages"][0]["content"])
        fake.reply_prefix = ""
        with_image: Any = [{"role": "user", "content": [{"type": "text", "text": "describe this"}, IMAGE]}]
        await client.chat.completions.create(model="gpt-known", messages=with_image)
        with pytest.raises(openai.BadRequestError):
            await client.chat.completions.create(
                model="gpt-known", messages=[{"role": "user", "content": f"SSN {SSN}"}]
            )
        fake.mode, fake.status, fake.error_body = "status", 503, b'{"error": {"message": "overloaded"}}'
        with pytest.raises(openai.InternalServerError):
            await client.chat.completions.create(model="gpt-known", messages=[{"role": "user", "content": "hello"}])
        fake.mode = "hang"
        with pytest.raises(openai.APIStatusError) as timed_out:
            await client.chat.completions.create(model="gpt-known", messages=[{"role": "user", "content": "hello"}])
        assert timed_out.value.status_code == 504
        fake.mode = "echo"
    return seen


async def test_families_types_labels_and_values_after_real_traffic(
    metered: tuple[TestServer, str], fake_upstream: FakeUpstream
) -> None:
    server, base = metered
    seen = await drive(base, fake_upstream)
    app = server.app
    assert app is not None
    recorder = app[PARTS].recorder
    assert recorder is not None
    await recorder.flush()
    m = await scrape(server)

    # Every family: its type, and exactly its label names on every sample (a dropped or extra label fails).
    for name, (kind, label_names) in FAMILIES.items():
        assert name in m, name
        assert m[name].type == kind, name
        found = samples(m, name)
        if name in NOT_REACHED_BY_TRAFFIC:
            continue
        assert found, f"{name} has no sample after the traffic"
        for s in found:
            assert set(s.labels) - ({"le"} if s.name.endswith("_bucket") else set()) == label_names, (name, s)

    # The detector's own counters, read at scrape time: every analysed text was looked up in its cache.
    lookups = {
        s.labels["result"]: s.value
        for s in samples(m, "gateway_detector_cache_lookups", "gateway_detector_cache_lookups_total")
    }
    assert set(lookups) == {"hit", "miss"} and lookups["miss"] >= 1

    # Requests by route, model (configured or "other"), status class and policy.
    requests = {
        (s.labels["route"], s.labels["model"], s.labels["status_class"], s.labels["policy"]): s.value
        for s in samples(m, "gateway_requests", "gateway_requests_total")
    }
    assert requests == {
        ("chat.completions", "gpt-known", "2xx", "default"): 3,  # plain, invented placeholder, image
        ("chat.completions", "other", "2xx", "default"): 1,  # the stream
        ("chat.completions", "gpt-known", "4xx", "default"): 1,  # blocked
        ("chat.completions", "gpt-known", "5xx", "default"): 2,  # upstream 503, upstream timeout (504)
    }

    # Entities by type and action equal what the upstream actually received.
    placeholders = placeholder_kinds(seen)
    assert {"PERSON", "EMAIL_ADDRESS"} <= set(placeholders), placeholders
    masked = sum(t.count("**** **** **** 1111") for t in seen)
    allowed = sum(t.count("203.0.113.9") for t in seen)
    assert masked == allowed == len(seen) == 3
    expected = {(kind, "pseudonymize"): count for kind, count in placeholders.items()}
    expected |= {("CREDIT_CARD", "mask"): masked, ("IP_ADDRESS", "allow"): allowed, ("US_SSN", "block"): 1}
    assert entity_counts(m) == expected
    assert {s.labels["policy"] for s in samples(m, "gateway_entities")} == {"default"}
    blocked = {
        (s.labels["entity_type"], s.labels["policy"]): s.value
        for s in samples(m, "gateway_blocked_requests", "gateway_blocked_requests_total")
    }
    assert blocked == {("US_SSN", "default"): 1}

    # Restoration: every placeholder sent came back restored; the invented one could not be.
    restored = value(m, "gateway_placeholders_restored", "gateway_placeholders_restored_total")
    assert restored == sum(placeholders.values())
    assert value(m, "gateway_placeholders_unresolved", "gateway_placeholders_unresolved_total") == 1
    assert value(m, "gateway_unscanned_parts", "gateway_unscanned_parts_total", policy="default") == 1

    # Upstream failures.
    upstream_errors = {
        s.labels["reason"]: s.value for s in samples(m, "gateway_upstream_errors", "gateway_upstream_errors_total")
    }
    assert upstream_errors == {"status_5xx": 1, "timeout_first_byte": 1}
    timeouts = {
        s.labels["phase"]: s.value for s in samples(m, "gateway_upstream_timeouts", "gateway_upstream_timeouts_total")
    }
    assert timeouts == {"first_byte": 1}

    # Tokens: the fake upstream reports 11 in / 7 out for each of the four answers.
    for token_type, per_answer in (("input", 11), ("output", 7)):
        for model, answers in (("gpt-known", 3), ("other", 1)):
            labels = {"token_type": token_type, "model": model, "provider": "openai_compatible"}
            assert value(m, "gen_ai_client_token_usage", "gen_ai_client_token_usage_count", **labels) == answers
            assert value(m, "gen_ai_client_token_usage", "gen_ai_client_token_usage_sum", **labels) == (
                answers * per_answer
            )

    # Latency: every request has a duration; only the stream has TTFT and time per output token.
    durations = {
        s.labels["model"]: s.value
        for s in samples(m, "gen_ai_server_request_duration_seconds", "gen_ai_server_request_duration_seconds_count")
    }
    assert durations == {"gpt-known": 6, "other": 1}
    stream_only = {"model": "other", "provider": "openai_compatible", "route": "chat.completions"}
    for family in ("gen_ai_server_time_to_first_token_seconds", "gen_ai_server_time_per_output_token_seconds"):
        counts = [s for s in samples(m, family, family + "_count") if s.value]
        assert [s.labels for s in counts] == [stream_only], family
        assert counts[0].value == 1, family
        total = value(m, family, family + "_sum", **stream_only)
        duration = value(
            m, "gen_ai_server_request_duration_seconds", "gen_ai_server_request_duration_seconds_sum", **stream_only
        )
        assert 0 <= total <= duration, family
    # Forwarded requests have an added latency; every request with text to scan was timed detecting.
    assert value(m, "gateway_added_latency_seconds", "gateway_added_latency_seconds_count") == 6
    assert (
        value(m, "gateway_detection_duration_seconds", "gateway_detection_duration_seconds_count", policy="default")
        == 7
    )
    assert value(m, "gateway_requests_in_flight", "gateway_requests_in_flight", route="chat.completions") == 0
    [build] = samples(m, "gateway_build_info")
    assert build.value == 1
    assert build.labels["python"] == platform.python_version()
    # The OpenTelemetry GenAI buckets.
    buckets = {
        s.labels["le"]
        for s in samples(m, "gen_ai_server_request_duration_seconds", "gen_ai_server_request_duration_seconds_bucket")
    }
    assert {"0.01", "81.92", "+Inf"} <= buckets
    # Transcript health: every request above was recorded, none failed, nothing waits.
    assert value(m, "gateway_transcript_writes", "gateway_transcript_writes_total", result="store") == 7
    assert value(m, "gateway_transcript_write_failures", "gateway_transcript_write_failures_total") == 0
    assert value(m, "gateway_transcript_queue_depth", "gateway_transcript_queue_depth") == 0
    reloads = {
        s.labels["result"]: s.value for s in samples(m, "gateway_policy_reloads", "gateway_policy_reloads_total")
    }
    assert reloads == {"success": 0, "failure": 0}


def test_label_names_of_the_families_traffic_does_not_reach() -> None:
    """A detector failure, observed: its family carries exactly ``reason``, with a bounded value."""
    metrics = Metrics(CollectorRegistry())
    for code in ("pii_detection_timeout", "pii_detection_failed"):
        exchange = Exchange(route="chat.completions", policy="default", outcome="detector_error", error_code=code)
        exchange.finish(503)
        metrics.observe(exchange)
    families = {f.name: f for f in text_string_to_metric_families(generate_latest(metrics.registry).decode())}
    for name in NOT_REACHED_BY_TRAFFIC:
        found = families[name].samples
        assert found, name
        for s in found:
            assert set(s.labels) == FAMILIES[name][1], (name, s)
    reasons = {
        s.labels["reason"]: s.value for s in families["gateway_detector_errors"].samples if s.name.endswith("_total")
    }
    assert reasons == {"timeout": 1, "error": 1}


async def test_a_blocked_request_counts_every_entity_it_holds(
    metered: tuple[TestServer, str], fake_upstream: FakeUpstream
) -> None:
    """A blocked request's other findings count too, with their own actions; the blocking type with ``block``.

    The same text without the blocking value, sent afterwards, shows what the detector finds in the rest.
    """
    server, base = metered
    async with openai.AsyncOpenAI(base_url=base, api_key="sk", max_retries=0) as client:
        with pytest.raises(openai.BadRequestError):
            await client.chat.completions.create(
                model="gpt-known", messages=[{"role": "user", "content": f"{PII} SSN {SSN}."}]
            )
        after_block = entity_counts(await scrape(server))
        await client.chat.completions.create(model="gpt-known", messages=[{"role": "user", "content": PII}])
    both = entity_counts(await scrape(server))
    rest = {key: n - after_block.get(key, 0) for key, n in both.items() if n - after_block.get(key, 0)}
    assert ("PERSON", "pseudonymize") in rest and ("IP_ADDRESS", "allow") in rest, rest  # not vacuous
    assert after_block == rest | {("US_SSN", "block"): 1}
    m = await scrape(server)
    blocked = {
        s.labels["entity_type"]: s.value
        for s in samples(m, "gateway_blocked_requests", "gateway_blocked_requests_total")
    }
    assert blocked == {"US_SSN": 1}


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
