"""Server-sent events: a byte-stream decoder with ``feed()``/``flush()``, and the encoder. Knows SSE, not OpenAI.

The decoder follows the WHATWG event-stream rules that matter to a relay: lines end in CRLF, LF or CR
(a CR at the very end of a chunk is held, since an LF may follow in the next chunk); a blank line ends
an event; ``data`` lines are joined with LF; lines starting with ``:`` are comments. Each event keeps its
``raw`` bytes (with line ends normalised to LF), so an event that needs no change is relayed as it came.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class SSEEvent:
    raw: bytes
    data: bytes | None
    event: bytes | None = None

    @property
    def is_done(self) -> bool:
        return self.data == b"[DONE]"


def parse_event(block: bytes) -> SSEEvent:
    """One event from its lines (without the blank line that ended it)."""
    data_lines: list[bytes] = []
    event_name: bytes | None = None
    for line in block.split(b"\n"):
        if not line or line.startswith(b":"):
            continue
        name, sep, value = line.partition(b":")
        if sep and value.startswith(b" "):
            value = value[1:]
        if name == b"data":
            data_lines.append(value)
        elif name == b"event":
            event_name = value
    data = b"\n".join(data_lines) if data_lines else None
    return SSEEvent(raw=block + b"\n\n", data=data, event=event_name)


class SSEDecoder:
    """Turns arbitrary byte chunks into complete events; holds back an incomplete tail.

    Linear in the bytes fed: only the new chunk's line ends are normalised, and the search for the
    blank line resumes where the previous one stopped (a 4 MiB event in 1 KiB chunks is not rescanned
    4,000 times).
    """

    def __init__(self, max_event_bytes: int = 16 * 1024 * 1024) -> None:
        self._buffer = bytearray()
        self._pending_cr = False
        self._max = max_event_bytes

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        if not chunk:
            return []
        if self._pending_cr:
            chunk = b"\r" + chunk
            self._pending_cr = False
        if b"\r" in chunk:
            if chunk.endswith(b"\r"):  # an LF may follow in the next chunk
                chunk = chunk[:-1]
                self._pending_cr = True
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        search = max(len(self._buffer) - 1, 0)
        self._buffer += chunk
        events: list[SSEEvent] = []
        start = 0
        while True:
            end = self._buffer.find(b"\n\n", max(search, start))
            if end < 0:
                break
            block = bytes(self._buffer[start:end])
            start = end + 2
            if block.strip(b"\n"):
                events.append(parse_event(block.lstrip(b"\n")))
        if start:
            del self._buffer[:start]
        if len(self._buffer) > self._max:
            raise ValueError("an SSE event is larger than the limit")
        return events

    def flush(self) -> list[SSEEvent]:
        """The last event of a stream that ended without a blank line, if any."""
        block = bytes(self._buffer).strip(b"\n")
        self._buffer.clear()
        self._pending_cr = False
        return [parse_event(block)] if block else []


def encode_event(data: bytes, event: bytes | None = None) -> bytes:
    out = b"event: " + event + b"\n" if event is not None else b""
    if b"\n" in data:
        return out + b"".join(b"data: " + line + b"\n" for line in data.split(b"\n")) + b"\n"
    return out + b"data: " + data + b"\n\n"
