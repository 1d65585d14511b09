"""Known answers for every persisted format (sealed record, master key id, wrapped data key, HKDF info
strings, spool key file and spool files, version 1 and 2), tamper detection, master keys, key files that
change under a running provider, and dev-mode key generation."""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path

import pytest

from gateway.crypto import (
    HASH_ACTION_INFO,
    SPOOL_V1_INFO,
    CryptoError,
    LocalKeyProvider,
    MasterKeyMissing,
    Sealed,
    associated_data,
    data_key_aad,
    hkdf,
    key_id_of,
    load_key_provider,
    open_sealed,
    seal,
    write_key_file,
)
from gateway.spool import KEY_FILE, Spool, spool_key_aad

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


# The rest of the persisted formats, pinned the same way (values computed when each was introduced;
# the version-1 spool file was also checked against the spool code it was written by). Never edit
# one to make a test pass: add a new version and keep reading the old one.
MASTER_ID = "mk-630dcd2966c43366"
DATA_KEY = bytes(range(100, 132))
WRAPPED_DATA_KEY = bytes.fromhex(
    "000102030405060708090a0b2367b07cad8ca870e12cf9e4c1980a1ef7a3f14388022507441a9bfa9de882317e9f3093"
    "9412e621f15e5706dd184341"
)
HASH_ACTION_KEY = "212193bb73f8fb8b31393ed2f9a1fb6fd004f0b1b689eb19a065024fda414add"
SPOOL_V1_KEY = "92cca044699c88b792e9cd844fc3269cb2719da840a44623d61f3f061f155c26"
SPOOL_KEY_FILE = bytes.fromhex(
    "5047534b0113736b2d30303131323233333434353536363737136d6b2d36333064636432393636633433333636000102"
    "030405060708090a0b8fcb1cd009280cd45d904558653caeba5b0f5def2ca681a3d8860766f98ce65511915040d49d0e"
    "6b3138d092665ed585"
)
SPOOL_FILE_V2 = bytes.fromhex(
    "5047533213736b2d303031313232333334343535363637370000003d5047540113736b2d303031313232333334343535"
    "36363737000102030405060708090a0ba3030d8674b97efdab4e8eaa5eccb46d72e311338c021deb25"
)
SPOOL_FILE_V1 = bytes.fromhex(
    "50475331136d6b2d36333064636432393636633433333636"
    "0000003d50475401136d6b2d36333064636432393636633433333636000102030405060708090a0b769fb1e2cf9d18f3"
    "df59959351dbd81c583bab7d5d1b9ae7c2"
)


def test_known_answers_for_key_ids_wrapped_keys_and_hkdf_info() -> None:
    assert key_id_of(KEY) == MASTER_ID
    provider = LocalKeyProvider([KEY])
    aad = data_key_aad("acme", "dk-0011223344556677")
    # Layout: nonce (12) | AES-256-GCM(master key, data key, aad) ciphertext + tag.
    assert provider.wrap(DATA_KEY, aad, nonce=NONCE) == (MASTER_ID, WRAPPED_DATA_KEY)
    assert WRAPPED_DATA_KEY[:12] == NONCE and len(WRAPPED_DATA_KEY) == 12 + 32 + 16
    assert provider.unwrap(MASTER_ID, WRAPPED_DATA_KEY, aad) == DATA_KEY
    assert (HASH_ACTION_INFO, SPOOL_V1_INFO) == (b"pii-gateway/hash-action/v1", b"pii-gateway/spool/v1")
    assert hkdf(KEY, HASH_ACTION_INFO).hex() == HASH_ACTION_KEY  # the hash action's tokens stay stable
    assert provider.legacy_spool_key(MASTER_ID).hex() == SPOOL_V1_KEY
    assert spool_key_aad("sk-1") == b"pii-gateway/spool-key\x00sk-1"


def test_known_answers_for_the_spool_key_and_spool_files(tmp_path: Path) -> None:
    (tmp_path / KEY_FILE).write_bytes(SPOOL_KEY_FILE)
    (tmp_path / "1-v2.spool").write_bytes(SPOOL_FILE_V2)
    (tmp_path / "0-v1.spool").write_bytes(SPOOL_FILE_V1)
    spool = Spool(tmp_path, LocalKeyProvider([KEY]))
    assert spool.key_master_id == MASTER_ID
    assert [list(spool.read(path)) for path in spool.files()] == [[b'{"row":1}'], [b'{"row":1}']]
    # A torn last frame (a crash mid-write) is skipped, never half-read.
    (tmp_path / "1-v2.spool").write_bytes(SPOOL_FILE_V2 + SPOOL_FILE_V2[-70:-20])
    assert list(spool.read(tmp_path / "1-v2.spool")) == [b'{"row":1}']


def test_spool_round_trip_uses_its_own_wrapped_key_and_follows_rotation(tmp_path: Path) -> None:
    old, new = b"\x01" * 32, b"\x02" * 32
    spool = Spool(tmp_path, LocalKeyProvider([old]))
    spool.append([b"a", b"b"])
    assert spool.key_master_id == key_id_of(old)
    rotated = Spool(tmp_path, LocalKeyProvider([new, old]))
    assert rotated.rewrap_key()
    assert not rotated.rewrap_key()  # already current
    only_new = Spool(tmp_path, LocalKeyProvider([new]))
    assert [list(only_new.read(p)) for p in only_new.files()] == [[b"a", b"b"]]
    with pytest.raises(CryptoError, match="not available"):
        list(Spool(tmp_path, LocalKeyProvider([old])).read(only_new.files()[0]))


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


def test_a_key_file_provider_follows_the_file_and_drops_retired_keys(tmp_path: Path) -> None:
    old, new = b"\x01" * 32, b"\x02" * 32
    path = tmp_path / "keys"
    write_key_file(path, [old])
    provider, dev = load_key_provider(None, path, tmp_path, production=True)
    assert not dev
    kid, blob = provider.wrap(b"k", b"aad")
    assert kid == key_id_of(old)
    write_key_file(path, [new, old])
    os.utime(path, ns=(1, 1))  # a different stamp even on a coarse-clock file system
    assert provider.wrap(b"k", b"aad")[0] == key_id_of(new)  # wrap re-reads the file at once
    assert provider.unwrap(kid, blob, b"aad") == b"k"
    write_key_file(path, [new])
    os.utime(path, ns=(2, 2))
    provider.refresh(force=True)
    assert provider.key_ids() == [key_id_of(new)]
    with pytest.raises(CryptoError, match="not available"):
        provider.unwrap(kid, blob, b"aad")  # retired: dropped from memory too
    path.write_text("not base64!\n")
    os.utime(path, ns=(3, 3))
    provider.refresh(force=True)
    assert provider.current_id == key_id_of(new)  # a broken file keeps the keys loaded before
    write_key_file(path, [new])
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_commands_that_read_never_generate_a_key(tmp_path: Path) -> None:
    typo = tmp_path / "no-such-dir"
    with pytest.raises(MasterKeyMissing, match="never creates a key"):
        load_key_provider(None, None, typo, production=False, generate=False)
    assert not typo.exists()
