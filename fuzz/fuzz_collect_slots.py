"""atheris harness: the request parsers (``collect_slots`` of every wire API, chat first) on arbitrary bodies.

Contract: for any JSON object it returns ``(slots, unscanned)`` or raises ``BadRequest`` (which
``UnscannableContent`` is). Every slot holds a ``str``, writing a slot back keeps the body serialisable,
and no text the detector should see is skipped: each string slot is found again in the body.

Bodies are built from the fuzzer's bytes by a small grammar biased towards chat-shaped JSON (messages,
content parts, tool calls), with raw JSON bytes mixed in. ``PII_FUZZ_SKIP_KNOWN=1`` skips the known
``TypeError`` on a non-iterable ``tool_calls`` so the search can go past it.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import atheris
import orjson

# The heavy dependencies (pydantic, Presidio's types) are imported first so that only the parser is instrumented.
from gateway.errors import BadRequest
from gateway.policy import load_policy_dir
from gateway.redaction import Slot
from gateway.settings import bundled_policies_dir

with atheris.instrument_imports(include=["gateway.api"], enable_loader_override=False):
    from gateway.api import WireApi
    from gateway.api.anthropic import MESSAGES
    from gateway.api.chat import CHAT, COMPLETIONS
    from gateway.api.embeddings import EMBEDDINGS
    from gateway.api.responses import RESPONSES

POLICIES = list(load_policy_dir(bundled_policies_dir(), "default").policies.values())
SKIP_KNOWN = os.environ.get("PII_FUZZ_SKIP_KNOWN") == "1"
APIS: list[WireApi] = [CHAT, CHAT, CHAT, COMPLETIONS, RESPONSES, MESSAGES, EMBEDDINGS]
ROLES = ["user", "assistant", "system", "tool", "developer", ""]
PART_TYPES = ["text", "refusal", "image_url", "input_audio", "file", "input_text", "output_text", "tool_result", "x"]
ITEM_TYPES = ["message", "function_call", "function_call_output", "reasoning", "tool_use", "custom_tool_call"]
FIELDS = ["content", "name", "refusal", "reasoning_content", "tool_calls", "function_call", "role", "type", "x"]
FIELDS += ["arguments", "output", "summary", "input", "text"]
TOP = ["messages", "input", "prompt", "system", "user", "instructions", "tools"]


def value(fdp: atheris.FuzzedDataProvider, depth: int = 0) -> Any:
    kind = fdp.ConsumeIntInRange(0, 10 if depth < 4 else 4)
    if kind == 0:
        return None
    if kind == 1:
        return fdp.ConsumeBool()
    if kind == 2:
        return fdp.ConsumeIntInRange(-(2**63), 2**63 - 1)
    if kind == 3:
        return fdp.ConsumeRegularFloat()
    if kind == 4:
        return fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 24))
    if kind == 5:
        return [value(fdp, depth + 1) for _ in range(fdp.ConsumeIntInRange(0, 4))]
    if kind == 6:
        return {fdp.PickValueInList(FIELDS): value(fdp, depth + 1) for _ in range(fdp.ConsumeIntInRange(0, 4))}
    if kind == 7:
        out = message(fdp, depth + 1)
        if fdp.ConsumeBool():
            out["type"] = fdp.PickValueInList(ITEM_TYPES)
        return out
    if kind == 8:
        return {"type": fdp.PickValueInList(PART_TYPES), "text": value(fdp, depth + 1)}
    if kind == 9:
        return {"function": {"arguments": value(fdp, depth + 1)}, "index": value(fdp, depth + 1)}
    return fdp.ConsumeUnicodeNoSurrogates(4)


def message(fdp: atheris.FuzzedDataProvider, depth: int) -> dict[str, Any]:
    out: dict[str, Any] = {"role": fdp.PickValueInList(ROLES)}
    for _ in range(fdp.ConsumeIntInRange(0, 4)):
        out[fdp.PickValueInList(FIELDS)] = value(fdp, depth)
    return out


def body_of(fdp: atheris.FuzzedDataProvider) -> Any:
    if fdp.ConsumeIntInRange(0, 7) == 0:
        try:
            return orjson.loads(fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 512)))
        except orjson.JSONDecodeError:
            return None
    body: dict[str, Any] = {"model": "m"}
    for _ in range(fdp.ConsumeIntInRange(1, 3)):
        if fdp.ConsumeIntInRange(0, 9):
            body[fdp.PickValueInList(TOP)] = [value(fdp, 1) for _ in range(fdp.ConsumeIntInRange(0, 4))]
        else:
            body[fdp.PickValueInList(TOP)] = value(fdp)
    return body


def TestOneInput(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    policy = POLICIES[fdp.ConsumeIntInRange(0, len(POLICIES) - 1)]
    api = APIS[fdp.ConsumeIntInRange(0, len(APIS) - 1)]
    body = body_of(fdp)
    if not isinstance(body, dict):
        return
    before = orjson.dumps(body)
    try:
        slots, unscanned = api.collect_slots(body, policy)
    except BadRequest:
        return
    except TypeError as exc:
        if SKIP_KNOWN and "not iterable" in str(exc):
            return
        raise
    assert unscanned >= 0
    for slot in slots:
        assert isinstance(slot, Slot) and isinstance(slot.text, str)
        assert orjson.dumps(slot.text)[1:-1] in before, "a slot's text is not in the body"
    for i, slot in enumerate(slots):
        slot.write(f"<PII_{i}>")
    after = orjson.dumps(body)
    for i in range(len(slots)):
        assert f"<PII_{i}>".encode() in after, "a slot's write went nowhere"


def main() -> None:
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
