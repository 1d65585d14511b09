"""Exchange: the record of one request as it moves through the pipeline. Observers read it; they never see bytes.

It holds ids, the route, the model, the policy, the placeholder table, counts, timings, usage and the
outcome. It never holds a key. The placeholder table inside it holds original values, so an Exchange is
never logged, put in a metric label or persisted as it is: the transcript recorder encrypts what the
policy lets it keep.
"""

from __future__ import annotations

import secrets
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from .placeholders import Redactions

#: Most bytes kept per side of an exchange; beyond it the text is cut and marked truncated.
MAX_SIDE_BYTES = 4 * 1024 * 1024


@dataclass
class Capture:
    """What one exchange carried, kept only as far as the policy allows. Filled by the pipeline."""

    keep: str = "redacted"
    request_client: bytes | None = None
    request_upstream: bytes | None = None
    response_upstream: list[bytes] = field(default_factory=list)
    response_client: list[bytes] = field(default_factory=list)
    _sizes: Counter[str] = field(default_factory=Counter)

    @property
    def keeps_original(self) -> bool:
        return self.keep == "original"

    @property
    def keeps_anything(self) -> bool:
        return self.keep != "none"

    def add(self, side: str, chunk: bytes) -> None:
        target: list[bytes] = getattr(self, side)
        if self._sizes[side] < MAX_SIDE_BYTES:
            target.append(chunk[: MAX_SIDE_BYTES - self._sizes[side]])
        self._sizes[side] += len(chunk)

    def content(self) -> dict[str, Any] | None:
        if not self.keeps_anything:
            return None

        def text(data: bytes | list[bytes] | None, side: str) -> dict[str, Any] | None:
            if data is None:
                return None
            raw = b"".join(data) if isinstance(data, list) else data
            return {
                "text": raw.decode("utf-8", "replace"),
                "bytes": self._sizes[side] or len(raw),
                "truncated": self._sizes[side] > MAX_SIDE_BYTES,
            }

        out = {
            "request_upstream": text(self.request_upstream, "request_upstream"),
            "response_upstream": text(self.response_upstream, "response_upstream"),
        }
        if self.keeps_original:
            out["request_client"] = text(self.request_client, "request_client")
            out["response_client"] = text(self.response_client, "response_client")
        return out


def new_request_id() -> str:
    return "req_" + secrets.token_hex(12)


@dataclass
class Exchange:
    route: str
    request_id: str = field(default_factory=new_request_id)
    started_wall: float = field(default_factory=time.time)
    started: float = field(default_factory=time.perf_counter)
    tenant: str = "default"
    policy: str | None = None
    model: str | None = None
    stream: bool = False
    redactions: Redactions = field(default_factory=Redactions)
    #: (entity type, action) -> occurrences, copied from the redactions when detection finishes.
    entity_counts: Counter[tuple[str, str]] = field(default_factory=Counter)
    unscanned_parts: int = 0
    placeholders_restored: int = 0
    placeholders_unresolved: int = 0
    status: int | None = None
    #: ``ok``, ``blocked``, ``detector_error``, ``upstream_error``, ``client_error``, ``client_disconnected``.
    outcome: str = "ok"
    error_code: str | None = None
    detect_seconds: float | None = None
    #: From request received to the request handed to the upstream: what the gateway adds up front.
    forwarded_seconds: float | None = None
    #: ``unreachable``, ``broken``, ``timeout_connect``, ``timeout_first_byte``, ``timeout_stream_idle``,
    #: ``broken_stream``, ``too_large``, ``status_4xx`` or ``status_5xx``.
    upstream_error: str | None = None
    upstream_first_byte_seconds: float | None = None
    first_token_seconds: float | None = None
    duration_seconds: float | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    #: The exchange's content, as far as the policy lets the transcript keep it.
    capture: Capture = field(default_factory=Capture)
    #: A whole answer's message texts as the upstream wrote them, for ``Redactor.remember_answers``.
    answer_texts: list[str] = field(default_factory=list)

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def finish(self, status: int) -> None:
        if self.status is None:
            self.status = status
        if self.duration_seconds is None:
            self.duration_seconds = self.elapsed()

    def __repr__(self) -> str:  # the default repr would print the placeholder table's values
        return f"Exchange({self.request_id}, {self.route}, status={self.status}, outcome={self.outcome})"
