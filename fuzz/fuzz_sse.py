"""atheris harness: ``gateway.sse.SSEDecoder`` fed the same bytes whole and cut at fuzzer-chosen offsets.

Contract: the events (raw bytes, data, event name) do not depend on where the stream is cut, no ``\\r``
survives into an event's data, and every event's data survives ``encode_event`` and decoding again.
Run it with ``-dict=fuzz/sse.dict`` so the fuzzer knows the field names and line ends.
"""

from __future__ import annotations

import itertools
import sys

import atheris

with atheris.instrument_imports(include=["gateway"], enable_loader_override=False):
    from gateway.sse import SSEDecoder, SSEEvent, encode_event


def decode(chunks: list[bytes]) -> list[SSEEvent]:
    decoder = SSEDecoder()
    events: list[SSEEvent] = []
    for chunk in chunks:
        events.extend(decoder.feed(chunk))
    events.extend(decoder.flush())
    return events


def TestOneInput(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    cuts = sorted({fdp.ConsumeIntInRange(0, 2048) for _ in range(fdp.ConsumeIntInRange(0, 24))})
    stream = fdp.ConsumeBytes(fdp.remaining_bytes())
    whole = decode([stream])
    bounds = [0, *(c for c in cuts if c < len(stream)), len(stream)]
    pieces = [stream[a:b] for a, b in itertools.pairwise(bounds)]
    assert decode(pieces) == whole, "the events depend on where the stream was cut"
    one_byte = decode([stream[i : i + 1] for i in range(len(stream))])
    assert one_byte == whole, "byte-by-byte feeding differs"
    for event in whole:
        assert event.raw.endswith(b"\n\n")
        if event.data is None:
            continue
        assert b"\r" not in event.data
        again = decode([encode_event(event.data, event.event)])
        assert [(e.data, e.event) for e in again] == [(event.data, event.event)], "encode_event does not round-trip"


def main() -> None:
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
