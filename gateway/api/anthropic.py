"""Anthropic Messages: ``system`` and every message block's text are scanned; ``content`` blocks restored.

Scanned: ``system`` (a string or text blocks); ``messages[].content`` as a string or blocks: ``text``,
``tool_result`` (string or nested blocks), every string inside ``tool_use.input``, and ``thinking``
text; tool definitions (``tools[].description`` and the ``input_schema`` JSON schema, walked by
:func:`~gateway.api.schema_slots`: tool names, property names and schema syntax stay). Images and
documents are unscannable. Restored: ``content`` blocks (``text``, ``tool_use`` input, ``thinking``);
in streams, ``content_block_delta`` events (``text_delta``, ``input_json_delta``
with values JSON-escaped, ``thinking_delta``), one restorer per block index, with the held-back
tail released as one extra delta just before that block's ``content_block_stop``.

Known limit: a thinking block is signed by the provider over the text it produced (with
placeholders). Re-sent, it is re-redacted to the same placeholders only when detection finds the same
values again; otherwise the provider rejects the signature (see docs/apis.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..errors import BadRequest, UnscannableContent
from ..placeholders import PlaceholderRestorer
from ..policy import Policy
from ..redaction import Slot
from . import (
    Event,
    WireApi,
    field_slot,
    json_leaf_slots,
    listed,
    request_list,
    restore_json_leaves,
    schema_slots,
    setter,
)
from .chat import DEFINITION_ROLE

UNSCANNABLE = frozenset({"image", "document", "file", "audio", "container_upload"})


def collect_slots(body: dict[str, Any], policy: Policy) -> tuple[list[Slot], int]:
    slots: list[Slot] = []
    unscanned = 0
    # Tools first, as Anthropic renders the prompt (tools, system, messages): see chat.collect_slots.
    for j, tool in enumerate(request_list(body.get("tools"), "tools")):
        if not isinstance(tool, dict):
            raise BadRequest(f"tools[{j}] must be an object.", param=f"tools[{j}]")
        field_slot(tool, "description", DEFINITION_ROLE, slots)
        schema_slots(tool.get("input_schema"), DEFINITION_ROLE, slots)
    system = body.get("system")
    if isinstance(system, str):
        slots.append(Slot(system, "system", setter(body, "system")))
    elif isinstance(system, list):
        unscanned += _blocks(system, "system", policy, slots, "system")
    elif system is not None:  # anything else would be forwarded unscanned
        raise BadRequest("'system' must be a string or an array of blocks.", param="system")
    messages = body.get("messages")
    if not isinstance(messages, list):
        raise BadRequest("'messages' must be an array of message objects.", param="messages")
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise BadRequest(f"messages[{i}] must be an object.", param=f"messages[{i}]")
        role = message.get("role") if isinstance(message.get("role"), str) else None
        content = message.get("content")
        if isinstance(content, str):
            slots.append(Slot(content, role, setter(message, "content")))
        elif isinstance(content, list):
            unscanned += _blocks(content, role, policy, slots, f"messages[{i}].content")
        elif content is not None:
            raise BadRequest(f"messages[{i}].content must be a string or an array.", param=f"messages[{i}].content")
    return slots, unscanned


def _blocks(blocks: list[Any], role: str | None, policy: Policy, slots: list[Slot], where: str) -> int:
    unscanned = 0
    for j, block in enumerate(blocks):
        if not isinstance(block, dict):
            raise BadRequest(f"{where}[{j}] must be an object.", param=f"{where}[{j}]")
        kind = block.get("type")
        if kind == "text" and isinstance(block.get("text"), str):
            slots.append(Slot(block["text"], role, setter(block, "text")))
        elif kind == "thinking" and isinstance(block.get("thinking"), str):
            slots.append(Slot(block["thinking"], role, setter(block, "thinking")))
        elif kind == "tool_use":
            json_leaf_slots(block.get("input"), role, slots)
        elif kind == "tool_result":
            content = block.get("content")
            if isinstance(content, str):
                slots.append(Slot(content, "tool", setter(block, "content")))
            elif isinstance(content, list):
                unscanned += _blocks(content, "tool", policy, slots, f"{where}[{j}].content")
        elif kind in ("redacted_thinking", "server_tool_use", "web_search_tool_result"):
            continue  # opaque to the model's provider-side state; nothing the client wrote
        elif policy.unscannable_content == "pass":
            unscanned += 1
        else:
            shown = kind if isinstance(kind, str) and kind.isidentifier() and len(kind) < 40 else "unknown"
            raise UnscannableContent(
                f"{where}[{j}] is a '{shown}' block, which the gateway cannot scan for personal data; "
                "the policy refuses unscannable content.",
                param=f"{where}[{j}]",
            )
    return unscanned


def restore_body(body: dict[str, Any], table: Mapping[str, str]) -> tuple[int, int]:
    text = PlaceholderRestorer(table)
    for block in listed(body.get("content")):
        if not isinstance(block, dict):
            continue
        for key in ("text", "thinking"):
            if isinstance(block.get(key), str):
                block[key] = text.restore(block[key])
        if block.get("type") == "tool_use":
            restore_json_leaves(block.get("input"), text.restore)
    return text.restored, text.unresolved


DELTA_FIELDS = {"text_delta": "text", "input_json_delta": "partial_json", "thinking_delta": "thinking"}


class AnthropicStreamRestorer:
    def __init__(self, table: Mapping[str, str]) -> None:
        self._table = table
        self._restorers: dict[int, tuple[str, PlaceholderRestorer]] = {}
        self.restored = 0
        self.unresolved = 0

    @property
    def holding(self) -> bool:
        return any(r.holding for _, r in self._restorers.values())

    def transform(self, event: bytes | None, data: dict[str, Any]) -> list[Event]:
        kind = data.get("type")
        index = data.get("index", 0) if isinstance(data.get("index", 0), int) else 0
        if kind == "content_block_delta" and isinstance(data.get("delta"), dict):
            delta = data["delta"]
            field = DELTA_FIELDS.get(delta.get("type", ""))
            if field is not None and isinstance(delta.get(field), str):
                found = self._restorers.get(index)
                if found is None or found[0] != delta["type"]:
                    found = (delta["type"], PlaceholderRestorer(self._table, json_escape=field == "partial_json"))
                    self._restorers[index] = found
                delta[field] = found[1].feed(delta[field])
            return [(event, data)]
        if kind == "content_block_stop":
            return [*self._release(index), (event, data)]
        if kind == "content_block_start" and isinstance(data.get("content_block"), dict):
            restore_body({"content": [data["content_block"]]}, self._table)
        return [(event, data)]

    def _release(self, index: int) -> list[Event]:
        found = self._restorers.pop(index, None)
        if found is None:
            return []
        delta_type, restorer = found
        held = restorer.flush()
        self.restored += restorer.restored
        self.unresolved += restorer.unresolved
        if not held:
            return []
        delta = {"type": delta_type, DELTA_FIELDS[delta_type]: held}
        return [(b"content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta})]

    def finish(self) -> list[Event]:
        out: list[Event] = []
        for index in sorted(self._restorers):
            out.extend(self._release(index))
        return out


def usage(body: dict[str, Any]) -> tuple[int | None, int | None]:
    found = body.get("usage")
    if not isinstance(found, dict):
        return None, None
    i, o = found.get("input_tokens"), found.get("output_tokens")
    return (i if isinstance(i, int) else None, o if isinstance(o, int) else None)


MESSAGES = WireApi(
    route="anthropic.messages",
    upstream_path="/messages",
    error_style="anthropic",
    collect_slots=collect_slots,
    restore_body=restore_body,
    stream_restorer=AnthropicStreamRestorer,
    usage=usage,
)
