"""Wire formats: one module per API, each saying which request fields hold text and how answers are restored.

Every API module provides a :class:`WireApi`: the request's text slots, the restoration of a whole
answer, an :class:`EventTransformer` for its stream, where usage lives, and the shape of its errors.
The pipeline is the same for all of them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from ..errors import BadRequest
from ..policy import Policy
from ..redaction import Slot

ErrorStyle = Literal["openai", "anthropic"]
Event = tuple[bytes | None, dict[str, Any]]


class EventTransformer(Protocol):
    """Restores one stream's events. ``transform`` may return several events (a released tail)."""

    restored: int
    unresolved: int

    @property
    def holding(self) -> bool: ...

    def transform(self, event: bytes | None, data: dict[str, Any]) -> list[Event]: ...

    def finish(self) -> list[Event]: ...


@dataclass(frozen=True)
class WireApi:
    #: The route label in metrics and transcripts (``chat.completions``, ``anthropic.messages`` ...).
    route: str
    #: The path under an OpenAI-style base URL (``/chat/completions``).
    upstream_path: str
    error_style: ErrorStyle
    collect_slots: Callable[[dict[str, Any], Policy], tuple[list[Slot], int]]
    restore_body: Callable[[dict[str, Any], Mapping[str, str]], tuple[int, int]]
    stream_restorer: Callable[[Mapping[str, str]], EventTransformer]
    usage: Callable[[dict[str, Any]], tuple[int | None, int | None]]
    #: False for APIs with nothing to restore (embeddings).
    restores: bool = True
    #: The plain texts of a whole answer that a client re-sends as they are on its next turn (a chat
    #: message's content), before restoration. See ``Redactor.remember_answers``.
    answer_texts: Callable[[dict[str, Any]], list[str]] = lambda _answer: []
    #: The same for a stream: the (choice index, text piece) pairs one event adds to those texts.
    #: None: the API's streams are not collected (their events are then never parsed for this).
    answer_pieces: Callable[[dict[str, Any]], list[tuple[int, str]]] | None = None


def listed(value: Any) -> list[Any]:
    """An answer's list, or nothing: restoration fails open on an answer of the wrong shape."""
    return value if isinstance(value, list) else []


def request_list(value: Any, param: str) -> list[Any]:
    """A request's list field; anything but a list or null is refused (it would pass unscanned)."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise BadRequest(f"'{param}' must be an array.", param=param)
    return value


def openai_usage(body: dict[str, Any]) -> tuple[int | None, int | None]:
    usage = body.get("usage")
    if not isinstance(usage, dict):
        return None, None
    prompt = usage.get("prompt_tokens", usage.get("input_tokens"))
    completion = usage.get("completion_tokens", usage.get("output_tokens"))
    return (prompt if isinstance(prompt, int) else None, completion if isinstance(completion, int) else None)


def setter(container: dict[str, Any] | list[Any], key: Any) -> Callable[[str], None]:
    def write(value: str) -> None:
        container[key] = value

    return write


def field_slot(
    container: Any, key: str, role: str | None, slots: list[Slot], kind: Literal["text", "json"] = "text"
) -> None:
    """A slot for ``container[key]`` when ``container`` is an object and that field holds a string."""
    if isinstance(container, dict) and isinstance(container.get(key), str):
        slots.append(Slot(container[key], role, setter(container, key), kind=kind))


def json_leaf_slots(value: Any, role: str | None, slots: list[Slot]) -> None:
    """A slot for every string inside a JSON value (keys stay), for structured tool inputs."""
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(item, str):
                slots.append(Slot(item, role, setter(value, key)))
            else:
                json_leaf_slots(item, role, slots)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            if isinstance(item, str):
                slots.append(Slot(item, role, setter(value, i)))
            else:
                json_leaf_slots(item, role, slots)


#: JSON-schema keywords whose strings are syntax the upstream must get verbatim: types, formats, regular
#: expressions, references, and lists of property names. Never scanned.
SCHEMA_SYNTAX = frozenset(
    {
        "type", "format", "pattern", "$ref", "$id", "$schema", "$anchor", "$dynamicRef", "$dynamicAnchor",
        "$vocabulary", "required", "dependentRequired", "discriminator", "contentEncoding", "contentMediaType",
    }
)  # fmt: skip
#: Keywords whose values are instances of the schema (data, not schemas): every string inside is scanned.
SCHEMA_DATA = frozenset({"default", "const", "enum", "examples", "example"})
#: Keywords that map property (or definition) names to subschemas.
SCHEMA_MAPS = frozenset({"properties", "patternProperties", "$defs", "definitions", "dependentSchemas", "dependencies"})


def schema_slots(schema: Any, role: str | None, slots: list[Slot]) -> None:
    """A slot for every string in a JSON schema that the model reads as text (tool parameters, output schemas).

    Scanned: ``description``, ``title``, ``$comment``, every string inside ``enum``, ``const``,
    ``default`` and ``examples``, and the string values of keywords this function does not know
    (vendor extensions): an unknown keyword is text until shown otherwise, so it fails closed.

    Left alone, deliberately:

    - object *keys*: property names, ``$defs`` names and the keys inside ``default``/``enum`` objects
      are identifiers the model must echo back exactly in its arguments, and the client's code
      matches on them. A name would be a leak only if a developer chose a person's name as a field
      name; rewriting identifiers would break every tool call instead.
    - the :data:`SCHEMA_SYNTAX` keywords (``type``, ``format``, ``pattern``, ``$ref``, ``required`` ...):
      syntax, not prose; a rewritten regex or reference breaks the schema.

    ``enum`` and ``const`` values *are* scanned, although the model must echo them too: the model
    then answers with the placeholder, which restoration turns back into the value in the arguments
    or content the client receives (under a policy that restores; otherwise the client sees the
    placeholder, as it would for the same value in a message).
    """
    if not isinstance(schema, dict):
        return
    for key, value in schema.items():
        if key in SCHEMA_SYNTAX:
            continue
        if key in SCHEMA_DATA:
            if isinstance(value, str):
                slots.append(Slot(value, role, setter(schema, key)))
            else:
                json_leaf_slots(value, role, slots)
        elif key in SCHEMA_MAPS and isinstance(value, dict):
            for sub in value.values():  # draft-07 ``dependencies`` may map to a name list: syntax, skipped
                schema_slots(sub, role, slots)
        elif isinstance(value, str):
            slots.append(Slot(value, role, setter(schema, key)))
        elif isinstance(value, list):
            for i, item in enumerate(value):
                if isinstance(item, str):
                    slots.append(Slot(item, role, setter(value, i)))
                else:
                    schema_slots(item, role, slots)
        else:
            schema_slots(value, role, slots)


def restore_json_leaves(value: Any, restore: Callable[[str], str]) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(item, str):
                value[key] = restore(item)
            else:
                restore_json_leaves(item, restore)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            if isinstance(item, str):
                value[i] = restore(item)
            else:
                restore_json_leaves(item, restore)
