"""authenticate(): who is calling, as a Principal. The one place credentials are checked.

A gateway key may come as ``Authorization: Bearer pgw_...``, ``X-Gateway-Key``, or in the ``api-key``
(Azure) or ``x-api-key`` (Anthropic) header. Rules:

- A presented gateway key must be valid (known, not revoked, not expired), else 401.
- Without one, the request is in *pass-through* mode (the client's own provider key goes upstream)
  only while the gateway holds no upstream key of its own and ``auth.require_keys`` is off. Once the
  gateway has an upstream key, every request needs a gateway key: 401 otherwise.

Every failure is the same OpenAI-shaped 401 with a fixed message; nothing says which part was wrong.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from .errors import Forbidden, Unauthorized
from .keys import KeyRing, Role

GATEWAY_KEY_PREFIX = "pgw_"
KEY_HEADERS = ("X-Gateway-Key", "api-key", "x-api-key")


@dataclass(frozen=True)
class Principal:
    tenant: str
    role: Role
    #: The policy bound to the key; None in pass-through mode (the default policy applies).
    policy: str | None
    key_id: str | None = None

    @property
    def passthrough(self) -> bool:
        return self.key_id is None


PASSTHROUGH = Principal(tenant="default", role="client", policy=None)


def presented_key(headers: Mapping[str, str]) -> str | None:
    authorization = headers.get("Authorization", "")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() == "bearer" and token.strip().startswith(GATEWAY_KEY_PREFIX):
        return token.strip()
    for name in KEY_HEADERS:
        value = headers.get(name, "").strip()
        if value.startswith(GATEWAY_KEY_PREFIX):
            return value
    return None


def authenticate(headers: Mapping[str, str], keys: KeyRing, *, keys_required: bool) -> Principal:
    key = presented_key(headers)
    if key is None:
        if keys_required:
            raise Unauthorized()
        return PASSTHROUGH
    record = keys.verify(key)
    if record is None:
        raise Unauthorized()
    return Principal(tenant=record.tenant, role=record.role, policy=record.policy, key_id=record.id)


def require_admin(principal: Principal) -> None:
    if principal.passthrough:
        raise Unauthorized()
    if principal.role != "admin":
        raise Forbidden("This endpoint needs an admin key.")
