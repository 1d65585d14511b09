"""OpenAI Embeddings: every input string is redacted; token arrays pass only if the policy allows it.

There is nothing to restore: the answer is vectors. Note that embeddings of placeholders are not
embeddings of the original text; retrieval built on them matches placeholders, which the docs say.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..errors import BadRequest
from ..policy import Policy
from ..redaction import Slot
from . import WireApi, field_slot, openai_usage, setter
from .chat import ChatStreamRestorer, _tokens


def collect_slots(body: dict[str, Any], policy: Policy) -> tuple[list[Slot], int]:
    value = body.get("input")
    slots: list[Slot] = []
    unscanned = 0
    if isinstance(value, str):
        slots.append(Slot(value, "user", setter(body, "input")))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            if isinstance(item, str):
                slots.append(Slot(item, "user", setter(value, i)))
            elif isinstance(item, int | list):
                unscanned += _tokens(policy, "input")
                if isinstance(item, int):  # one token array: counted once
                    break
            else:
                raise BadRequest(f"input[{i}] must be a string or token ids.", param=f"input[{i}]")
    else:
        raise BadRequest("'input' must be a string or an array.", param="input")
    field_slot(body, "user", None, slots)
    return slots, unscanned


def _nothing(body: dict[str, Any], table: Mapping[str, str]) -> tuple[int, int]:
    return 0, 0


EMBEDDINGS = WireApi(
    route="embeddings",
    upstream_path="/embeddings",
    error_style="openai",
    collect_slots=collect_slots,
    restore_body=_nothing,
    stream_restorer=ChatStreamRestorer,
    usage=openai_usage,
    restores=False,
)
