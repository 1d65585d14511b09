"""The errors the gateway itself produces, and their one rendering as OpenAI-shaped JSON or an SSE event.

The tree::

    GatewayError                      500 server_error       (never carries request text)
    ├── BadRequest                    400 invalid_request_error
    │   ├── InvalidJSON               400  the body is not a JSON object
    │   ├── UnscannableContent        400  a part the detector cannot read (image, audio, file)
    │   └── PolicyBlocked             400  a finding whose action is `block`; names the type, never the value
    ├── Unauthorized                  401  a missing, unknown, revoked or expired gateway key (one message)
    ├── Forbidden                     403
    │   └── WeakerPolicy              403  a request asked for a policy weaker than its key's
    ├── RequestTimeout                408  the body did not arrive in time (slow uploads)
    ├── PayloadTooLarge               413  body, messages or characters over the limits
    ├── HeadersTooLarge               431  a header line over the limit, or too many headers
    ├── RateLimited                   429  a per-key concurrency or rate limit (Retry-After)
    ├── Overloaded                    503  the overall concurrency cap (Retry-After)
    ├── NotFound                      404  an endpoint the gateway does not scan is never forwarded
    ├── MethodNotAllowed              405
    ├── DetectionFailed               503  analysis raised: fail closed, nothing was forwarded
    │   └── DetectionTimeout          503  analysis took too long: fail closed, nothing was forwarded
    ├── TranscriptsUnavailable        503  fail_closed transcripts and the store cannot take more
    └── UpstreamError                 502  the upstream could not be reached or broke mid-answer
        └── UpstreamTimeout           504

Messages are fixed strings or name fields and entity types; they never contain a prompt's text,
a detected value or a key. That is the reason every subclass builds its own message.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import orjson


class GatewayError(Exception):
    status: ClassVar[int] = 500
    type: ClassVar[str] = "server_error"
    code: ClassVar[str | None] = "gateway_error"

    def __init__(self, message: str, *, param: str | None = None, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        #: Seconds, sent as ``Retry-After`` when set.
        self.retry_after = retry_after

    #: Anthropic's error type for the same failure.
    anthropic_type: ClassVar[str] = "api_error"

    def body(self, style: str = "openai") -> dict[str, Any]:
        if style == "anthropic":
            return {"type": "error", "error": {"type": self.anthropic_type, "message": self.message}}
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def to_json(self, style: str = "openai") -> bytes:
        return orjson.dumps(self.body(style))

    def to_sse(self, style: str = "openai", route: str = "chat.completions") -> bytes:
        """The error as one SSE event, for a stream whose headers were already sent, in the caller's shape."""
        if style == "anthropic":
            return b"event: error\ndata: " + self.to_json(style) + b"\n\n"
        if route == "responses":
            event = {"type": "error", "code": self.code, "message": self.message, "param": self.param}
            return b"event: error\ndata: " + orjson.dumps(event) + b"\n\n"
        return b"data: " + self.to_json() + b"\n\n"


class BadRequest(GatewayError):
    status = 400
    type = "invalid_request_error"
    code = "invalid_request"
    anthropic_type = "invalid_request_error"


class InvalidJSON(BadRequest):
    code = "invalid_json"


class UnscannableContent(BadRequest):
    code = "unscannable_content"


class PolicyBlocked(BadRequest):
    code = "pii_blocked"

    def __init__(self, entity_types: list[str], counts: Mapping[tuple[str, str], int] | None = None) -> None:
        names = ", ".join(sorted(set(entity_types)))
        super().__init__(f"The request was blocked by the privacy policy: it contains {names}.")
        self.entity_types = sorted(set(entity_types))
        #: (entity type, action) -> spans of every finding in the request, the blocking ones as ``block``.
        self.counts: dict[tuple[str, str], int] = (
            dict(counts) if counts is not None else {(t, "block"): 1 for t in self.entity_types}
        )


class Unauthorized(GatewayError):
    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"
    anthropic_type = "authentication_error"

    def __init__(self, message: str = "Missing or invalid gateway API key.") -> None:
        super().__init__(message)


class Forbidden(GatewayError):
    status = 403
    type = "permission_error"
    code = "forbidden"
    anthropic_type = "permission_error"


class WeakerPolicy(Forbidden):
    code = "policy_not_allowed"


class PayloadTooLarge(GatewayError):
    status = 413
    type = "invalid_request_error"
    code = "payload_too_large"
    anthropic_type = "request_too_large"


class HeadersTooLarge(GatewayError):
    status = 431
    type = "invalid_request_error"
    code = "request_header_fields_too_large"
    anthropic_type = "invalid_request_error"


class RequestTimeout(GatewayError):
    status = 408
    type = "invalid_request_error"
    code = "request_timeout"
    anthropic_type = "invalid_request_error"


class RateLimited(GatewayError):
    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"
    anthropic_type = "rate_limit_error"


class Overloaded(GatewayError):
    status = 503
    type = "server_error"
    code = "gateway_overloaded"
    anthropic_type = "overloaded_error"


class NotFound(GatewayError):
    status = 404
    type = "invalid_request_error"
    code = "unknown_url"
    anthropic_type = "not_found_error"


class MethodNotAllowed(GatewayError):
    status = 405
    type = "invalid_request_error"
    code = "method_not_allowed"
    anthropic_type = "invalid_request_error"


class DetectionFailed(GatewayError):
    status = 503
    type = "server_error"
    code = "pii_detection_failed"
    anthropic_type = "api_error"


class DetectionTimeout(DetectionFailed):
    code = "pii_detection_timeout"


class TranscriptsUnavailable(GatewayError):
    status = 503
    type = "server_error"
    code = "transcripts_unavailable"
    anthropic_type = "overloaded_error"


class UpstreamError(GatewayError):
    status = 502
    type = "server_error"
    code = "upstream_error"
    anthropic_type = "api_error"

    def __init__(self, message: str, *, reason: str = "unreachable") -> None:
        super().__init__(message)
        #: A bounded label for metrics: unreachable, broken, broken_stream, too_large, timeout_<phase>.
        self.reason = reason


class UpstreamTimeout(UpstreamError):
    status = 504
    code = "upstream_timeout"
