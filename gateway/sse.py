"""Server-sent events: a byte-stream decoder with ``feed()``/``flush()``, and the encoder. Knows SSE, not OpenAI.

The decoder follows the WHATWG event-stream rules that matter to a relay: lines end in CRLF, LF or CR
(a CR at the very end of a chunk is held, since an LF may follow in the next chunk); a blank line ends
an event; ``data`` lines are joined with LF; lines starting with ``:`` are comments. Each event keeps its
``raw`` bytes (with line ends normalised to LF), so an event that needs no change is relayed as it came.

Two levels, for speed: :meth:`SSEDecoder.feed_block` returns the complete events of what came in as one
*block* of bytes (everything up to the last blank line), without looking at each event; a relay can
then search the whole block once (is there anything to restore? any usage?) and only split and parse the
events it must, with :func:`events_in` or :func:`data_of`. :meth:`SSEDecoder.feed` does both steps.
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


def events_in(block: bytes) -> list[SSEEvent]:
    """The events of a block of complete events (as :meth:`SSEDecoder.feed_block` returns it)."""
    return [parse_event(piece.lstrip(b"\n")) for piece in block.split(b"\n\n") if piece.strip(b"\n")]


def data_of(piece: bytes) -> bytes | None:
    """The data of one event, given its lines (one piece of a block split at its blank lines).

    The usual event, one ``data: `` line, is answered by slicing; anything else by :func:`parse_event`.
    """
    if piece[:6] == b"data: " and b"\n" not in piece:
        return piece[6:]
    return parse_event(piece.lstrip(b"\n")).data


class SSEDecoder:
    """Turns arbitrary byte chunks into complete events; holds back an incomplete tail.

    Linear in the bytes fed: only the new chunk's line ends are normalised, and the search for the
    last blank line covers only the new bytes (a 4 MiB event in 1 KiB chunks is not rescanned 4,000 times).
    """

    def __init__(self, max_event_bytes: int = 16 * 1024 * 1024) -> None:
        self._buffer = bytearray()
        self._pending_cr = False
        self._max = max_event_bytes

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        return events_in(self.feed_block(chunk))

    def feed_block(self, chunk: bytes) -> bytes:
        """The complete events that ``chunk`` completes, as one block ending in a blank line (or ``b""``).

        The block may start with stray line ends and hold runs of blank lines: it is the stream's own
        bytes (line ends normalised), cut after its last blank line. Raises ValueError when the held
        incomplete event grows past the limit.
        """
        if not chunk:
            return b""
        if self._pending_cr:
            chunk = b"\r" + chunk
            self._pending_cr = False
        if b"\r" in chunk:
            if chunk.endswith(b"\r"):  # an LF may follow in the next chunk
                chunk = chunk[:-1]
                self._pending_cr = True
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        if not self._buffer and chunk.endswith(b"\n\n"):  # the usual read: whole events, nothing held
            return chunk
        search = max(len(self._buffer) - 1, 0)  # the held tail has no blank line: only new bytes can end one
        self._buffer += chunk
        end = self._buffer.rfind(b"\n\n", search)
        block = b""
        if end >= 0:
            block = bytes(self._buffer[: end + 2])
            del self._buffer[: end + 2]
        if len(self._buffer) > self._max:
            raise ValueError("an SSE event is larger than the limit")
        return block

    def flush(self) -> list[SSEEvent]:
        """The last event of a stream that ended without a blank line, if any."""
        return events_in(self.flush_block())

    def flush_block(self) -> bytes:
        """:meth:`flush` as a block: the held last event with a blank line added, or ``b""``."""
        block = bytes(self._buffer).strip(b"\n")
        self._buffer.clear()
        self._pending_cr = False
        return block + b"\n\n" if block else b""


def encode_event(data: bytes, event: bytes | None = None) -> bytes:
    out = b"event: " + event + b"\n" if event is not None else b""
    if b"\n" in data:
        return out + b"".join(b"data: " + line + b"\n" for line in data.split(b"\n")) + b"\n"
    return out + b"data: " + data + b"\n\n"
