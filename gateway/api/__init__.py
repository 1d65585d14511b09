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
