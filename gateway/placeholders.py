"""Placeholders: one request's table of placeholder <-> original value, and the streaming restorer.

A placeholder is ``<ENTITY_TYPE_N>``. The table lives in one :class:`Redactions` object per request and
is never stored, shared or looked up across requests or tenants, so a placeholder can only ever resolve
to a value that the same request sent.

Collision rule: before any number is handed out, every placeholder-shaped string already present in
the request (for instance a user who pastes ``<PERSON_1>``) is *reserved*. Numbering skips reserved
strings, so a literal ``<PERSON_1>`` in the prompt is never in the table: if the model repeats it, it is
left exactly as it was, and it can never pull out a value.

Numbering follows the first occurrence of each value in request order (message by message, left to
right). A conversation that is re-sent with one more turn keeps the numbers of earlier turns, which
keeps provider-side prompt caches useful.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping

import orjson

#: Anything shaped like a placeholder, ours or not.
PLACEHOLDER_SHAPE = re.compile(r"<[A-Z][A-Z0-9_]*_\d+>")


def placeholders_in(text: str) -> set[str]:
    """Every placeholder-shaped string in ``text``."""
    if "<" not in text:
        return set()
    return set(PLACEHOLDER_SHAPE.findall(text))


class Redactions:
    """The per-request placeholder table.

    ``restorable`` holds only placeholders whose action restores them (``pseudonymize``); placeholders
    made by ``redact`` are handed out the same way but are never resolved back.
    """

    def __init__(self, reserved: Iterable[str] = ()) -> None:
        self._reserved: frozenset[str] = frozenset(reserved)
        self._by_value: dict[str, str] = {}
        self._restorable: dict[str, str] = {}
        self._types: dict[str, str] = {}
        self._next: Counter[str] = Counter()
        #: (entity type, action) -> number of occurrences replaced or counted in this request.
        self.counts: Counter[tuple[str, str]] = Counter()

    def placeholder_for(self, entity_type: str, value: str, *, restorable: bool = True) -> str:
        """The placeholder for ``value``: the same one every time it is asked for within this request."""
        existing = self._by_value.get(value)
        if existing is not None:
            return existing
        label = _label(entity_type)
        while True:
            self._next[label] += 1
            candidate = f"<{label}_{self._next[label]}>"
            if candidate not in self._reserved:
                break
        self._by_value[value] = candidate
        self._types[candidate] = entity_type
        if restorable:
            self._restorable[candidate] = value
        return candidate

    @property
    def restorable(self) -> Mapping[str, str]:
        return self._restorable

    def entity_type(self, placeholder: str) -> str | None:
        """The entity type a placeholder of this request stands for."""
        return self._types.get(placeholder)

    def __len__(self) -> int:
        return len(self._by_value)

    def __repr__(self) -> str:  # never show values
        return f"Redactions({len(self._by_value)} values, {len(self._restorable)} restorable)"


def _label(entity_type: str) -> str:
    cleaned = re.sub(r"[^A-Z0-9_]", "_", entity_type.upper()).strip("_") or "PII"
    return cleaned if cleaned[0].isalpha() else "PII_" + cleaned


def json_escaped(value: str) -> str:
    """``value`` as it must appear inside a JSON string literal (without the quotes)."""
    return orjson.dumps(value).decode("utf-8")[1:-1]


def restored_spans(text: str, table: Mapping[str, str]) -> tuple[str, list[tuple[int, int, str]]]:
    """``text`` restored in one piece, and where each value went: (start, end, placeholder) in the result."""
    spans: list[tuple[int, int, str]] = []
    parts: list[str] = []
    cursor = length = 0
    for m in PLACEHOLDER_SHAPE.finditer(text) if "<" in text else ():
        value = table.get(m.group(0))
        if value is None:
            continue
        before = text[cursor : m.start()]
        parts += (before, value)
        length += len(before)
        spans.append((length, length + len(value), m.group(0)))
        length += len(value)
        cursor = m.end()
    parts.append(text[cursor:])
    return "".join(parts), spans


class PlaceholderRestorer:
    """Restores one text stream (one choice's content, or one tool call's arguments) incrementally.

    ``feed(text)`` returns everything that can no longer be part of a placeholder of this request, with
    placeholders replaced; it holds back only a tail that is still a proper prefix of one of them (that
    tail always starts at the last ``<``). ``flush()`` returns the held tail as it is, at the end of the
    choice. Feeding a text cut anywhere gives the same output as restoring it in one piece.

    With ``json_escape`` the values are escaped for the inside of a JSON string, which is what a tool
    call's ``arguments`` are. Text that looks like a placeholder but is not one of this request's is
    left as it was, and counted in ``unresolved``: failing open shows a placeholder, never another value.
    In a stream that count is approximate: a foreign placeholder cut across two feeds is relayed
    correctly but not counted, since only this request's placeholders are held back.
    """

    def __init__(self, table: Mapping[str, str], *, json_escape: bool = False) -> None:
        self._values = {k: json_escaped(v) for k, v in table.items()} if json_escape else dict(table)
        #: Proper prefixes of this request's placeholders; built on the first feed() that needs them
        #: (restore() never does, and a long conversation has hundreds of placeholders).
        self._prefix_set: frozenset[str] | None = None
        self._held = ""
        self.restored = 0
        self.unresolved = 0

    def feed(self, text: str) -> str:
        buffer = self._held + text if self._held else text
        if "<" not in buffer:
            self._held = ""
            return buffer
        cut = buffer.rfind("<")
        if buffer[cut:] in self._prefixes():
            self._held = buffer[cut:]
            buffer = buffer[:cut]
        else:
            self._held = ""
        return self._replace(buffer)

    def _prefixes(self) -> frozenset[str]:
        if self._prefix_set is None:
            self._prefix_set = frozenset(p[:i] for p in self._values for i in range(1, len(p)))
        return self._prefix_set

    def flush(self) -> str:
        held, self._held = self._held, ""
        return held

    @property
    def holding(self) -> bool:
        return bool(self._held)

    def restore(self, text: str) -> str:
        """Restore a complete text in one go (for non-streamed answers)."""
        return self._replace(text)

    def _replace(self, text: str) -> str:
        if "<" not in text:
            return text
        return PLACEHOLDER_SHAPE.sub(self._substitute, text)

    def _substitute(self, match: re.Match[str]) -> str:
        found = match.group(0)
        value = self._values.get(found)
        if value is None:
            self.unresolved += 1
            return found
        self.restored += 1
        return value
