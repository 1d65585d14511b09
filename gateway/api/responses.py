"""OpenAI Responses API: ``instructions`` and every ``input`` item's text are scanned; output items restored.

Scanned: ``instructions``; ``input`` as a string or as items: messages (string content, or
``input_text``/``output_text``/``refusal`` parts), ``function_call`` arguments, ``function_call_output``
and ``custom_tool_call(_output)`` text, reasoning summaries. Images, files and audio are unscannable.
Also what the model reads besides the input: tool definitions (``function`` tools' ``description`` and
``parameters`` schema, ``custom`` tools' ``description``, ``mcp`` tools' ``server_description``), the
``text.format`` JSON schema (``description`` and ``schema``) and ``prompt.variables``. Tool names,
property names and schema syntax stay as they are (see :func:`~gateway.api.schema_slots`); so do the
other tool types' settings (an MCP server's URL and headers are credentials and addresses, not text).

Restored: ``output`` items (``output_text``, refusals, function-call ``arguments``, reasoning
summaries) in whole answers, and in streams the ``*.delta`` events (per output and content index),
the full texts of ``*.done`` events, and the ``item``/``part``/``response`` objects that events carry.
A tail held back at the end of a part is released as one extra ``*.delta`` event just before its
``*.done``.

Scope: stateless use (``store: false``). ``previous_response_id`` is passed through, but the provider
then holds the earlier turns with placeholders numbered by *that* request: placeholders in those
turns are not restorable by this request (see docs/apis.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..errors import BadRequest, UnscannableContent
from ..placeholders import PlaceholderRestorer
from ..policy import Policy
from ..redaction import Slot
from . import Event, WireApi, field_slot, listed, openai_usage, request_list, schema_slots, setter
from .chat import DEFINITION_ROLE

UNSCANNABLE = frozenset({"input_image", "input_file", "input_audio", "image", "file"})
TEXT_PART_KEYS = {
    "input_text": "text",
    "output_text": "text",
    "text": "text",
    "refusal": "refusal",
    "summary_text": "text",
}
JSON_FIELDS = ("arguments",)


def collect_slots(body: dict[str, Any], policy: Policy) -> tuple[list[Slot], int]:
    slots: list[Slot] = []
    unscanned = 0
    _definition_slots(body, slots)  # first, as in the prompt: see chat.collect_slots
    instructions = body.get("instructions")
    if isinstance(instructions, str):
        slots.append(Slot(instructions, "system", setter(body, "instructions")))
    elif isinstance(instructions, list):  # input items, as a response object carries them
        for i, item in enumerate(instructions):
            if not isinstance(item, dict):
                raise BadRequest(f"instructions[{i}] must be an object.", param=f"instructions[{i}]")
            unscanned += _item_slots(item, policy, slots, f"instructions[{i}]")
    elif instructions is not None:
        raise BadRequest("'instructions' must be a string or an array of input items.", param="instructions")
    unscanned += _prompt_variable_slots(body.get("prompt"), policy, slots)
    value = body.get("input")
    if isinstance(value, str):
        slots.append(Slot(value, "user", setter(body, "input")))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            if not isinstance(item, dict):
                raise BadRequest(f"input[{i}] must be an object.", param=f"input[{i}]")
            unscanned += _item_slots(item, policy, slots, f"input[{i}]")
    elif value is not None:
        raise BadRequest("'input' must be a string or an array of items.", param="input")
    field_slot(body, "user", None, slots)
    return slots, unscanned


def _definition_slots(body: dict[str, Any], slots: list[Slot]) -> None:
    for j, tool in enumerate(request_list(body.get("tools"), "tools")):
        if not isinstance(tool, dict):
            raise BadRequest(f"tools[{j}] must be an object.", param=f"tools[{j}]")
        for field in ("description", "server_description"):
            if isinstance(tool.get(field), str):
                slots.append(Slot(tool[field], DEFINITION_ROLE, setter(tool, field)))
        if tool.get("type") == "function":
            schema_slots(tool.get("parameters"), DEFINITION_ROLE, slots)
    text = body.get("text")
    json_format = text.get("format") if isinstance(text, dict) else None
    if isinstance(json_format, dict) and json_format.get("type") == "json_schema":
        field_slot(json_format, "description", DEFINITION_ROLE, slots)
        schema_slots(json_format.get("schema"), DEFINITION_ROLE, slots)


def _prompt_variable_slots(prompt: Any, policy: Policy, slots: list[Slot]) -> int:
    """A stored prompt's ``variables``: strings, or input parts, substituted into the prompt upstream."""
    variables = prompt.get("variables") if isinstance(prompt, dict) else None
    if not isinstance(variables, dict):
        return 0
    unscanned = 0
    for name, value in variables.items():
        if isinstance(value, str):
            slots.append(Slot(value, "user", setter(variables, name)))
        else:
            unscanned += _part_slots(value, "user", policy, slots, "prompt.variables")
    return unscanned


def _item_slots(item: dict[str, Any], policy: Policy, slots: list[Slot], where: str) -> int:
    kind = item.get("type", "message")
    role = item.get("role") if isinstance(item.get("role"), str) else None
    unscanned = 0
    if kind == "message":
        content = item.get("content")
        if isinstance(content, str):
            slots.append(Slot(content, role, setter(item, "content")))
        elif isinstance(content, list):
            for j, part in enumerate(content):
                unscanned += _part_slots(part, role, policy, slots, f"{where}.content[{j}]")
    elif kind in ("function_call", "custom_tool_call"):
        field = "arguments" if kind == "function_call" else "input"
        if isinstance(item.get(field), str):
            slots.append(
                Slot(item[field], "assistant", setter(item, field), kind="json" if field == "arguments" else "text")
            )
    elif kind in ("function_call_output", "custom_tool_call_output"):
        output = item.get("output")
        if isinstance(output, str):
            slots.append(Slot(output, "tool", setter(item, "output")))
        elif isinstance(output, list):
            for j, part in enumerate(output):
                unscanned += _part_slots(part, "tool", policy, slots, f"{where}.output[{j}]")
    elif kind == "reasoning":
        for part in request_list(item.get("summary"), f"{where}.summary"):
            field_slot(part, "text", "assistant", slots)
    return unscanned


def _part_slots(part: Any, role: str | None, policy: Policy, slots: list[Slot], where: str) -> int:
    if not isinstance(part, dict):
        raise BadRequest(f"{where} must be an object.", param=where)
    kind = part.get("type")
    key = TEXT_PART_KEYS.get(kind) if isinstance(kind, str) else None
    if key is not None and isinstance(part.get(key), str):
        slots.append(Slot(part[key], role, setter(part, key)))
        return 0
    if policy.unscannable_content == "pass":
        return 1
    shown = kind if isinstance(kind, str) and kind.isidentifier() and len(kind) < 40 else "unknown"
    raise UnscannableContent(
        f"{where} is a '{shown}' part, which the gateway cannot scan for personal data; "
        "the policy refuses unscannable content.",
        param=where,
    )


def _restore_item(item: dict[str, Any], text: PlaceholderRestorer, args: PlaceholderRestorer) -> None:
    for part in listed(item.get("content")):
        if isinstance(part, dict):
            for key in ("text", "refusal"):
                if isinstance(part.get(key), str):
                    part[key] = text.restore(part[key])
    for part in listed(item.get("summary")):
        if isinstance(part, dict) and isinstance(part.get("text"), str):
            part["text"] = text.restore(part["text"])
    if isinstance(item.get("arguments"), str):
        item["arguments"] = args.restore(item["arguments"])
    if item.get("type") == "custom_tool_call" and isinstance(item.get("input"), str):
        item["input"] = text.restore(item["input"])


def restore_body(body: dict[str, Any], table: Mapping[str, str]) -> tuple[int, int]:
    text = PlaceholderRestorer(table)
    args = PlaceholderRestorer(table, json_escape=True)
    for item in listed(body.get("output")):
        if isinstance(item, dict):
            _restore_item(item, text, args)
    return text.restored + args.restored, text.unresolved + args.unresolved


class ResponsesStreamRestorer:
    def __init__(self, table: Mapping[str, str]) -> None:
        self._table = table
        self._restorers: dict[tuple[str, int, int], PlaceholderRestorer] = {}
        self._last: dict[tuple[str, int, int], dict[str, Any]] = {}
        self.restored = 0
        self.unresolved = 0

    @property
    def holding(self) -> bool:
        return any(r.holding for r in self._restorers.values())

    def _key(self, family: str, data: dict[str, Any]) -> tuple[str, int, int]:
        inner = data.get("content_index", data.get("summary_index", 0))
        outer = data.get("output_index", 0)
        return (family, outer if isinstance(outer, int) else 0, inner if isinstance(inner, int) else 0)

    def _count(self, restorer: PlaceholderRestorer) -> None:
        self.restored += restorer.restored
        self.unresolved += restorer.unresolved
        restorer.restored = restorer.unresolved = 0

    def transform(self, event: bytes | None, data: dict[str, Any]) -> list[Event]:
        kind = data.get("type")
        if not isinstance(kind, str):
            return [(event, data)]
        out: list[Event] = []
        if kind.endswith(".delta") and isinstance(data.get("delta"), str):
            family = kind[: -len(".delta")]
            key = self._key(family, data)
            restorer = self._restorers.get(key)
            if restorer is None:
                json_mode = "arguments" in family
                restorer = self._restorers[key] = PlaceholderRestorer(self._table, json_escape=json_mode)
            data["delta"] = restorer.feed(data["delta"])
            self._last[key] = data
        elif kind.endswith(".done"):
            family = kind[: -len(".done")]
            key = self._key(family, data)
            restorer = self._restorers.pop(key, None)
            if restorer is not None:
                held = restorer.flush()
                self._count(restorer)
                template = self._last.pop(key, None)
                if held and template is not None:
                    out.append((f"{family}.delta".encode(), {**template, "delta": held}))
        self._restore_full(data)
        out.append((event, data))
        return out

    def _restore_full(self, data: dict[str, Any]) -> None:
        text = PlaceholderRestorer(self._table)
        args = PlaceholderRestorer(self._table, json_escape=True)
        for key in ("text", "refusal"):
            if isinstance(data.get(key), str):
                data[key] = text.restore(data[key])
        if isinstance(data.get("arguments"), str):
            data["arguments"] = args.restore(data["arguments"])
        if isinstance(data.get("part"), dict):
            _restore_item({"content": [data["part"]]}, text, args)
        if isinstance(data.get("item"), dict):
            _restore_item(data["item"], text, args)
        if isinstance(data.get("response"), dict):
            for item in listed(data["response"].get("output")):
                if isinstance(item, dict):
                    _restore_item(item, text, args)
        self._count(text)
        self._count(args)

    def finish(self) -> list[Event]:
        out: list[Event] = []
        for key, restorer in list(self._restorers.items()):
            held = restorer.flush()
            self._count(restorer)
            template = self._last.get(key)
            if held and template is not None:
                out.append((f"{key[0]}.delta".encode(), {**template, "delta": held}))
        self._restorers.clear()
        return out


RESPONSES = WireApi(
    route="responses",
    upstream_path="/responses",
    error_style="openai",
    collect_slots=collect_slots,
    restore_body=restore_body,
    stream_restorer=ResponsesStreamRestorer,
    usage=openai_usage,
)
