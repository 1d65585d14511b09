"""SSEDecoder: the same events whatever the chunking, for every line-ending style."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.sse import SSEDecoder, SSEEvent, encode_event

STREAM = (
    b": keep-alive comment\n\n"
    b'data: {"a": 1}\n\n'
    b"event: ping\ndata: x\n\n"
    b"data: line one\ndata: line two\n\n"
    b"data:no-space\n\n"
    b"data: [DONE]\n\n"
)
EXPECTED = [
    (b'{"a": 1}', None),
    (b"x", b"ping"),
    (b"line one\nline two", None),
    (b"no-space", None),
    (b"[DONE]", None),
]


def decode(chunks: list[bytes]) -> list[SSEEvent]:
    d = SSEDecoder()
    events = []
    for c in chunks:
        events.extend(d.feed(c))
    events.extend(d.flush())
    return events


def summary(events: list[SSEEvent]) -> list[tuple[bytes | None, bytes | None]]:
    return [(e.data, e.event) for e in events if e.data is not None]


def test_every_split_offset_and_every_line_ending() -> None:
    for stream in (STREAM, STREAM.replace(b"\n", b"\r\n"), STREAM.replace(b"\n", b"\r")):
        for cut in range(len(stream) + 1):
            assert summary(decode([stream[:cut], stream[cut:]])) == EXPECTED, (stream[:20], cut)
        assert summary(decode([bytes([b]) for b in stream])) == EXPECTED


def test_raw_bytes_are_kept_for_unchanged_relay() -> None:
    events = decode([b'data: {"a": 1}\n\n'])
    assert events[0].raw == b'data: {"a": 1}\n\n'
    assert events[0].is_done is False


def test_a_stream_ending_without_blank_line_yields_its_last_event_on_flush() -> None:
    d = SSEDecoder()
    assert d.feed(b"data: [DONE]") == []
    assert [e.data for e in d.flush()] == [b"[DONE]"]


def test_encode_round_trips() -> None:
    assert summary(decode([encode_event(b"a\nb", b"x")])) == [(b"a\nb", b"x")]


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.integers(min_value=0, max_value=len(STREAM)), max_size=10),
    st.sampled_from([b"\n", b"\r\n", b"\r"]),
)
def test_property_random_chunking(cuts: list[int], newline: bytes) -> None:
    stream = STREAM.replace(b"\n", newline)
    points = sorted({c % (len(stream) + 1) for c in cuts})
    chunks = [stream[a:b] for a, b in zip([0, *points], [*points, len(stream)], strict=True)]
    assert summary(decode(chunks)) == EXPECTED
