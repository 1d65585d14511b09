"""StreamRelay: the relay's work on the bytes, at every split offset, against the per-event reference.

The relay copies runs of events without a possible placeholder start as one slice and parses only the
events from one (``<`` or ``\\u003c``) on while text is held back. These tests cut one chat stream
everywhere, including inside the events where the fast and the slow path meet, and compare what the
client would decode with the plain per-event restoration (``_EventRestorer.event`` on every event).
"""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.api.chat import CHAT
from gateway.exchange import Exchange
from gateway.sse import SSEDecoder, SSEEvent
from gateway.streaming import StreamRelay, _EventRestorer

TABLE = {"<PERSON_1>": "Jane Roe", "<EMAIL_ADDRESS_1>": "jane@example.org"}


def chunk(content: str | None, finish: str | None = None) -> bytes:
    delta: dict[str, Any] = {} if content is None else {"content": content}
    body = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m"}
    body["choices"] = [{"index": 0, "delta": delta, "finish_reason": finish}]
    return b"data: " + orjson.dumps(body) + b"\n\n"


STREAM = b"".join(
    [
        chunk(""),
        chunk("Hello "),
        chunk("<PER"),  # a placeholder cut across events: held, then released restored
        chunk("SON_1>"),
        chunk(", plain text "),
        b": a comment with <angle> brackets\n\n",
        chunk("and a < sign"),  # a '<' that starts no placeholder
        chunk(" then "),
        chunk("<EMAIL_ADDRESS_1"),
        chunk("> done"),
        chunk("<PERSON_1>!").replace(b"<", b"\\u003c").replace(b">", b"\\u003e"),  # escaped in the JSON
        b"\n",  # a run of three line ends
        b'event: note\ndata: {"k":\ndata: 1}\n\n',  # two data lines, a name
        chunk(" bye <PERSON_"),  # still held when the choice finishes: released as it is
        chunk(None, "stop"),
        b'data: {"id":"c1","choices":[],"usage":{"prompt_tokens":7,"completion_tokens":9,"total_tokens":16}}\n\n',
        b"data: [DONE]\n\n",
    ]
)
CLIENT_TEXT = "Hello Jane Roe, plain text and a < sign then jane@example.org doneJane Roe! bye <PERSON_"
UPSTREAM_TEXT = "Hello <PERSON_1>, plain text and a < sign then <EMAIL_ADDRESS_1> done<PERSON_1>! bye <PERSON_"


def relay(chunks: list[bytes], table: dict[str, str], *, collect: bool = True) -> tuple[bytes, Exchange]:
    exchange = Exchange(route="chat.completions")
    relayed = StreamRelay(exchange, table, CHAT, collect=collect)
    out = []
    for piece in chunks:
        out.append(relayed.feed(piece))
        relayed.collect()
    out.append(relayed.flush())
    relayed.close()
    return b"".join(out), exchange


def reference(stream: bytes) -> bytes:
    """Every event through the per-event path, as the relay did before it searched whole blocks."""
    restorer = _EventRestorer(CHAT.stream_restorer(TABLE))
    events = SSEDecoder().feed(stream)
    return b"".join(restorer.event(e) for e in events) + restorer.leftovers()


def decoded(body: bytes) -> list[SSEEvent]:
    decoder = SSEDecoder()
    return decoder.feed(body) + decoder.flush()


def summary(body: bytes) -> list[tuple[bytes | None, bytes | None]]:
    return [(e.data, e.event) for e in decoded(body) if e.data is not None]


def content(body: bytes) -> str:
    text = ""
    for event in decoded(body):
        if event.data and event.data.startswith(b"{") and b'"choices"' in event.data:
            for choice in orjson.loads(event.data)["choices"]:
                text += choice.get("delta", {}).get("content") or ""
    return text


def cut(stream: bytes, points: list[int]) -> list[bytes]:
    points = sorted({p % (len(stream) + 1) for p in points})
    return [stream[a:b] for a, b in zip([0, *points], [*points, len(stream)], strict=True)]


def test_whole_stream_restores_remembers_and_counts() -> None:
    out, exchange = relay([STREAM], TABLE)
    assert content(out) == CLIENT_TEXT
    assert summary(out) == summary(reference(STREAM))
    assert exchange.answer_texts == [UPSTREAM_TEXT]
    assert (exchange.input_tokens, exchange.output_tokens) == (7, 9)
    assert exchange.placeholders_restored == 3


def test_events_without_a_placeholder_start_keep_their_exact_bytes() -> None:
    out, _ = relay([STREAM], TABLE)
    for untouched in (chunk("Hello "), chunk(", plain text "), b": a comment with <angle> brackets\n\n"):
        assert untouched in out
    assert chunk("<PER") not in out and b"Jane Roe" in out


def test_every_split_offset_and_line_ending_matches_the_per_event_path() -> None:
    for stream in (STREAM, STREAM.replace(b"\n", b"\r\n")):
        expected = summary(reference(stream))
        for at in range(len(stream) + 1):
            out, exchange = relay([stream[:at], stream[at:]], TABLE)
            assert summary(out) == expected, (stream is STREAM, at)
            assert exchange.answer_texts == [UPSTREAM_TEXT], at
            assert (exchange.input_tokens, exchange.output_tokens) == (7, 9), at
            assert exchange.placeholders_restored == 3, at


def test_one_byte_at_a_time() -> None:
    out, exchange = relay([bytes([b]) for b in STREAM], TABLE)
    assert summary(out) == summary(reference(STREAM))
    assert exchange.answer_texts == [UPSTREAM_TEXT]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=len(STREAM)), max_size=12))
def test_property_random_chunking(points: list[int]) -> None:
    out, exchange = relay(cut(STREAM, points), TABLE)
    assert content(out) == CLIENT_TEXT
    assert summary(out) == summary(reference(STREAM))
    assert exchange.answer_texts == [UPSTREAM_TEXT]


def test_with_nothing_to_restore_the_bytes_pass_through_as_they_came() -> None:
    for at in range(0, len(STREAM) + 1, 7):
        pieces = [STREAM[:at], STREAM[at:]]
        out, exchange = relay(pieces, {}, collect=False)
        assert out == STREAM
        assert (exchange.input_tokens, exchange.output_tokens) == (7, 9)
        assert exchange.answer_texts == []


def test_a_broken_stream_still_counts_what_was_restored() -> None:
    exchange = Exchange(route="chat.completions")
    relayed = StreamRelay(exchange, TABLE, CHAT)
    head = STREAM[: STREAM.index(b", plain text")]
    assert b"Jane Roe" in relayed.feed(head)
    relayed.close()  # the upstream broke here: no finish_reason, no [DONE]
    assert exchange.placeholders_restored == 1
