"""Every door: Responses, Anthropic Messages, Azure OpenAI, embeddings, legacy completions, models, routing.

Each API is driven by its official SDK, plain and streamed, against a fake upstream for that wire
format that echoes what it got in 1-to-4-character stream events. Answers must come back
byte-identical to the prompt, and the upstream must receive none of the values.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import anthropic
import openai
import orjson
import pytest
from aiohttp.test_utils import TestServer

from gateway.app import create_app
from gateway.detector import PresidioDetector
from gateway.policy import PolicyBook
from gateway.settings import Secret, Settings, UpstreamSettings
from tests.fake_upstream import MultiUpstream

Server = Callable[..., Awaitable[TestServer]]

PROMPT = (
    "Hi, I'm Maria Gonzalez. Write to John Smith at john.smith@example.com about card 4111 1111 1111 1111, "
    "and copy ann.lee@example.org."
)
VALUES = ["Maria Gonzalez", "John Smith", "john.smith@example.com", "4111 1111 1111 1111", "ann.lee@example.org"]


@pytest.fixture
def multi() -> MultiUpstream:
    return MultiUpstream()


@pytest.fixture
async def multi_url(multi: MultiUpstream, aiohttp_server: Server) -> str:
    server = await aiohttp_server(multi.app())
    return str(server.make_url(""))


@pytest.fixture
async def gateway(settings: Settings, detector: PresidioDetector, multi_url: str, aiohttp_server: Server) -> str:
    configured = settings.model_copy(update={"upstream": multi_url + "/v1"})
    server = await aiohttp_server(create_app(configured, detector=detector))
    return str(server.make_url(""))


def assert_clean(multi: MultiUpstream) -> None:
    sent = orjson.dumps(multi.requests[-1]).decode()
    for value in VALUES:
        assert value not in sent, value


@pytest.fixture
async def oai(gateway: str) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(base_url=gateway + "/v1", api_key="sk-x", max_retries=0) as client:
        yield client


@pytest.fixture
async def claude(gateway: str) -> AsyncIterator[anthropic.AsyncAnthropic]:
    async with anthropic.AsyncAnthropic(base_url=gateway, api_key="sk-ant-x", max_retries=0) as client:
        yield client


# --- Responses API -------------------------------------------------------------------------------


async def test_responses_plain_and_streamed(oai: openai.AsyncOpenAI, multi: MultiUpstream) -> None:
    reply = await oai.responses.create(model="m", input=PROMPT, instructions="You help Maria Gonzalez.", store=False)
    assert reply.output_text == PROMPT
    assert_clean(multi)
    assert "<PERSON_" in multi.requests[-1]["instructions"]

    text = []
    completed = None
    async with oai.responses.stream(model="m", input=[{"role": "user", "content": PROMPT}], store=False) as stream:
        async for event in stream:
            if event.type == "response.output_text.delta":
                text.append(event.delta)
            if event.type == "response.completed":
                completed = event.response
    assert "".join(text) == PROMPT
    assert completed is not None
    assert completed.output_text == PROMPT
    assert_clean(multi)


async def test_responses_tool_round_trip(oai: openai.AsyncOpenAI, multi: MultiUpstream) -> None:
    tools: Any = [{"type": "function", "name": "echo", "parameters": {"type": "object"}, "strict": False}]
    reply = await oai.responses.create(model="m", input=PROMPT, tools=tools, store=False)
    call = reply.output[0]
    assert call.type == "function_call"
    assert json.loads(call.arguments) == {"text": PROMPT}
    first = multi.requests[-1]["input"]
    # The client sends the call and its result back, with the real values in them.
    follow: Any = [
        {"role": "user", "content": PROMPT},
        {"type": "function_call", "call_id": call.call_id, "name": "echo", "arguments": call.arguments},
        {"type": "function_call_output", "call_id": call.call_id, "output": "Sent to john.smith@example.com"},
    ]
    await oai.responses.create(model="m", input=follow, tools=tools, store=False)
    sent = multi.requests[-1]["input"]
    assert sent[0]["content"] == first  # the same placeholders again
    assert json.loads(sent[1]["arguments"]) == {"text": first}
    assert "john.smith@example.com" not in sent[2]["output"]
    streamed = ""
    async with oai.responses.stream(model="m", input=PROMPT, tools=tools, store=False) as stream:
        async for event in stream:
            if event.type == "response.function_call_arguments.delta":
                streamed += event.delta
    assert json.loads(streamed) == {"text": PROMPT}


# --- Anthropic Messages --------------------------------------------------------------------------


async def test_anthropic_messages_plain_and_streamed(claude: anthropic.AsyncAnthropic, multi: MultiUpstream) -> None:
    reply = await claude.messages.create(
        model="claude-x",
        max_tokens=100,
        system="You help Maria Gonzalez.",
        messages=[{"role": "user", "content": PROMPT}],
    )
    block = reply.content[0]
    assert block.type == "text"
    assert block.text == PROMPT
    assert_clean(multi)
    assert "<PERSON_" in multi.requests[-1]["system"]

    async with claude.messages.stream(
        model="claude-x", max_tokens=100, messages=[{"role": "user", "content": [{"type": "text", "text": PROMPT}]}]
    ) as stream:
        text = "".join([t async for t in stream.text_stream])
        final = await stream.get_final_message()
    assert text == PROMPT
    assert final.content[0].type == "text"
    assert final.content[0].text == PROMPT
    assert_clean(multi)


async def test_anthropic_tool_round_trip(claude: anthropic.AsyncAnthropic, multi: MultiUpstream) -> None:
    tools: Any = [{"name": "echo", "description": "echo", "input_schema": {"type": "object"}}]
    reply = await claude.messages.create(
        model="claude-x", max_tokens=100, tools=tools, messages=[{"role": "user", "content": PROMPT}]
    )
    use = reply.content[0]
    assert use.type == "tool_use"
    assert use.input == {"text": PROMPT}
    first = multi.requests[-1]["messages"][0]["content"]
    messages: Any = [
        {"role": "user", "content": PROMPT},
        {"role": "assistant", "content": [{"type": "tool_use", "id": use.id, "name": "echo", "input": use.input}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "Mailed John Smith."}]},
    ]
    await claude.messages.create(model="claude-x", max_tokens=100, tools=tools, messages=messages)
    sent = multi.requests[-1]["messages"]
    assert sent[0]["content"] == first
    assert sent[1]["content"][0]["input"] == {"text": first}  # the same placeholders again
    assert "John Smith" not in sent[2]["content"][0]["content"]
    async with claude.messages.stream(
        model="claude-x", max_tokens=100, tools=tools, messages=[{"role": "user", "content": PROMPT}]
    ) as stream:
        final = await stream.get_final_message()
    assert final.content[0].type == "tool_use"
    assert final.content[0].input == {"text": PROMPT}


async def test_anthropic_errors_come_in_anthropics_shape(gateway: str, multi: MultiUpstream) -> None:
    async with anthropic.AsyncAnthropic(base_url=gateway + "/anthropic", api_key="k", max_retries=0) as client:
        image: Any = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}}
        with pytest.raises(anthropic.BadRequestError) as info:
            await client.messages.create(model="m", max_tokens=5, messages=[{"role": "user", "content": [image]}])
    assert info.value.body == {
        "type": "error",
        "error": {"type": "invalid_request_error", "message": info.value.body["error"]["message"]},  # type: ignore[index]
    }
    assert "cannot scan" in str(info.value)
    assert multi.requests == []


# --- text the model reads outside the messages -----------------------------------------------------

NAMED = "Ask John Smith before you book anything."
SCHEMA: dict[str, Any] = {
    "type": "object",
    "title": "Booking for John Smith",
    "properties": {
        "assignee": {"type": "string", "description": NAMED, "enum": ["John Smith", "nobody"]},
        "when": {"type": "string", "format": "date"},
    },
    "required": ["assignee", "when"],
}


def assert_schema_kept(schema: dict[str, Any]) -> None:
    """Property names, the required list, types and formats reach the upstream as the client wrote them."""
    assert list(schema["properties"]) == ["assignee", "when"]
    assert schema["required"] == ["assignee", "when"]
    assert schema["properties"]["when"] == {"type": "string", "format": "date"}
    assert schema["properties"]["assignee"]["enum"][1] == "nobody"


RESPONSES_FIELDS: dict[str, dict[str, Any]] = {
    "instructions": {"instructions": NAMED},
    "tools.description": {"tools": [{"type": "function", "name": "book", "description": NAMED, "parameters": {}}]},
    "tools.parameters": {"tools": [{"type": "function", "name": "book", "parameters": SCHEMA, "strict": False}]},
    "text.format.description": {
        "text": {"format": {"type": "json_schema", "name": "booking", "description": NAMED, "schema": {}}}
    },
    "text.format.schema": {"text": {"format": {"type": "json_schema", "name": "booking", "schema": SCHEMA}}},
    "prompt.variables": {
        "prompt": {"id": "pmpt_1", "variables": {"who": "John Smith", "note": {"type": "input_text", "text": NAMED}}}
    },
}


@pytest.mark.parametrize("fields", RESPONSES_FIELDS.values(), ids=RESPONSES_FIELDS.keys())
async def test_responses_definitions_and_instructions_are_scanned(
    oai: openai.AsyncOpenAI, multi: MultiUpstream, fields: dict[str, Any]
) -> None:
    """The name is only in the field under test: it is hidden by scanning that field, not by propagation."""
    reply = await oai.responses.create(model="m", input="Please book the meeting.", store=False, **fields)
    assert reply.output_text == "Please book the meeting." or reply.output[0].type == "function_call"
    sent = multi.requests[-1]
    assert "John Smith" not in orjson.dumps(sent).decode()
    assert "<PERSON_1>" in orjson.dumps({k: sent[k] for k in fields}).decode()
    for tool in sent.get("tools", []):
        assert tool["name"] == "book"
        if tool.get("parameters"):
            assert_schema_kept(tool["parameters"])
    text_format = sent.get("text", {}).get("format", {})
    if text_format.get("schema"):
        assert_schema_kept(text_format["schema"])
    if "prompt" in sent:
        assert list(sent["prompt"]["variables"]) == ["who", "note"]  # variable names are identifiers


ANTHROPIC_FIELDS: dict[str, dict[str, Any]] = {
    "system": {"system": NAMED},
    "system.blocks": {"system": [{"type": "text", "text": NAMED}]},
    "tools.description": {"tools": [{"name": "book", "description": NAMED, "input_schema": {"type": "object"}}]},
    "tools.input_schema": {"tools": [{"name": "book", "input_schema": SCHEMA}]},
}


@pytest.mark.parametrize("fields", ANTHROPIC_FIELDS.values(), ids=ANTHROPIC_FIELDS.keys())
async def test_anthropic_system_and_tool_definitions_are_scanned(
    claude: anthropic.AsyncAnthropic, multi: MultiUpstream, fields: dict[str, Any]
) -> None:
    await claude.messages.create(
        model="claude-x", max_tokens=100, messages=[{"role": "user", "content": "Please book the meeting."}], **fields
    )
    sent = multi.requests[-1]
    assert "John Smith" not in orjson.dumps(sent).decode()
    assert "<PERSON_1>" in orjson.dumps({k: sent[k] for k in fields}).decode()
    for tool in sent.get("tools", []):
        assert tool["name"] == "book"
        if tool["input_schema"].get("properties"):
            assert_schema_kept(tool["input_schema"])


async def test_legacy_prompt_and_embeddings_input_alone_are_scanned(
    oai: openai.AsyncOpenAI, multi: MultiUpstream
) -> None:
    await oai.completions.create(model="c", prompt=NAMED)
    assert "<PERSON_1>" in multi.requests[-1]["prompt"]
    await oai.completions.create(model="c", prompt=["Please book it.", NAMED])
    assert "<PERSON_1>" in multi.requests[-1]["prompt"][1]
    await oai.embeddings.create(model="e", input=NAMED)
    assert "<PERSON_1>" in multi.requests[-1]["input"]
    assert "John Smith" not in orjson.dumps(multi.requests).decode()


# --- Azure, embeddings, completions, models ------------------------------------------------------


async def test_azure_paths_and_api_key_header(
    settings: Settings, detector: PresidioDetector, multi_url: str, multi: MultiUpstream, aiohttp_server: Server
) -> None:
    azure = UpstreamSettings(name="azure", url=multi_url, kind="azure", api_key=Secret("azure-secret"))
    ring_settings = settings.model_copy(update={"upstreams": [azure], "upstream": None})
    from gateway.keys import KeyRing

    ring, key = KeyRing({}).create("acme", None)
    ring.save(ring_settings.resolved_keys_file())
    server = await aiohttp_server(create_app(ring_settings, detector=detector))
    async with openai.AsyncAzureOpenAI(
        azure_endpoint=str(server.make_url("")), api_key=key, api_version="2024-10-21", max_retries=0
    ) as client:
        reply = await client.chat.completions.create(
            model="my-deployment", messages=[{"role": "user", "content": PROMPT}]
        )
    assert reply.choices[0].message.content == PROMPT
    assert multi.paths[-1] == "/openai/deployments/my-deployment/chat/completions?api-version=2024-10-21"
    assert multi.headers[-1]["api-key"] == "azure-secret"
    assert key not in str(multi.headers[-1])
    assert_clean(multi)


async def test_embeddings_are_redacted_and_token_arrays_refused(oai: openai.AsyncOpenAI, multi: MultiUpstream) -> None:
    result = await oai.embeddings.create(model="e", input=[PROMPT, "plain text"])
    assert len(result.data) == 2
    assert_clean(multi)
    assert multi.requests[-1]["input"][1] == "plain text"
    with pytest.raises(openai.BadRequestError) as info:
        await oai.embeddings.create(model="e", input=[[1, 2, 3]])
    assert info.value.body["code"] == "unscannable_content"  # type: ignore[index]


async def test_legacy_completions_plain_and_streamed(oai: openai.AsyncOpenAI, multi: MultiUpstream) -> None:
    reply = await oai.completions.create(model="c", prompt=PROMPT)
    assert reply.choices[0].text == PROMPT
    assert_clean(multi)
    stream = await oai.completions.create(model="c", prompt=PROMPT, stream=True)
    assert "".join([c.choices[0].text async for c in stream if c.choices]) == PROMPT


async def test_models_pass_through(oai: openai.AsyncOpenAI, multi: MultiUpstream) -> None:
    models = await oai.models.list()
    assert [m.id for m in models.data] == ["m"]
    assert multi.paths[-1] == "/v1/models"


# --- Routing -------------------------------------------------------------------------------------


async def test_routing_by_model_to_several_upstreams_and_unknown_models(
    settings: Settings, detector: PresidioDetector, aiohttp_server: Server, tmp_path: Path
) -> None:
    one, two = MultiUpstream(), MultiUpstream()
    url_one = str((await aiohttp_server(one.app())).make_url("/v1"))
    url_two = str((await aiohttp_server(two.app())).make_url("/v1"))
    upstreams = [
        UpstreamSettings(name="gpt", url=url_one, models=["gpt-*"]),
        UpstreamSettings(name="local", url=url_two, models=["llama-*"], routes=["chat.completions"]),
    ]
    server = await aiohttp_server(create_app(settings.model_copy(update={"upstreams": upstreams}), detector=detector))
    async with openai.AsyncOpenAI(base_url=str(server.make_url("/v1")), api_key="k", max_retries=0) as client:
        await client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
        await client.chat.completions.create(model="llama-3", messages=[{"role": "user", "content": "hi"}])
        assert (len(one.requests), len(two.requests)) == (1, 1)
        with pytest.raises(openai.NotFoundError) as info:
            await client.chat.completions.create(model="mystery", messages=[{"role": "user", "content": "hi"}])
        assert info.value.body["code"] == "unknown_url"  # type: ignore[index]
        with pytest.raises(openai.NotFoundError):  # llama is allowed only for chat
            await client.embeddings.create(model="llama-3", input="hi")
    async with aiohttp.ClientSession() as session:
        body = {"model": "mystery", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
        async with session.post(str(server.make_url("/v1/messages")), json=body) as r:
            assert r.status == 404
            assert (await r.json())["type"] == "error"  # Anthropic's shape for an Anthropic route


# --- the same data through every door -------------------------------------------------------------


async def test_every_api_forwards_what_chat_forwards_for_the_detection_benchmarks_data(
    oai: openai.AsyncOpenAI, claude: anthropic.AsyncAnthropic, multi: MultiUpstream, policy_book: PolicyBook
) -> None:
    """A mixed sample of bench/detection.py's data (presidio-evaluator sentences and chat prompts),
    through each API: the upstream gets, text for text, what chat completions forwards, no labelled
    value of a scored type (by the benchmark's own leak rule), and every answer comes back as it was
    sent. No API is a door that hides less than chat does.

    (On the whole benchmark chat leaks a few per cent of values: docs/detection.md. This sample, the
    benchmark's first 30 + 30 texts for seed 5, holds 123 scored values and none leaks.)
    """
    from bench.detection import SCORED, build_samples, kept_labels, leaked, restored_as_policy_allows

    samples = build_samples(30, 30, seed=5)
    kept = kept_labels(policy_book.policies["default"])  # SECRET: redacted, never put back

    async def chat(text: str) -> tuple[str, str]:
        reply = await oai.chat.completions.create(model="m", messages=[{"role": "user", "content": text}])
        return multi.requests[-1]["messages"][-1]["content"], reply.choices[0].message.content or ""

    async def responses(text: str) -> tuple[str, str]:
        reply = await oai.responses.create(model="m", input=text, store=False)
        return multi.requests[-1]["input"], reply.output_text

    async def messages(text: str) -> tuple[str, str]:
        reply = await claude.messages.create(model="c", max_tokens=50, messages=[{"role": "user", "content": text}])
        block = reply.content[0]
        return multi.requests[-1]["messages"][-1]["content"], block.text if block.type == "text" else ""

    async def completions(text: str) -> tuple[str, str]:
        reply = await oai.completions.create(model="c", prompt=text)
        return multi.requests[-1]["prompt"], reply.choices[0].text

    async def embeddings(text: str) -> tuple[str, str]:
        await oai.embeddings.create(model="e", input=text)
        return multi.requests[-1]["input"], text  # nothing comes back to restore

    doors = {"responses": responses, "anthropic": messages, "completions": completions, "embeddings": embeddings}
    redacted = scored = 0
    for sample in samples:
        forwarded, answer = await chat(sample.text)
        assert restored_as_policy_allows(sample.text, answer, forwarded, kept), sample.id
        redacted += forwarded != sample.text
        for span in sample.spans:
            if span.label in SCORED:
                assert not leaked(sample.text, sample.spans, span, forwarded), f"{span.label} of {sample.id} leaked"
                scored += 1
        for name, door in doors.items():
            other, answer = await door(sample.text)
            assert other == forwarded, f"{name} forwards something else than chat for {sample.id}"
            assert restored_as_policy_allows(sample.text, answer, other, kept), name
    # The comparison means something only if chat did redact: most of these texts hold a value it finds.
    assert redacted >= len(samples) // 2
    assert scored > 100
