"""Record format known answers, tamper detection, master keys and dev-mode key generation."""

from __future__ import annotations

import base64
import stat
from pathlib import Path

import pytest

from gateway.crypto import (
    CryptoError,
    LocalKeyProvider,
    MasterKeyMissing,
    Sealed,
    associated_data,
    data_key_aad,
    key_id_of,
    load_key_provider,
    open_sealed,
    seal,
)

KEY = bytes(range(32))
NONCE = bytes(range(12))
AAD = associated_data("acme", "req_1", 1)
PLAIN = b'{"hello":"world"}'
# Pinned when format version 1 was written. If this changes, old transcripts become unreadable:
# bump RECORD_VERSION and keep a reader for version 1 instead of editing this value.
KNOWN = bytes.fromhex(
    "5047540113646b2d30303131323233333434353536363737000102030405060708090a0b"
    "3c20be7ea989ad39b763e0e4c3851c4ffe60041bc4824cec88e5466aa0ccccd530"
)


def test_known_answer_for_record_format_v1() -> None:
    assert seal(KEY, "dk-0011223344556677", PLAIN, AAD, nonce=NONCE) == KNOWN
    sealed = Sealed.from_bytes(KNOWN)
    assert (sealed.version, sealed.key_id, sealed.nonce) == (1, "dk-0011223344556677", NONCE)
    assert KNOWN[:3] == b"PGT"
    assert open_sealed(KEY, sealed, AAD) == PLAIN
    assert AAD == b"pii-gateway/transcript\x00acme\x00req_1\x001"
    assert data_key_aad("acme", "dk-1") == b"pii-gateway/data-key\x00acme\x00dk-1"


def flip(blob: bytes, index: int) -> bytes:
    return blob[:index] + bytes([blob[index] ^ 0x01]) + blob[index + 1 :]


@pytest.mark.parametrize(
    ("where", "index"),
    [("nonce", 5 + 19 + 3), ("ciphertext", 5 + 19 + 12 + 2), ("tag", len(KNOWN) - 1)],
)
def test_a_flipped_bit_fails_to_decrypt(where: str, index: int) -> None:
    with pytest.raises(CryptoError, match="failed authentication"):
        open_sealed(KEY, Sealed.from_bytes(flip(KNOWN, index)), AAD)


@pytest.mark.parametrize(
    "aad",
    [
        associated_data("other-tenant", "req_1", 1),
        associated_data("acme", "req_2", 1),
        associated_data("acme", "req_1", 2),
    ],
)
def test_a_record_moved_to_another_tenant_id_or_schema_fails(aad: bytes) -> None:
    with pytest.raises(CryptoError):
        open_sealed(KEY, Sealed.from_bytes(KNOWN), aad)


def test_corrupt_framing_is_a_clear_error() -> None:
    with pytest.raises(CryptoError, match="bad magic"):
        Sealed.from_bytes(b"XYZ" + KNOWN[3:])
    with pytest.raises(CryptoError, match="unsupported record version 9"):
        Sealed.from_bytes(KNOWN[:3] + b"\x09" + KNOWN[4:])
    with pytest.raises(CryptoError, match="truncated"):
        Sealed.from_bytes(KNOWN[:30])


def test_provider_wraps_with_current_and_unwraps_any_known_version() -> None:
    old, new = b"\x01" * 32, b"\x02" * 32
    before = LocalKeyProvider([old])
    kid, blob = before.wrap(b"data key", b"aad")
    assert kid == key_id_of(old)
    after = LocalKeyProvider([new, old])
    assert after.current_id == key_id_of(new)
    assert after.unwrap(kid, blob, b"aad") == b"data key"
    with pytest.raises(CryptoError, match="not available"):
        LocalKeyProvider([new]).unwrap(kid, blob, b"aad")
    with pytest.raises(CryptoError, match="failed authentication"):
        after.unwrap(kid, blob, b"other aad")


def test_dev_mode_generates_a_private_key_and_production_refuses(tmp_path: Path) -> None:
    provider, dev = load_key_provider(None, None, tmp_path, production=False)
    assert dev
    key_file = tmp_path / "master.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    again, _ = load_key_provider(None, None, tmp_path, production=False)
    assert again.current_id == provider.current_id
    with pytest.raises(MasterKeyMissing, match="production mode needs a master key"):
        load_key_provider(None, None, tmp_path / "other", production=True)
    env = base64.b64encode(b"\x07" * 32).decode()
    from_env, dev = load_key_provider(env, None, tmp_path, production=True)
    assert not dev
    assert from_env.current_id == key_id_of(b"\x07" * 32)
    with pytest.raises(CryptoError, match="32 bytes"):
        load_key_provider(base64.b64encode(b"short").decode(), None, tmp_path, production=True)
    with pytest.raises(MasterKeyMissing, match="cannot be read"):
        load_key_provider(None, tmp_path / "missing.key", tmp_path, production=True)
