"""SSEDecoder: the same events whatever the chunking, for every line-ending style; blocks as soon as complete."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.sse import SSEDecoder, SSEEvent, data_of, encode_event, events_in, parse_event

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


def test_feed_block_releases_every_event_as_soon_as_its_blank_line_arrived() -> None:
    """Fed a byte at a time, the blocks so far are the stream up to its last blank line, never later.

    Pins the search start: a blank line whose first LF came in the previous chunk must end the event
    at once, not when some later event completes.
    """
    for newline in (b"\n", b"\r\n", b"\r"):
        stream = STREAM.replace(b"\n", newline)
        d = SSEDecoder()
        released = b""
        for i in range(len(stream)):
            released += d.feed_block(stream[i : i + 1])
            fed = stream[: i + 1]
            fed = fed[:-1] if fed.endswith(b"\r") else fed  # a CR at the end is held: an LF may follow
            seen = fed.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
            last = seen.rfind(b"\n\n")
            assert released == (seen[: last + 2] if last >= 0 else b""), (newline, i)
        assert released + d.flush_block() == STREAM  # CR line ends: the last CR waits for the flush


def test_blocks_hold_the_same_events_as_feed() -> None:
    for cut in range(len(STREAM) + 1):
        d = SSEDecoder()
        blocks = [d.feed_block(STREAM[:cut]), d.feed_block(STREAM[cut:]), d.flush_block()]
        assert summary([e for b in blocks for e in events_in(b)]) == EXPECTED, cut


def test_flush_block_is_the_held_last_event() -> None:
    d = SSEDecoder()
    assert d.feed_block(b'data: {"a": 1}\n\n\ndata: [DONE]') == b'data: {"a": 1}\n\n\n'  # cut after the last LF pair
    assert d.flush_block() == b"data: [DONE]\n\n"
    assert d.flush_block() == b""


def test_data_of_slices_the_usual_event_and_parses_the_rest() -> None:
    for piece in (b"data: x", b"data:x", b"event: e\ndata: a\ndata: b", b": comment", b"\ndata: y", b"data: "):
        assert data_of(piece) == parse_event(piece.lstrip(b"\n")).data, piece
