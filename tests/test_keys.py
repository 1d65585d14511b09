"""Gateway API keys: shown once, stored hashed, revocable, expiring; and authenticate() over them."""

from __future__ import annotations

import stat
import time
from pathlib import Path

import pytest

from gateway.auth import PASSTHROUGH, authenticate
from gateway.errors import Unauthorized
from gateway.keys import KeyRing, parse_duration


def test_keys_are_stored_hashed_with_private_permissions(tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"
    ring, key = KeyRing.load(path).create("acme", "strict", "client", description="ci")
    ring.save(path)
    text = path.read_text()
    assert key not in text
    assert key.split("_", 2)[2] not in text
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    loaded = KeyRing.load(path)
    record = loaded.verify(key)
    assert record is not None
    assert (record.tenant, record.policy, record.role) == ("acme", "strict", "client")


def test_wrong_revoked_and_expired_keys_fail(tmp_path: Path) -> None:
    ring, key = KeyRing({}).create("acme", None)
    assert ring.verify(key[:-1] + ("A" if key[-1] != "A" else "B")) is None
    assert ring.verify("pgw_deadbeef_" + "x" * 43) is None
    assert ring.verify("not-a-key") is None
    record = ring.verify(key)
    assert record is not None
    assert ring.revoke(record.id).verify(key) is None
    ring2, key2 = KeyRing({}).create("acme", None, expires_in=60)
    assert ring2.verify(key2) is not None
    assert ring2.verify(key2, now=time.time() + 120) is None


def test_authenticate_rules() -> None:
    ring, key = KeyRing({}).create("acme", "strict", "admin")
    # Pass-through: no gateway key and none required.
    assert authenticate({"Authorization": "Bearer sk-provider"}, ring, keys_required=False) is PASSTHROUGH
    # Any way of presenting the key works.
    for headers in (
        {"Authorization": f"Bearer {key}"},
        {"X-Gateway-Key": key, "Authorization": "Bearer sk-provider"},
        {"api-key": key},
        {"x-api-key": key},
    ):
        principal = authenticate(headers, ring, keys_required=True)
        assert (principal.tenant, principal.policy, principal.role) == ("acme", "strict", "admin")
    # Required but missing, or presented but wrong: the same 401.
    with pytest.raises(Unauthorized) as missing:
        authenticate({"Authorization": "Bearer sk-provider"}, ring, keys_required=True)
    with pytest.raises(Unauthorized) as wrong:
        authenticate({"Authorization": "Bearer pgw_00000000_" + "A" * 43}, ring, keys_required=False)
    assert missing.value.message == wrong.value.message
    assert missing.value.status == 401


def test_parse_duration() -> None:
    assert parse_duration("30d") == 30 * 86400
    assert parse_duration("90m") == 5400
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration("soon")
