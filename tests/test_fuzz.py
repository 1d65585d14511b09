"""Property tests for the three parsers of untrusted input (fuzz/ has their atheris twins).

- the request parser (``collect_slots``): any JSON body gives slots or a 400, never a crash;
- the SSE decoder: the same events however the bytes are cut, invalid UTF-8 included;
- the placeholder restorer: streaming gives what restoring in one piece gives, which is what a plain
  regex pass over this request's table gives: no value lost, none invented, none from elsewhere.

Unicode edge cases ride along everywhere: combining marks, right-to-left text and marks, emoji with
zero-width joiners, and zero-width characters inside names and e-mail addresses. The end-to-end tests
send invalid UTF-8 from an upstream through the gateway's relay, whole and streamed. The crashes the
fuzzers found are pinned by tests below; the one known inaccuracy left (a metric) is a strict xfail.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import gateway.streaming
from bench.fault_upstream import FaultUpstream, reset_connection
from gateway.api import WireApi
from gateway.api.anthropic import MESSAGES
from gateway.api.chat import CHAT, COMPLETIONS, collect_slots
from gateway.api.responses import RESPONSES
from gateway.app import create_app
from gateway.detector import PresidioDetector
from gateway.errors import BadRequest
from gateway.placeholders import PlaceholderRestorer, json_escaped
from gateway.policy import PolicyBook
from gateway.settings import Settings
from gateway.sse import SSEDecoder, SSEEvent, encode_event

ServerFactory = Callable[[web.Application], Awaitable[TestServer]]

# --- Unicode edge cases ------------------------------------------------------------------------------

COMBINING = "\u0301\u0308\u0327\u0323\u036f"
RTL = "\u05d3\u05d5\u05d3\u0645\u062d\u0645\u062f\u200f\u200e\u202b\u202e\u2067\u2069"
ZERO_WIDTH = "\u200b\u200c\u200d\u2060\ufeff"
EMOJI = ["👩\u200d💻", "👨\u200d👩\u200d👧", "🏳\ufe0f\u200d🌈", "👍🏽", "🇩🇪"]
#: Names and addresses as people really write them, and as pasted text mangles them.
EDGE_NAMES = [
    "Jose\u0301 Nu\u0303n\u0303ez",  # NFD: combining marks after base letters
    "Zoë Åström",
    "מרים כהן",
    "محمد علي",
    "\u202eeilA nnA\u202c",  # right-to-left override around a Latin name
    "Ma\u200dria Gon\u200bzalez",  # zero-width joiner and space inside a name
    "Anna 👩\u200d💻 Berg",
    "O'Neil-Smith",
    'Ann "the hammer" Lee\\',
]
EDGE_EMAILS = ["jose\u0301@example.com", "m\u200daria@example.org", "ann+👍@example.com", "محمد@example.com"]
EDGE_CHARS = COMBINING + RTL + ZERO_WIDTH + "<>_\\\"'\n\t\x00" + "".join(EMOJI)

edge_text = st.text(alphabet=st.one_of(st.characters(codec="utf-8"), st.sampled_from(EDGE_CHARS)), max_size=40)
edge_value = st.one_of(st.sampled_from(EDGE_NAMES + EDGE_EMAILS + EMOJI), edge_text)


def cut_at(text: str, cuts: list[int]) -> list[str]:
    points = sorted({c % (len(text) + 1) for c in cuts})
    return [text[a:b] for a, b in zip([0, *points], [*points, len(text)], strict=True)]


# --- the placeholder restorer ------------------------------------------------------------------------

placeholder_key = st.builds(
    "<{}_{}>".format, st.sampled_from(["PERSON", "EMAIL_ADDRESS", "A", "PII_1X"]), st.integers(0, 30)
)
tables = st.dictionaries(placeholder_key, edge_value, max_size=5)


@st.composite
def table_and_text(draw: st.DrawFn) -> tuple[dict[str, str], str]:
    table = draw(tables)
    noise = ["<", ">", "<<", "<PERSON_", "<PERSON_1", "_1>", "<UNKNOWN_3>", "\\u003c"]
    words = st.one_of(st.sampled_from([*table, *noise]) if table else st.sampled_from(noise), edge_text)
    prefixes = st.sampled_from(list(table)).flatmap(lambda k: st.integers(1, len(k) - 1).map(lambda i: k[:i]))
    parts = draw(st.lists(st.one_of(words, prefixes) if table else words, max_size=20))
    return table, "".join(parts)


def reference(text: str, table: Mapping[str, str], json_escape: bool) -> str:
    """One regex pass over this table's placeholders: what a correct restorer outputs."""
    if not table:
        return text
    values = {k: json_escaped(v) if json_escape else v for k, v in table.items()}
    return re.sub("|".join(map(re.escape, table)), lambda m: values[m.group(0)], text)


@settings(max_examples=200, deadline=None)
@given(table_and_text(), st.lists(st.integers(0, 200), max_size=12), st.booleans())
@example(({"<PERSON_1>": "Jose\u0301"}, "<PERSON_<PERSON_1>>"), [6, 7], False)
@example(({"<PERSON_1>": "\u202eeilA\u202c", "<PERSON_12>": "👩\u200d💻"}, "<PERSON_12><PERSON_1"), [9], True)
def test_restorer_streamed_equals_one_piece_equals_reference(
    case: tuple[dict[str, str], str], cuts: list[int], json_escape: bool
) -> None:
    table, text = case
    whole = PlaceholderRestorer(table, json_escape=json_escape)
    expected = whole.restore(text)
    assert expected == reference(text, table, json_escape)
    streamed = PlaceholderRestorer(table, json_escape=json_escape)
    out = "".join(streamed.feed(piece) for piece in cut_at(text, cuts)) + streamed.flush()
    assert out == expected
    assert streamed.restored == whole.restored
    # Every occurrence of this table's placeholders is restored; nothing else is touched.
    assert streamed.restored == sum(text.count(k) for k in table)


@pytest.mark.xfail(strict=True, reason="feed() counts a foreign placeholder as unresolved only if one chunk holds it")
def test_streaming_counts_unresolved_placeholders_like_one_piece() -> None:
    text, table = "<UNKNOWN_3> and <PERSON_2>", {"<PERSON_1>": "Ann"}
    whole = PlaceholderRestorer(table)
    whole.restore(text)
    streamed = PlaceholderRestorer(table)
    assert streamed.feed("<UNK") + streamed.feed("NOWN_3> and <PERSON_2>") + streamed.flush() == text
    assert streamed.unresolved == whole.unresolved == 2


@settings(max_examples=100, deadline=None)
@given(table_and_text(), tables, st.lists(st.integers(0, 200), max_size=8))
def test_a_placeholder_outside_the_table_is_never_resolved(
    case: tuple[dict[str, str], str], other: dict[str, str], cuts: list[int]
) -> None:
    """Another request's placeholders stay as they are: nothing this restorer does can remove one."""
    table, text = case
    text += "".join(other)
    mine = {k: v for k, v in table.items() if k not in other}
    restorer = PlaceholderRestorer(mine)
    out = "".join(restorer.feed(piece) for piece in cut_at(text, cuts)) + restorer.flush()
    for key in other:
        assert out.count(key) >= text.count(key)
    empty = PlaceholderRestorer({})
    assert "".join(empty.feed(piece) for piece in cut_at(text, cuts)) + empty.flush() == text


# --- the SSE decoder --------------------------------------------------------------------------------

INVALID_UTF8 = [b"\x80", b"\xff\xfe", b"\xe2\x82", b"\xed\xa0\x80", b"\xc3\x28", b"\xf0\x9f\x91"]
sse_piece = st.one_of(
    st.sampled_from([b"data:", b"data: ", b"event: x", b":comment", b"id: 1", b"[DONE]", b"\n", b"\r", b"\r\n"]),
    st.sampled_from(INVALID_UTF8),
    st.text(alphabet=st.sampled_from(EDGE_CHARS + 'ab{}":'), max_size=8).map(lambda s: s.encode("utf-8")),
    st.binary(max_size=6),
)
sse_streams = st.lists(sse_piece, max_size=40).map(b"".join)


def decode(chunks: list[bytes]) -> list[SSEEvent]:
    decoder = SSEDecoder()
    events = [e for chunk in chunks for e in decoder.feed(chunk)]
    return events + decoder.flush()


@settings(max_examples=200, deadline=None)
@given(sse_streams, st.lists(st.integers(0, 400), max_size=16))
def test_sse_events_do_not_depend_on_the_chunking(stream: bytes, cuts: list[int]) -> None:
    whole = decode([stream])
    points = sorted({c % (len(stream) + 1) for c in cuts})
    chunks = [stream[a:b] for a, b in zip([0, *points], [*points, len(stream)], strict=True)]
    assert decode(chunks) == whole
    for event in whole:
        assert event.raw.endswith(b"\n\n")
        if event.data is not None:
            assert b"\r" not in event.data
            assert [(e.data, e.event) for e in decode([encode_event(event.data, event.event)])] == [
                (event.data, event.event)
            ]


def test_invalid_utf8_inside_a_data_line_is_kept_byte_for_byte() -> None:
    for junk in INVALID_UTF8:
        stream = b'data: {"x":"a' + junk + b'b"}\r\n\r\ndata: [DONE]\n\n'
        for cut in range(len(stream) + 1):
            events = decode([stream[:cut], stream[cut:]])
            assert [e.data for e in events] == [b'{"x":"a' + junk + b'b"}', b"[DONE]"], (junk, cut)


def test_sse_decoder_is_linear_in_a_long_event_fed_in_small_chunks() -> None:
    """An upstream dripping one long event (no blank line yet) must not stall the event loop.

    The quadratic decoder this pins took about a minute for 4 MiB in 1 KiB chunks; a linear one takes
    milliseconds. The 30-second budget is a hang guard, not a performance claim: it cannot trip on a
    slow machine, only on quadratic work.
    """
    decoder = SSEDecoder()
    piece = b"x" * 1024
    started = time.perf_counter()
    assert decoder.feed(b"data: ") == []
    fed = 0
    while fed < 4096 and time.perf_counter() - started < 30.0:
        assert decoder.feed(piece) == []
        fed += 1
    assert fed == 4096, f"only {fed} KiB fed in 30 seconds"
    (event,) = decoder.feed(b"\n\n")
    assert event.data is not None
    assert len(event.data) == 4096 * 1024


# --- the request parser ------------------------------------------------------------------------------

KEYS = ["role", "content", "type", "text", "refusal", "name", "tool_calls", "function", "arguments", "function_call"]
KEYS += ["reasoning_content", "image_url", "x"]
json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**63 - 1), st.floats(), edge_text)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.sampled_from(KEYS), inner, max_size=5),
    ),
    max_leaves=20,
)
messages = st.lists(
    st.fixed_dictionaries(
        {"role": st.sampled_from(["user", "assistant", "system", "tool"])},
        optional={
            "content": st.one_of(edge_text, json_values),
            "name": st.one_of(st.sampled_from(EDGE_NAMES), json_values),
            "tool_calls": json_values,
            "function_call": json_values,
        },
    ),
    max_size=4,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(messages, json_values), st.sampled_from(["default", "strict", "audit"]), st.data())
def test_collect_slots_gives_slots_or_a_400_for_any_body(
    policy_book: PolicyBook, messages_value: Any, policy_name: str, data: st.DataObject
) -> None:
    body: dict[str, Any] = {"model": "m", "messages": messages_value}
    if data.draw(st.booleans()):
        body["user"] = data.draw(st.one_of(edge_text, json_values))
    before = orjson.dumps(body, option=orjson.OPT_NON_STR_KEYS)
    try:
        slots, unscanned = collect_slots(body, policy_book.policies[policy_name])
    except BadRequest:
        return
    assert unscanned >= 0
    for slot in slots:
        assert isinstance(slot.text, str)
        assert orjson.dumps(slot.text)[1:-1] in before
    for i, slot in enumerate(slots):
        slot.write(f"<PII_{i}>")
    after = orjson.dumps(body, option=orjson.OPT_NON_STR_KEYS)
    assert all(f"<PII_{i}>".encode() in after for i in range(len(slots)))


@pytest.mark.parametrize("name", EDGE_NAMES + EDGE_EMAILS)
def test_collect_slots_keeps_unicode_text_exactly(policy_book: PolicyBook, name: str) -> None:
    body: dict[str, Any] = {
        "messages": [
            {"role": "user", "name": name, "content": [{"type": "text", "text": f"I am {name}."}, f"{name}!"]},
            {"role": "assistant", "tool_calls": [{"function": {"arguments": orjson.dumps({"who": name}).decode()}}]},
        ],
        "user": name,
    }
    slots, _ = collect_slots(body, policy_book.policies["default"])
    texts = [s.text for s in slots]
    assert texts == [f"I am {name}.", f"{name}!", name, orjson.dumps({"who": name}).decode(), name]


@pytest.mark.parametrize(
    ("api", "body"),
    [
        (CHAT, {"messages": [{"role": "assistant", "content": "x", "tool_calls": 5}]}),
        (CHAT, {"messages": [{"role": "assistant", "content": "x", "tool_calls": True}]}),
        (RESPONSES, {"input": [{"type": "reasoning", "summary": 1.5}]}),
    ],
    ids=["chat-tool_calls-int", "chat-tool_calls-bool", "responses-summary-float"],
)
def test_a_non_list_where_a_list_belongs_is_a_400(policy_book: PolicyBook, api: WireApi, body: dict[str, Any]) -> None:
    with pytest.raises(BadRequest):
        api.collect_slots(body, policy_book.policies["default"])


# --- answers of the wrong shape ----------------------------------------------------------------------

TABLE = {"<PERSON_1>": "Ann"}


@pytest.mark.parametrize(
    ("api", "answer"),
    [
        (CHAT, {"choices": 1}),
        (CHAT, {"choices": [{"message": {"content": "<PERSON_1>", "tool_calls": 7}}]}),
        (COMPLETIONS, {"choices": True}),
        (RESPONSES, {"output": 2}),
        (RESPONSES, {"output": [{"type": "message", "content": 3}]}),
        (MESSAGES, {"content": 1}),
    ],
    ids=["chat-choices", "chat-tool_calls", "completions-choices", "responses-output", "responses-content", "messages"],
)
def test_restore_body_leaves_a_wrong_shaped_answer_alone(api: WireApi, answer: dict[str, Any]) -> None:
    api.restore_body(answer, TABLE)


@pytest.mark.parametrize(
    ("api", "event", "data"),
    [
        (CHAT, None, {"choices": 3, "note": "<PERSON_1>"}),
        (CHAT, None, {"choices": [{"index": 0, "delta": {"tool_calls": 2, "content": "<PERSON_1>"}}]}),
        (RESPONSES, b"response.completed", {"type": "response.completed", "response": {"output": 3}}),
    ],
    ids=["chat-choices", "chat-tool_calls", "responses-output"],
)
def test_stream_restorer_leaves_a_wrong_shaped_event_alone(
    api: WireApi, event: bytes | None, data: dict[str, Any]
) -> None:
    api.stream_restorer(TABLE).transform(event, data)


# --- end to end: bytes from a misbehaving upstream through the real gateway ------------------------------

PROMPT = "Write to ann.lee@example.com about the invoice."
EMAIL = "ann.lee@example.com"


def raw_upstream(chunks: list[bytes], content_type: str = "text/event-stream") -> web.Application:
    """An upstream that answers every chat request with exactly these bytes, one write each."""

    async def answer(request: web.Request) -> web.StreamResponse:
        await request.read()
        response = web.StreamResponse(headers={"Content-Type": content_type})
        await response.prepare(request)
        for chunk in chunks:
            await response.write(chunk)
            await asyncio.sleep(0.001)
        return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", answer)
    return app


GatewayFactory = Callable[[web.Application], Awaitable[str]]


@pytest.fixture
def gateway_for(
    detector: PresidioDetector, policy_book: PolicyBook, aiohttp_server: ServerFactory, tmp_path: Path
) -> GatewayFactory:
    count = 0

    async def make(upstream: web.Application) -> str:
        nonlocal count
        count += 1
        up = await aiohttp_server(upstream)
        settings = Settings(
            upstream=str(up.make_url("/v1")),
            data_dir=tmp_path / f"data{count}",
            detector={"workers": 0},  # type: ignore[arg-type]
            timeouts={"first_byte_seconds": 1, "stream_idle_seconds": 1},  # type: ignore[arg-type]
        )
        server = await aiohttp_server(create_app(settings, detector=detector, policies=policy_book))
        return str(server.make_url(""))

    return make


def chunk_event(content: str | bytes) -> bytes:
    raw = content.encode("utf-8") if isinstance(content, str) else content
    return (
        b'data: {"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"'
        + raw
        + b'"}}]}\n\n'
    )


async def post(base: str, body: dict[str, Any], **headers: str) -> tuple[int, str, bytes]:
    async with aiohttp.ClientSession() as session:
        async with session.post(base + "/v1/chat/completions", json=body, headers=headers) as r:
            return r.status, r.headers.get("Content-Type", ""), await r.read()


async def test_invalid_utf8_in_a_streamed_data_line_is_relayed_and_the_stream_completes(
    gateway_for: GatewayFactory,
) -> None:
    junk = b"\xff\xfe\xed\xa0\x80"
    events = [
        chunk_event("Mail <EMAIL_ADD"),
        chunk_event("RESS_1> now. "),
        chunk_event(b"bad " + junk + b" <EMAIL_ADDRESS_1>"),  # cannot be parsed: relayed as it came
        chunk_event("Again: <EMAIL_ADDRESS_1>."),
        b"data: [DONE]\n\n",
    ]
    # The same bytes as events, and cut one byte at a time (a multi-byte sequence split across reads).
    for chunks in (events, [bytes([b]) for b in b"".join(events)]):
        base = await gateway_for(raw_upstream(chunks))
        status, content_type, body = await post(
            base, {"model": "m", "stream": True, "messages": [{"role": "user", "content": PROMPT}]}
        )
        assert status == 200 and content_type.startswith("text/event-stream")
        assert body.endswith(b"data: [DONE]\n\n")
        assert junk in body  # relayed byte for byte, not dropped or replaced
        texts = []
        for event in decode([body]):
            if event.data is not None and not event.is_done and junk not in event.data:
                texts.append(orjson.loads(event.data)["choices"][0]["delta"]["content"])
        assert "".join(texts) == f"Mail {EMAIL} now. Again: {EMAIL}."


async def test_invalid_utf8_in_a_whole_answer_is_relayed_unchanged(gateway_for: GatewayFactory) -> None:
    raw = b'{"choices":[{"index":0,"message":{"role":"assistant","content":"\xc3\x28 <EMAIL_ADDRESS_1>"}}]}'
    base = await gateway_for(raw_upstream([raw], "application/json"))
    status, _, body = await post(base, {"model": "m", "messages": [{"role": "user", "content": PROMPT}]})
    assert status == 200
    assert body == raw  # fail open: not JSON, not UTF-8, so not restored, but answered


@pytest.mark.parametrize("fault", ["bad_utf8", "bad_sse", "slow_drip", "reset", "stall_body", "status_5xx"])
@pytest.mark.parametrize("stream", [False, True])
async def test_the_gateway_answers_every_upstream_fault(gateway_for: GatewayFactory, fault: str, stream: bool) -> None:
    """Whatever the upstream does, the client gets an answer: relayed, or an error in the API's shape."""
    base = await gateway_for(FaultUpstream(seed=3, stall_seconds=1.5, drip_pause=0.002).app())
    body = {"model": "m", "stream": stream, "messages": [{"role": "user", "content": PROMPT}]}
    for soak_id in ("a", "b"):
        status, content_type, raw = await post(base, body, **{"X-Fault": fault, "X-Soak-Id": soak_id})
        if status >= 400:
            assert content_type.startswith("application/json")
            assert isinstance(orjson.loads(raw)["error"]["message"], str)
        elif content_type.startswith("text/event-stream"):
            assert decode([raw]), "an empty event stream"
        else:
            assert raw


async def test_a_request_the_upstream_received_is_not_retried_after_a_reset(gateway_for: GatewayFactory) -> None:
    received: list[bytes] = []

    async def read_then_reset(request: web.Request) -> web.StreamResponse:
        received.append(await request.read())
        reset_connection(request)
        return web.Response()

    app = web.Application()
    app.router.add_post("/v1/chat/completions", read_then_reset)
    base = await gateway_for(app)
    status, _, _ = await post(base, {"model": "m", "messages": [{"role": "user", "content": PROMPT}]})
    assert status == 502
    assert len(received) == 1, f"the upstream got the same POST {len(received)} times"


async def test_a_wrong_shaped_whole_answer_is_relayed_not_a_500(gateway_for: GatewayFactory) -> None:
    raw = b'{"id":"x","choices":1,"note":"<EMAIL_ADDRESS_1>"}'
    base = await gateway_for(raw_upstream([raw], "application/json"))
    status, _, body = await post(base, {"model": "m", "messages": [{"role": "user", "content": PROMPT}]})
    assert status == 200
    assert orjson.loads(body)["choices"] == 1


async def test_a_wrong_shaped_stream_chunk_does_not_cut_the_stream(gateway_for: GatewayFactory) -> None:
    events = [
        chunk_event("Hi <EMAIL_ADDRESS_1>"),
        b'data: {"choices":3,"x":"<EMAIL_ADDRESS_1>"}\n\n',
        b"data: [DONE]\n\n",
    ]
    base = await gateway_for(raw_upstream(events))
    try:
        status, _, body = await post(
            base, {"model": "m", "stream": True, "messages": [{"role": "user", "content": PROMPT}]}
        )
    except aiohttp.ClientPayloadError:
        pytest.fail("the gateway cut the stream")
    assert status == 200 and body.endswith(b"data: [DONE]\n\n")


class _SmallDecoder(SSEDecoder):
    def __init__(self) -> None:
        super().__init__(max_event_bytes=4096)


async def test_an_oversized_stream_event_ends_with_an_sse_error_event(
    gateway_for: GatewayFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(gateway.streaming, "SSEDecoder", _SmallDecoder)
    events = [chunk_event("ok"), b"data: " + b"x" * 8192]
    base = await gateway_for(raw_upstream(events))
    try:
        status, _, body = await post(
            base, {"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
        )
    except aiohttp.ClientPayloadError:
        pytest.fail("the gateway cut the stream instead of ending it with an error event")
    assert status == 200
    assert b'"error"' in decode([body])[-1].raw
