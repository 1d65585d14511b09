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

from .placeholders import Redactions


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
    #: ``unreachable``, ``timeout_connect``, ``timeout_first_byte``, ``timeout_stream_idle``,
    #: ``broken_stream``, ``status_4xx`` or ``status_5xx``.
    upstream_error: str | None = None
    upstream_first_byte_seconds: float | None = None
    first_token_seconds: float | None = None
    duration_seconds: float | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def finish(self, status: int) -> None:
        if self.status is None:
            self.status = status
        if self.duration_seconds is None:
            self.duration_seconds = self.elapsed()

    def __repr__(self) -> str:  # the default repr would print the placeholder table's values
        return f"Exchange({self.request_id}, {self.route}, status={self.status}, outcome={self.outcome})"
