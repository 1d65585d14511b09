"""End to end: the real openai SDK -> the real gateway (real Presidio + spaCy) -> a fake upstream that records."""

from __future__ import annotations

import asyncio
import io
import json
from typing import Any

import aiohttp
import openai
import orjson
import pytest
from aiohttp import web

import gateway.detector
from gateway.detector import DetectionSpec, Finding, PresidioDetector
from gateway.keys import KeyRing
from gateway.settings import Secret
from tests.fake_upstream import FakeUpstream

PROMPT = (
    "Hi, I'm Maria Gonzalez. Please write to John Smith at john.smith@example.com or call +1 415 555 0132. "
    "His card 4111 1111 1111 1111 was charged twice; server 192.168.10.24 logged it."
)
VALUES = [
    "Maria Gonzalez",
    "John Smith",
    "john.smith@example.com",
    "415 555 0132",
    "4111 1111 1111 1111",
    "192.168.10.24",
]


def upstream_text(fake: FakeUpstream) -> str:
    return orjson.dumps(fake.requests[-1]).decode()


def assert_nothing_leaked(fake: FakeUpstream, values: list[str] = VALUES) -> None:
    sent = upstream_text(fake)
    for value in values:
        assert value not in sent, value


async def test_plain_completion_redacts_upstream_and_restores_answer(
    client: openai.AsyncOpenAI, fake_upstream: FakeUpstream
) -> None:
    reply = await client.chat.completions.create(model="gpt-test", messages=[{"role": "user", "content": PROMPT}])
    assert reply.choices[0].message.content == PROMPT
    assert_nothing_leaked(fake_upstream)
    sent = fake_upstream.requests[-1]["messages"][0]["content"]
    assert "<PERSON_1>" in sent and "<PERSON_2>" in sent and "<EMAIL_ADDRESS_1>" in sent
    # Fields from the upstream pass through.
    assert reply.id == "chatcmpl-fake"
    assert reply.system_fingerprint == "fp_fake"
    assert reply.usage is not None and reply.usage.total_tokens == 18
    assert reply.choices[0].finish_reason == "stop"


async def test_streamed_completion_restores_placeholders_cut_across_events(
    client: openai.AsyncOpenAI, fake_upstream: FakeUpstream
) -> None:
    stream = await client.chat.completions.create(
        model="gpt-test",
        messages=[{"role": "user", "content": PROMPT}],
        stream=True,
        stream_options={"include_usage": True},
    )
    text = []
    finish = None
    usage = None
    async for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            text.append(choice.delta.content or "")
            finish = choice.finish_reason or finish
    assert "".join(text) == PROMPT
    assert finish == "stop"
    assert usage is not None and usage.total_tokens == 18
    assert_nothing_leaked(fake_upstream)


async def tool_call_arguments(client: openai.AsyncOpenAI, messages: Any, tools: Any, stream: bool) -> str:
    """The first tool call's arguments as the client got them, whole or put together from the stream."""
    if not stream:
        reply = await client.chat.completions.create(model="m", messages=messages, tools=tools)
        calls = reply.choices[0].message.tool_calls
        assert calls is not None
        return calls[0].function.arguments  # type: ignore[union-attr]
    parts = await client.chat.completions.create(model="m", messages=messages, tools=tools, stream=True)
    args = ""
    async for chunk in parts:
        for choice in chunk.choices:
            for call in choice.delta.tool_calls or []:
                args += (call.function.arguments if call.function else None) or ""
    return args


@pytest.mark.parametrize("stream", [False, True])
async def test_tool_call_arguments_are_restored_with_json_escaping(
    client: openai.AsyncOpenAI, fake_upstream: FakeUpstream, stream: bool
) -> None:
    prompt = 'Book a table for "Ann-Marie O\'Neil" and email ann.oneil@example.org\\n now.'
    tools: Any = [{"type": "function", "function": {"name": "echo", "parameters": {"type": "object"}}}]
    messages: Any = [{"role": "user", "content": prompt}]
    args = await tool_call_arguments(client, messages, tools, stream)
    assert json.loads(args) == {"text": prompt}
    assert "ann.oneil@example.org" not in upstream_text(fake_upstream)


async def test_tool_call_history_and_tool_results_are_scanned(
    client: openai.AsyncOpenAI, fake_upstream: FakeUpstream
) -> None:
    messages: Any = [
        {"role": "system", "content": "You help Maria Gonzalez with her email."},
        {"role": "user", "content": "Look up John Smith please."},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "c1",
                    "type": "function",
                    "function": {"name": "lookup", "arguments": '{"name": "John Smith"}'},
                }
            ],
        },
        {
            "role": "tool",
            "tool_call_id": "c1",
            "content": "John Smith: john.smith@example.com, +1 415 555 0132",
        },
        {
            "role": "user",
            "content": [{"type": "text", "text": "Thanks. Say hi to John Smith."}],
            "name": "Maria Gonzalez",
        },
    ]
    await client.chat.completions.create(model="m", messages=messages)
    assert_nothing_leaked(fake_upstream, ["Maria Gonzalez", "John Smith", "john.smith@example.com", "415 555 0132"])
    sent = fake_upstream.requests[-1]["messages"]
    args = json.loads(sent[2]["tool_calls"][0]["function"]["arguments"])
    # The same value gets the same placeholder in every message, including inside tool arguments.
    john = args["name"]
    assert john.startswith("<PERSON_")
    assert john in sent[1]["content"] and john in sent[3]["content"] and john in sent[4]["content"][0]["text"]
    assert sent[4]["name"] == sent[0]["content"].split("help ")[1].split(" with")[0]


NAMED = "Ask John Smith before you book anything."


def schema_with(**assignee: Any) -> dict[str, Any]:
    """A tool-parameters schema whose one property carries ``assignee`` (the field under test)."""
    return {
        "type": "object",
        "properties": {"assignee": {"type": "string", **assignee}, "when": {"type": "string", "format": "date"}},
        "required": ["assignee", "when"],
        "additionalProperties": False,
    }


def function_tool(about: str = "Book a meeting.", **assignee: Any) -> dict[str, Any]:
    return {
        "type": "function",
        "function": {"name": "book", "description": about, "parameters": schema_with(**assignee)},
    }


def json_format(about: str = "A booking.", **assignee: Any) -> dict[str, Any]:
    schema = schema_with(**assignee)
    return {"type": "json_schema", "json_schema": {"name": "booking", "description": about, "schema": schema}}


DEFINITION_FIELDS: dict[str, dict[str, Any]] = {
    "tools.function.description": {"tools": [function_tool(NAMED)]},
    "tools.function.parameters.description": {"tools": [function_tool(description=NAMED)]},
    "tools.function.parameters.title": {"tools": [function_tool(title="Booking for John Smith")]},
    "tools.function.parameters.examples": {"tools": [function_tool(examples=["John Smith", 3])]},
    "tools.function.parameters.default": {"tools": [function_tool(default="John Smith")]},
    "tools.function.parameters.enum": {"tools": [function_tool(enum=["John Smith", "nobody"])]},
    "functions.description": {"functions": [{"name": "book", "description": NAMED, "parameters": schema_with()}]},
    "response_format.json_schema.description": {"response_format": json_format(NAMED)},
    "response_format.json_schema.schema": {"response_format": json_format(description=NAMED)},
    "prediction.content": {"prediction": {"type": "content", "content": NAMED}},
    "prediction.content.parts": {"prediction": {"type": "content", "content": [{"type": "text", "text": NAMED}]}},
}


@pytest.mark.parametrize("fields", DEFINITION_FIELDS.values(), ids=DEFINITION_FIELDS.keys())
async def test_tool_schema_and_prediction_text_is_scanned(
    client: openai.AsyncOpenAI, fake_upstream: FakeUpstream, fields: dict[str, Any]
) -> None:
    """Text the model reads outside the messages is redacted like a message; identifiers and syntax stay.

    The name is only in the field under test, so it is hidden by scanning that field, not by
    propagation from a message that also holds it.
    """
    await client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "Please book the meeting."}], **fields
    )
    sent = fake_upstream.requests[-1]
    assert "John Smith" not in upstream_text(fake_upstream)
    assert "<PERSON_1>" in orjson.dumps({k: sent[k] for k in fields}).decode()
    # Property names, the required list, types and formats reach the upstream as the client wrote them.
    schemas = [t["function"]["parameters"] for t in sent.get("tools", [])] + [
        f["parameters"] for f in sent.get("functions", [])
    ]
    if "response_format" in sent:
        schemas.append(sent["response_format"]["json_schema"]["schema"])
    for schema in schemas:
        assert list(schema["properties"]) == ["assignee", "when"]
        assert schema["required"] == ["assignee", "when"]
        assert schema["properties"]["when"] == {"type": "string", "format": "date"}
    for tool in sent.get("tools", []) + sent.get("functions", []):
        assert tool.get("function", tool)["name"] == "book"


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
async def test_an_enum_value_shares_the_requests_placeholders_and_comes_back_restored(
    client: openai.AsyncOpenAI, fake_upstream: FakeUpstream, stream: bool
) -> None:
    """Definitions use the request's one placeholder table: the model can answer with an enum value's
    placeholder, and the client gets the value back in the arguments."""
    prompt = "Book it for John Smith tomorrow."
    tools: Any = [function_tool(description="Who attends; John Smith is the usual one.", enum=["John Smith", "nobody"])]
    messages: Any = [{"role": "user", "content": prompt}]
    args = await tool_call_arguments(client, messages, tools, stream)
    assert json.loads(args) == {"text": prompt}  # the fake echoes the (redacted) prompt as arguments
    sent = fake_upstream.requests[-1]
    assert "John Smith" not in upstream_text(fake_upstream)
    assignee = sent["tools"][0]["function"]["parameters"]["properties"]["assignee"]
    placeholder = assignee["enum"][0]
    assert placeholder.startswith("<PERSON_") and assignee["enum"][1] == "nobody"
    assert placeholder in assignee["description"] and placeholder in sent["messages"][0]["content"]


async def test_resent_conversation_keeps_placeholders_stable(
    client: openai.AsyncOpenAI, fake_upstream: FakeUpstream
) -> None:
    turn1: Any = [{"role": "user", "content": "My name is Maria Gonzalez, email maria@example.com."}]
    reply = await client.chat.completions.create(model="m", messages=turn1)
    first = fake_upstream.requests[-1]["messages"][0]["content"]
    turn2: Any = [
        *turn1,
        {"role": "assistant", "content": reply.choices[0].message.content},
        {"role": "user", "content": "Now write to John Smith for me."},
    ]
    await client.chat.completions.create(model="m", messages=turn2)
    again = fake_upstream.requests[-1]["messages"]
    assert again[0]["content"] == first
    assert again[1]["content"] == first  # the restored echo is re-redacted to the same placeholders


async def test_n_greater_than_one_restores_every_choice(
    client: openai.AsyncOpenAI, fake_upstream: FakeUpstream
) -> None:
    reply = await client.chat.completions.create(model="m", messages=[{"role": "user", "content": PROMPT}], n=3)
    assert [c.message.content for c in reply.choices] == [PROMPT] * 3
    stream = await client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": PROMPT}], n=3, stream=True
    )
    texts = ["", "", ""]
    async for chunk in stream:
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
    assert texts == [PROMPT] * 3


async def test_placeholder_shaped_user_text_is_left_alone_and_reveals_nothing(
    client: openai.AsyncOpenAI, fake_upstream: FakeUpstream
) -> None:
    prompt = "Repeat exactly: <PERSON_1> and <EMAIL_ADDRESS_1>. My colleague is John Smith."
    for stream in (False, True):
        if stream:
            s = await client.chat.completions.create(
                model="m", messages=[{"role": "user", "content": prompt}], stream=True
            )
            out = "".join([c.choices[0].delta.content or "" async for c in s if c.choices])
        else:
            r = await client.chat.completions.create(model="m", messages=[{"role": "user", "content": prompt}])
            out = r.choices[0].message.content or ""
        assert out == prompt
        sent = fake_upstream.requests[-1]["messages"][0]["content"]
        assert "John Smith" not in sent
        assert sent.startswith("Repeat exactly: <PERSON_1> and <EMAIL_ADDRESS_1>.")
        assert "<PERSON_2>" in sent  # numbering skipped the literal <PERSON_1>


async def test_unknown_and_new_fields_pass_through_both_ways(
    client: openai.AsyncOpenAI, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.extra_fields = {"service_tier": "default", "brand_new_field": {"x": [1, 2]}}
    reply = await client.chat.completions.create(
        model="m",
        messages=[{"role": "user", "content": "hello"}],
        temperature=0.3,
        seed=42,
        logprobs=True,
        extra_body={"some_future_param": {"a": 1}},
        metadata={"team": "qa"},
    )
    sent = fake_upstream.requests[-1]
    assert sent["temperature"] == 0.3 and sent["seed"] == 42 and sent["logprobs"] is True
    assert sent["some_future_param"] == {"a": 1}
    assert sent["metadata"] == {"team": "qa"}
    dumped = reply.model_dump()
    assert dumped["brand_new_field"] == {"x": [1, 2]}
    assert dumped["service_tier"] == "default"


async def test_detector_failure_forwards_nothing(
    client: openai.AsyncOpenAI, fake_upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(model: str, texts: Any, spec: DetectionSpec, disable: Any = ()) -> list[list[Finding]]:
        raise RuntimeError("spaCy exploded on John Smith")  # the message quotes input; it must not leak

    # Raised inside the detector's worker thread, as a real Presidio failure would be.
    monkeypatch.setattr(gateway.detector, "analyze_batch", broken)
    with pytest.raises(openai.InternalServerError) as info:
        await client.chat.completions.create(model="m", messages=[{"role": "user", "content": PROMPT}])
    assert info.value.status_code == 503
    body: Any = info.value.body
    assert body["code"] == "pii_detection_failed"
    assert "John" not in json.dumps(body)
    assert fake_upstream.requests == []
    with pytest.raises(openai.InternalServerError):
        s = await client.chat.completions.create(model="m", messages=[{"role": "user", "content": PROMPT}], stream=True)
        async for _ in s:
            pass
    assert fake_upstream.requests == []


async def test_detector_timeout_forwards_nothing(
    client: openai.AsyncOpenAI,
    fake_upstream: FakeUpstream,
    detector: PresidioDetector,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(detector, "timeout", 0.0001)
    with pytest.raises(openai.InternalServerError) as info:
        await client.chat.completions.create(model="m", messages=[{"role": "user", "content": PROMPT * 20}])
    assert info.value.status_code == 503
    assert info.value.body["code"] == "pii_detection_timeout"  # type: ignore[index]
    assert fake_upstream.requests == []


@pytest.mark.parametrize(
    ("status", "error"),
    [(400, openai.BadRequestError), (429, openai.RateLimitError), (500, openai.InternalServerError)],
)
async def test_upstream_errors_pass_through_with_placeholders_restored(
    client: openai.AsyncOpenAI, fake_upstream: FakeUpstream, status: int, error: type[openai.APIStatusError]
) -> None:
    fake_upstream.mode = "status"
    fake_upstream.status = status
    fake_upstream.error_body = orjson.dumps(
        {
            "error": {
                "message": "Content about <PERSON_1> rejected",
                "type": "invalid_request_error",
                "code": "x",
            }
        }
    )
    with pytest.raises(error) as info:
        await client.chat.completions.create(model="m", messages=[{"role": "user", "content": "I am John Smith."}])
    assert info.value.status_code == status
    assert info.value.body["message"] == "Content about John Smith rejected"  # type: ignore[index]


async def test_upstream_unreachable_is_a_502_in_openai_shape(
    settings: Any, detector: PresidioDetector, policy_book: Any, aiohttp_server: Any
) -> None:
    from gateway.app import create_app

    dead = settings.model_copy(update={"upstream": "http://127.0.0.1:9/v1"})
    server = await aiohttp_server(create_app(dead, detector=detector, policies=policy_book))
    async with openai.AsyncOpenAI(base_url=str(server.make_url("/v1")), api_key="k", max_retries=0) as c:
        with pytest.raises(openai.APIStatusError) as info:
            await c.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    assert info.value.status_code == 502
    assert info.value.body["code"] == "upstream_error"  # type: ignore[index]


async def test_upstream_breaking_mid_stream_ends_with_an_sse_error_event(
    client: openai.AsyncOpenAI, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.mode = "break"
    s = await client.chat.completions.create(model="m", messages=[{"role": "user", "content": PROMPT}], stream=True)
    with pytest.raises(openai.APIError) as info:
        async for _ in s:
            pass
    assert "upstream" in str(info.value.message).lower()


async def test_client_disconnect_mid_stream_closes_the_upstream(gateway_url: str, fake_upstream: FakeUpstream) -> None:
    fake_upstream.mode = "slow_stream"
    body = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "x" * 400}]}
    async with aiohttp.ClientSession() as session:
        response = await session.post(gateway_url + "/v1/chat/completions", json=body)
        await response.content.readany()
        response.close()  # the client goes away mid-stream
    await asyncio.wait_for(fake_upstream.stream_closed_early.wait(), 5)


async def test_unknown_endpoint_is_refused_and_never_forwarded(gateway_url: str, fake_upstream: FakeUpstream) -> None:
    async with aiohttp.ClientSession() as session:
        for method, path in [
            ("POST", "/v1/fine_tuning/jobs"),
            ("GET", "/v1/files"),
            ("POST", "/v2/chat/completions"),
        ]:
            async with session.request(method, gateway_url + path, json={"x": "John Smith"}) as r:
                assert r.status == 404
                body = await r.json()
                assert body["error"]["code"] == "unknown_url"
    assert fake_upstream.requests == []


async def test_bad_json_and_bad_shapes_are_clear_400s(gateway_url: str, fake_upstream: FakeUpstream) -> None:
    async with aiohttp.ClientSession() as session:
        url = gateway_url + "/v1/chat/completions"
        async with session.post(
            url, data=b'{"model": "m", "messages": [', headers={"Content-Type": "application/json"}
        ) as r:
            assert r.status == 400
            assert (await r.json())["error"]["code"] == "invalid_json"
        async with session.post(url, json={"model": "m", "messages": "hi"}) as r:
            assert r.status == 400
            assert (await r.json())["error"]["param"] == "messages"
        image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
        async with session.post(url, json={"model": "m", "messages": [{"role": "user", "content": [image]}]}) as r:
            assert r.status == 400
            assert (await r.json())["error"]["code"] == "unscannable_content"
        async with session.post(url, data=io.BytesIO(b"x" * (9 * 1024 * 1024))) as r:
            assert r.status == 413
    assert fake_upstream.requests == []


async def test_health_and_readiness(gateway_url: str) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.get(gateway_url + "/healthz") as r:
            assert r.status == 200
        async with session.get(gateway_url + "/readyz") as r:
            assert r.status == 200
            assert "default" in (await r.json())["policies"]


async def test_client_authorization_passes_through_by_default(
    client: openai.AsyncOpenAI, fake_upstream: FakeUpstream
) -> None:
    await client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hello"}])
    assert fake_upstream.headers[-1]["Authorization"] == "Bearer sk-client-test"


async def test_configured_upstream_key_replaces_the_clients(
    settings: Any,
    detector: PresidioDetector,
    policy_book: Any,
    aiohttp_server: Any,
    fake_upstream: FakeUpstream,
) -> None:
    from gateway.app import create_app

    ring, key = KeyRing({}).create(tenant="acme", policy="default")
    ring.save(settings.resolved_keys_file())
    keyed = settings.model_copy(update={"upstream_api_key": Secret("sk-upstream")})
    server = await aiohttp_server(create_app(keyed, detector=detector, policies=policy_book))
    async with openai.AsyncOpenAI(base_url=str(server.make_url("/v1")), api_key=key, max_retries=0) as c:
        await c.chat.completions.create(model="m", messages=[{"role": "user", "content": "hello"}])
    assert fake_upstream.headers[-1]["Authorization"] == "Bearer sk-upstream"
    assert key not in str(fake_upstream.headers[-1])
    # With an upstream key of its own, the gateway refuses a client that brings only a provider key.
    async with openai.AsyncOpenAI(base_url=str(server.make_url("/v1")), api_key="sk-provider", max_retries=0) as c:
        with pytest.raises(openai.AuthenticationError):
            await c.chat.completions.create(model="m", messages=[{"role": "user", "content": "hello"}])
    assert len(fake_upstream.requests) == 1


class GatedUpstream:
    """An upstream whose streamed answer pauses after its first event until the test opens ``gate``.

    The stream then echoes the (redacted) user text in 2-character events; a request that is not
    streamed is answered at once with ``done``.
    """

    def __init__(self) -> None:
        self.gate = asyncio.Event()

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self.chat)
        return app

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json(loads=orjson.loads)
        base = {"id": "chatcmpl-gated", "created": 0, "model": "m"}
        if not body.get("stream"):
            choice = {"index": 0, "message": {"role": "assistant", "content": "done"}, "finish_reason": "stop"}
            return web.json_response({**base, "object": "chat.completion", "choices": [choice]})
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)

        async def send(delta: dict[str, Any], finish: str | None = None) -> None:
            chunk = {
                **base,
                "object": "chat.completion.chunk",
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }
            await response.write(b"data: " + orjson.dumps(chunk) + b"\n\n")

        await send({"role": "assistant", "content": ""})
        await self.gate.wait()
        text = body["messages"][-1]["content"]
        for i in range(0, len(text), 2):
            await send({"content": text[i : i + 2]})
        await send({}, "stop")
        await response.write(b"data: [DONE]\n\n")
        return response


async def test_streams_keep_flowing_while_a_large_request_is_analysed(
    settings: Any,
    policy_book: Any,
    gateway_server: Any,
    aiohttp_server: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A stream relays its events while another request is being analysed by the real detector.

    The upstream holds the small stream after its first event until the large request's analysis has
    begun; every later event must then cross the gateway's event loop (which this test shares) during
    that analysis. Were the analysis run on the loop, nothing could move until it ended, the test
    included. So the order of two events decides, not a timer: the small stream is complete before the
    large request's analysis is.
    """
    from gateway.app import create_app
    from tests.conftest import MODEL

    upstream = GatedUpstream()
    upstream_url = str((await aiohttp_server(upstream.app())).make_url("/v1"))
    det = PresidioDetector(MODEL, workers=1, timeout=300)
    await det.start([tuple(sorted(policy.regions)) for policy in policy_book.policies.values()])
    analysing, analysed = asyncio.Event(), asyncio.Event()
    analyze = det.analyze

    async def observed(texts: Any, spec: DetectionSpec) -> list[list[Finding]]:
        large = sum(len(t) for t in texts) > 10_000
        if large:
            analysing.set()
        try:
            return await analyze(texts, spec)
        finally:
            if large:
                analysed.set()

    monkeypatch.setattr(det, "analyze", observed)
    try:
        app = create_app(settings.model_copy(update={"upstream": upstream_url}), detector=det, policies=policy_book)
        server = await gateway_server(app)
        async with openai.AsyncOpenAI(base_url=str(server.make_url("/v1")), api_key="sk-x", max_retries=0) as c:
            small = "Hi, I'm Maria Gonzalez. Please write to john.smith@example.com about the invoice."
            stream = await c.chat.completions.create(
                model="m", messages=[{"role": "user", "content": small}], stream=True
            )
            chunks = aiter(stream)
            await anext(chunks)  # the small request is analysed and its stream is open
            big: Any = [{"role": "user", "content": PROMPT * 150}]
            big_reply = asyncio.create_task(c.chat.completions.create(model="m", messages=big))
            started = asyncio.create_task(analysing.wait())
            await asyncio.wait({big_reply, started}, return_when=asyncio.FIRST_COMPLETED)
            assert analysing.is_set(), "the large request failed before its analysis began"
            upstream.gate.set()
            received = [chunk async for chunk in chunks]
            assert not analysed.is_set(), "the stream waited for the large request's analysis to finish"
            text = "".join(choice.delta.content or "" for chunk in received for choice in chunk.choices)
            assert text == small  # every event went through, restored
            assert len(received) > 20  # the echo came in 2-character events, all after the gate opened
            assert (await big_reply).choices[0].message.content == "done"
            assert analysed.is_set()
    finally:
        await det.close()


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
async def test_a_re_sent_answer_costs_no_analysis_and_leaks_nothing(
    settings: Any, policy_book: Any, gateway_server: Any, fake_upstream: FakeUpstream, stream: bool
) -> None:
    """Turn 2 re-sends turn 1's restored answer: its findings are known from restoration, not analysed again."""
    from gateway.app import create_app
    from tests.conftest import MODEL

    fake_upstream.reply_prefix = "Noted: "  # the answer is a text the gateway has not analysed
    det = PresidioDetector(MODEL, workers=0, timeout=60, cache_entries=100)
    await det.start()
    try:
        server = await gateway_server(create_app(settings, detector=det, policies=policy_book))
        async with openai.AsyncOpenAI(base_url=str(server.make_url("/v1")), api_key="sk-x", max_retries=0) as c:
            first: list[Any] = [{"role": "user", "content": PROMPT}]
            answer: str | None
            if stream:
                parts = await c.chat.completions.create(model="m", messages=first, stream=True)
                answer = "".join([chunk.choices[0].delta.content or "" async for chunk in parts if chunk.choices])
            else:
                answer = (await c.chat.completions.create(model="m", messages=first)).choices[0].message.content
            assert answer == "Noted: " + PROMPT
            misses = det.cache_misses
            second: list[Any] = [
                *first,
                {"role": "assistant", "content": answer},
                {"role": "user", "content": "Thanks!"},
            ]
            reply = await c.chat.completions.create(model="m", messages=second)
            assert reply.choices[0].message.content == "Noted: Thanks!"
        # Turn 2 analysed only its new message: the user turn was cached, the answer remembered.
        assert det.cache_misses == misses + 1
        assert_nothing_leaked(fake_upstream)
        sent = fake_upstream.requests[-1]["messages"]
        # The re-sent answer carries the same placeholders as the prompt it echoes.
        assert sent[1]["content"] == "Noted: " + sent[0]["content"]
    finally:
        await det.close()
