"""OpenAI Chat Completions and legacy Completions: which request fields hold text, and how answers are restored.

Scanned: every message's ``content`` (a string, or the ``text``/``refusal`` parts of a list), ``name``,
``refusal``, ``reasoning_content``, the ``arguments`` of ``tool_calls`` and the legacy ``function_call``,
and the top-level ``user``. Parts the detector cannot read (images, audio, files, and any part type this
module does not know) are refused, or passed unscanned when the policy says so.

Also scanned, because the model reads them as much as a message: tool definitions (``tools[].function``
and legacy ``functions[]``: ``description`` and the ``parameters`` schema; ``tools[].custom.description``),
``response_format.json_schema`` (``description`` and ``schema``), and ``prediction.content`` (a string or
text parts). Schemas are walked by :func:`~gateway.api.schema_slots`, which keeps property names and
schema syntax. Tool and function *names* stay: the model must call them by name, and answers are
matched on them. A custom tool's grammar (``format``) is syntax and stays too.

Restored: in each choice's ``message`` (or streamed ``delta``): ``content``, ``refusal``,
``reasoning_content`` and tool-call / function-call ``arguments`` (with values JSON-escaped there).
Every other field of the answer passes through untouched.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..errors import BadRequest, UnscannableContent
from ..placeholders import PlaceholderRestorer
from ..policy import Policy
from ..redaction import Slot
from . import Event, WireApi, field_slot, listed, openai_usage, request_list, schema_slots, setter

TEXT_FIELDS = ("content", "refusal", "reasoning_content", "reasoning")
UNSCANNABLE_PARTS = frozenset({"image_url", "input_audio", "file", "image", "audio", "input_image", "input_file"})


_setter = setter


def collect_slots(body: dict[str, Any], policy: Policy) -> tuple[list[Slot], int]:
    """The request's text slots, and how many unscannable parts were passed through by policy."""
    messages = body.get("messages")
    if not isinstance(messages, list):
        raise BadRequest("'messages' must be an array of message objects.", param="messages")
    slots: list[Slot] = []
    unscanned = 0
    # Definitions first: they come first in the prompt, and numbering by first occurrence then keeps
    # their placeholders the same turn after turn (provider-side prompt caching keys on that prefix).
    definition_slots(body, slots)
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise BadRequest(f"messages[{i}] must be an object.", param=f"messages[{i}]")
        role = message.get("role")
        role = role if isinstance(role, str) else None
        content = message.get("content")
        if isinstance(content, str):
            slots.append(Slot(content, role, _setter(message, "content")))
        elif isinstance(content, list):
            unscanned += _collect_parts(content, role, policy, slots, f"messages[{i}].content")
        elif content is not None:
            raise BadRequest(f"messages[{i}].content must be a string or an array.", param=f"messages[{i}].content")
        for field in ("name", *TEXT_FIELDS[1:]):
            if isinstance(message.get(field), str):
                slots.append(Slot(message[field], role, _setter(message, field)))
        for call in request_list(message.get("tool_calls"), f"messages[{i}].tool_calls"):
            function = call.get("function") if isinstance(call, dict) else None
            field_slot(function, "arguments", role, slots, kind="json")
        legacy = message.get("function_call")
        field_slot(legacy, "arguments", role, slots, kind="json")
    unscanned += _prediction_slots(body.get("prediction"), policy, slots)
    field_slot(body, "user", None, slots)
    return slots, unscanned


#: The role that tool and output-schema definitions are scanned under: developers write them, like a
#: system prompt, so a policy's ``roles`` treats them as one.
DEFINITION_ROLE = "system"


def definition_slots(body: dict[str, Any], slots: list[Slot]) -> None:
    """Slots for ``tools``, legacy ``functions`` and ``response_format``: the text the model reads in them."""
    for j, tool in enumerate(request_list(body.get("tools"), "tools")):
        if not isinstance(tool, dict):
            raise BadRequest(f"tools[{j}] must be an object.", param=f"tools[{j}]")
        function = tool.get("function")
        if isinstance(function, dict):
            function_slots(function, slots)
        custom = tool.get("custom")
        field_slot(custom, "description", DEFINITION_ROLE, slots)
    for j, function in enumerate(request_list(body.get("functions"), "functions")):
        if not isinstance(function, dict):
            raise BadRequest(f"functions[{j}] must be an object.", param=f"functions[{j}]")
        function_slots(function, slots)
    response_format = body.get("response_format")
    if isinstance(response_format, dict):
        json_schema = response_format.get("json_schema")
        if isinstance(json_schema, dict):
            field_slot(json_schema, "description", DEFINITION_ROLE, slots)
            schema_slots(json_schema.get("schema"), DEFINITION_ROLE, slots)


def function_slots(function: dict[str, Any], slots: list[Slot]) -> None:
    """A function definition's ``description`` and ``parameters`` schema (its ``name`` is an identifier)."""
    field_slot(function, "description", DEFINITION_ROLE, slots)
    schema_slots(function.get("parameters"), DEFINITION_ROLE, slots)


def _prediction_slots(prediction: Any, policy: Policy, slots: list[Slot]) -> int:
    """``prediction.content``: the text the client expects back (usually its own document), scanned as
    the user's. A list holds text parts, like a message's content."""
    if not isinstance(prediction, dict):
        return 0
    content = prediction.get("content")
    if isinstance(content, str):
        slots.append(Slot(content, "user", _setter(prediction, "content")))
        return 0
    if isinstance(content, list):
        return _collect_parts(content, "user", policy, slots, "prediction.content")
    if content is not None:
        raise BadRequest("prediction.content must be a string or an array.", param="prediction.content")
    return 0


def _collect_parts(parts: list[Any], role: str | None, policy: Policy, slots: list[Slot], where: str) -> int:
    unscanned = 0
    for j, part in enumerate(parts):
        if isinstance(part, str):
            slots.append(Slot(part, role, _setter(parts, j)))
            continue
        if not isinstance(part, dict):
            raise BadRequest(f"{where}[{j}] must be an object.", param=f"{where}[{j}]")
        kind = part.get("type")
        if kind == "text" and isinstance(part.get("text"), str):
            slots.append(Slot(part["text"], role, _setter(part, "text")))
        elif kind == "refusal" and isinstance(part.get("refusal"), str):
            slots.append(Slot(part["refusal"], role, _setter(part, "refusal")))
        elif policy.unscannable_content == "pass":
            unscanned += 1
        else:
            shown = kind if isinstance(kind, str) and len(kind) <= 40 and kind.isidentifier() else "unknown"
            raise UnscannableContent(
                f"{where}[{j}] is a '{shown}' part, which the gateway cannot scan for personal data; "
                "the policy refuses unscannable content.",
                param=f"{where}[{j}]",
            )
    return unscanned


def message_contents(body: dict[str, Any]) -> list[str]:
    """Each choice's message content, where it is one string (what a client re-sends as the assistant turn)."""
    out = []
    for choice in listed(body.get("choices")):
        message = choice.get("message") if isinstance(choice, dict) else None
        if isinstance(message, dict) and isinstance(message.get("content"), str):
            out.append(message["content"])
    return out


def delta_contents(chunk: dict[str, Any]) -> list[tuple[int, str]]:
    """A stream chunk's content pieces per choice index: the stream form of ``message_contents``."""
    out = []
    for choice in listed(chunk.get("choices")):  # runs for every event of a remembered stream: lookups once
        if not isinstance(choice, dict):
            continue
        index, delta = choice.get("index", 0), choice.get("delta")
        if isinstance(index, int) and isinstance(delta, dict):
            content = delta.get("content")
            if isinstance(content, str):
                out.append((index, content))
    return out


def restore_completion(body: dict[str, Any], table: Mapping[str, str]) -> tuple[int, int]:
    """Restore placeholders in every choice of a whole answer, in place. Returns (restored, unresolved)."""
    text = PlaceholderRestorer(table)
    args = PlaceholderRestorer(table, json_escape=True)
    for choice in listed(body.get("choices")):
        if not isinstance(choice, dict):
            continue
        message = choice.get("message")
        if isinstance(message, dict):
            _restore_message(message, text, args)
        if isinstance(choice.get("text"), str):  # legacy completions shape
            choice["text"] = text.restore(choice["text"])
    return text.restored + args.restored, text.unresolved + args.unresolved


def _restore_message(message: dict[str, Any], text: PlaceholderRestorer, args: PlaceholderRestorer) -> None:
    for field in TEXT_FIELDS:
        value = message.get(field)
        if isinstance(value, str):
            message[field] = text.restore(value)
        elif isinstance(value, list):
            for part in value:
                if isinstance(part, dict) and isinstance(part.get("text"), str):
                    part["text"] = text.restore(part["text"])
    for call in listed(message.get("tool_calls")):
        function = call.get("function") if isinstance(call, dict) else None
        if isinstance(function, dict) and isinstance(function.get("arguments"), str):
            function["arguments"] = args.restore(function["arguments"])
    legacy = message.get("function_call")
    if isinstance(legacy, dict) and isinstance(legacy.get("arguments"), str):
        legacy["arguments"] = args.restore(legacy["arguments"])


class ChatStreamRestorer:
    """Restores ``chat.completion.chunk`` events: one PlaceholderRestorer per (choice, field, tool call).

    Held-back text is released into the chunk that carries the choice's ``finish_reason``; whatever is
    still held when the stream ends is released by :meth:`finish` as one extra chunk per choice.
    """

    def __init__(self, table: Mapping[str, str]) -> None:
        self._table = table
        self._restorers: dict[tuple[int, str, int], PlaceholderRestorer] = {}
        self._template: dict[str, Any] = {}
        self.restored = 0
        self.unresolved = 0

    @property
    def holding(self) -> bool:
        return any(r.holding for r in self._restorers.values())

    def _restorer(self, key: tuple[int, str, int]) -> PlaceholderRestorer:
        found = self._restorers.get(key)
        if found is None:
            found = self._restorers[key] = PlaceholderRestorer(self._table, json_escape=key[1] == "arguments")
        return found

    def transform(self, event: bytes | None, data: dict[str, Any]) -> list[Event]:
        return [(event, self.transform_chunk(data))]

    def transform_chunk(self, chunk: dict[str, Any]) -> dict[str, Any]:
        if not self._template:
            self._template = {k: chunk[k] for k in ("id", "object", "created", "model") if k in chunk}
        for choice in listed(chunk.get("choices")):
            if not isinstance(choice, dict):
                continue
            index = choice.get("index", 0) if isinstance(choice.get("index", 0), int) else 0
            delta = choice.get("delta")
            if isinstance(delta, dict):
                self._feed_delta(index, delta)
            if isinstance(choice.get("text"), str):  # legacy completions: the text sits on the choice
                choice["text"] = self._restorer((index, "text", 0)).feed(choice["text"])
            if choice.get("finish_reason") is not None:
                if isinstance(choice.get("text"), str):
                    restorer = self._restorers.pop((index, "text", 0), None)
                    if restorer is not None:
                        choice["text"] += restorer.flush()
                        self.restored += restorer.restored
                        self.unresolved += restorer.unresolved
                if not isinstance(delta, dict):
                    delta = {}
                self._release(index, delta)
                if delta:
                    choice["delta"] = delta
        return chunk

    def _feed_delta(self, index: int, delta: dict[str, Any]) -> None:
        for field in TEXT_FIELDS:
            value = delta.get(field)
            if isinstance(value, str):
                delta[field] = self._restorer((index, field, 0)).feed(value)
        for call in listed(delta.get("tool_calls")):
            if not isinstance(call, dict):
                continue
            function = call.get("function")
            if isinstance(function, dict) and isinstance(function.get("arguments"), str):
                tool = call.get("index", 0) if isinstance(call.get("index", 0), int) else 0
                function["arguments"] = self._restorer((index, "arguments", tool)).feed(function["arguments"])
        legacy = delta.get("function_call")
        if isinstance(legacy, dict) and isinstance(legacy.get("arguments"), str):
            legacy["arguments"] = self._restorer((index, "arguments", -1)).feed(legacy["arguments"])

    def _release(self, index: int, delta: dict[str, Any]) -> None:
        for key in sorted(k for k in self._restorers if k[0] == index):
            restorer = self._restorers.pop(key)
            held = restorer.flush()
            self.restored += restorer.restored
            self.unresolved += restorer.unresolved
            if not held:
                continue
            _, field, tool = key
            if field != "arguments":
                delta[field] = (delta.get(field) or "") + held
            elif tool == -1:
                legacy = delta.setdefault("function_call", {})
                legacy["arguments"] = (legacy.get("arguments") or "") + held
            else:
                calls = delta.setdefault("tool_calls", [])
                call = next((c for c in calls if isinstance(c, dict) and c.get("index", 0) == tool), None)
                if call is None:
                    call = {"index": tool, "function": {}}
                    calls.append(call)
                function = call.setdefault("function", {})
                function["arguments"] = (function.get("arguments") or "") + held

    def finish(self) -> list[Event]:
        """Chunks carrying text still held when the stream ended without a finish_reason."""
        indexes = sorted({k[0] for k, r in self._restorers.items() if r.holding})
        chunks: list[Event] = []
        for index in indexes:
            text = self._restorers.pop((index, "text", 0), None)
            if text is not None:
                chunks.append((None, {**self._template, "choices": [{"index": index, "text": text.flush()}]}))
                self.restored += text.restored
                self.unresolved += text.unresolved
            delta: dict[str, Any] = {}
            self._release(index, delta)
            if delta:
                chunks.append(
                    (None, {**self._template, "choices": [{"index": index, "delta": delta, "finish_reason": None}]})
                )
        for restorer in self._restorers.values():
            self.restored += restorer.restored
            self.unresolved += restorer.unresolved
        self._restorers.clear()
        return chunks


def collect_completion_slots(body: dict[str, Any], policy: Policy) -> tuple[list[Slot], int]:
    """Legacy completions: ``prompt`` (a string or strings; token arrays only if the policy passes them)."""
    slots: list[Slot] = []
    unscanned = 0
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        slots.append(Slot(prompt, "user", setter(body, "prompt")))
    elif isinstance(prompt, list):
        for i, item in enumerate(prompt):
            if isinstance(item, str):
                slots.append(Slot(item, "user", setter(prompt, i)))
            else:
                unscanned += _tokens(policy, "prompt")
    elif prompt is not None:
        raise BadRequest("'prompt' must be a string or an array.", param="prompt")
    field_slot(body, "suffix", "user", slots)
    field_slot(body, "user", None, slots)
    return slots, unscanned


def _tokens(policy: Policy, param: str) -> int:
    if policy.unscannable_content == "pass":
        return 1
    raise UnscannableContent(
        f"'{param}' holds token ids, which the gateway cannot scan for personal data; send text instead.",
        param=param,
    )


CHAT = WireApi(
    route="chat.completions",
    upstream_path="/chat/completions",
    error_style="openai",
    collect_slots=collect_slots,
    restore_body=restore_completion,
    stream_restorer=ChatStreamRestorer,
    usage=openai_usage,
    answer_texts=message_contents,
    answer_pieces=delta_contents,
)

COMPLETIONS = WireApi(
    route="completions",
    upstream_path="/completions",
    error_style="openai",
    collect_slots=collect_completion_slots,
    restore_body=restore_completion,
    stream_restorer=ChatStreamRestorer,
    usage=openai_usage,
)
