"""Sealed storage of the provisioned key: survives restarts, not code changes."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import cbor2
import pytest

from cipherloop.ckks import SecretContext
from cipherloop.enclave import provision
from cipherloop.enclave.platform.sim import SimPlatform
from cipherloop.errors import KeyMaterialError


def _provisioned(key: SecretContext) -> provision.ProvisionedKey:
    return provision.ProvisionedKey(
        key.export_secret(), key.key_id, key.params.digest(), {"release": []}
    )


def test_sealed_key_survives_a_restart(tmp_path: Path, small_key: SecretContext) -> None:
    path = tmp_path / "keys" / "sealed.key"
    provision.store_sealed(SimPlatform(tmp_path / "state"), path, _provisioned(small_key))

    restarted = SimPlatform(tmp_path / "state")  # new process: new object, same state dir
    loaded = provision.load_sealed(restarted, path)

    assert loaded.secret_key_bytes == small_key.export_secret()
    assert (loaded.key_id, loaded.params_digest, loaded.policy) == (
        small_key.key_id,
        small_key.params.digest(),
        {"release": []},
    )


def test_sealed_key_cannot_be_unsealed_after_the_code_changes(
    tmp_path: Path, package_copy: Path, small_key: SecretContext
) -> None:
    path = tmp_path / "sealed.key"
    state = tmp_path / "state"
    provision.store_sealed(
        SimPlatform(state, package_root=package_copy), path, _provisioned(small_key)
    )
    api = package_copy / "cipherloop" / "enclave" / "provision.py"
    api.write_text(api.read_text() + "\nLEAK = True\n")

    with pytest.raises(KeyMaterialError):
        provision.load_sealed(SimPlatform(state, package_root=package_copy), path)


def test_sealed_key_cannot_be_unsealed_under_another_measurement(
    tmp_path: Path, small_key: SecretContext
) -> None:
    path = tmp_path / "sealed.key"
    provision.store_sealed(SimPlatform(tmp_path), path, _provisioned(small_key))

    with pytest.raises(KeyMaterialError):
        provision.load_sealed(SimPlatform(tmp_path, measurement=bytes(48)), path)


def test_sealed_file_is_private_and_opaque(tmp_path: Path, small_key: SecretContext) -> None:
    path = tmp_path / "sealed.key"
    provision.store_sealed(SimPlatform(tmp_path), path, _provisioned(small_key))

    data = path.read_bytes()
    secret = small_key.export_secret()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert secret[len(secret) // 2 : len(secret) // 2 + 32] not in data
    assert cbor2.loads(data)["format"] == "cipherloop-sealed-key/v2"


@pytest.mark.parametrize("change", ["format", "platform", "blob"])
def test_altered_sealed_file_is_refused(
    tmp_path: Path, small_key: SecretContext, change: str
) -> None:
    path = tmp_path / "sealed.key"
    sim = SimPlatform(tmp_path)
    provision.store_sealed(sim, path, _provisioned(small_key))
    doc = cbor2.loads(path.read_bytes())
    if change == "format":
        doc["format"] = "cipherloop-sealed-key/v1"  # an older format, not this one
    elif change == "platform":
        doc["platform"] = "sgx"
    else:
        doc["blob"] = doc["blob"][:-1] + bytes([doc["blob"][-1] ^ 1])
    path.write_bytes(cbor2.dumps(doc))

    with pytest.raises(KeyMaterialError, match="cannot be opened"):
        provision.load_sealed(sim, path)


def test_missing_sealed_file_says_so(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        provision.load_sealed(SimPlatform(tmp_path), tmp_path / "nothing")


def test_provisioned_key_repr_hides_the_key(small_key: SecretContext) -> None:
    key = _provisioned(small_key)

    assert "secret_key_bytes" not in repr(key)
    assert small_key.key_id in repr(key)


def test_begin_checks_challenge_lengths(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="nonce"):
        provision.begin(SimPlatform(tmp_path), b"short", bytes(16))
    with pytest.raises(ValueError, match="session_id"):
        provision.begin(SimPlatform(tmp_path), bytes(32), b"short")


def test_sealing_makes_missing_directories_owner_only(tmp_path: Path, small_key: SecretContext) -> None:
    path = tmp_path / "a" / "b" / "sealed.key"
    provision.store_sealed(SimPlatform(tmp_path / "state"), path, _provisioned(small_key))
    assert path.is_file()
    # Only the directory that holds the key is made owner-only (Path.mkdir gives missing
    # parents the default mode, like mkdir -p).
    assert stat.S_IMODE((tmp_path / "a" / "b").stat().st_mode) == 0o700


def test_a_failed_write_leaves_no_temporary_file(tmp_path: Path, small_key: SecretContext) -> None:
    path = tmp_path / "keys" / "sealed.key"
    path.mkdir(parents=True)  # a directory where the file should go: the final rename fails
    with pytest.raises(OSError):
        provision.store_sealed(SimPlatform(tmp_path / "state"), path, _provisioned(small_key))
    assert [p.name for p in path.parent.iterdir()] == ["sealed.key"]


@pytest.mark.parametrize("label", ["cipherloop-sealed-key/v3", "cipherloop-sealed-key/v1", "a", "z"])
def test_a_sealed_file_under_another_format_label_is_refused(
    tmp_path: Path, small_key: SecretContext, label: str
) -> None:
    path = tmp_path / "sealed.key"
    sim = SimPlatform(tmp_path)
    provision.store_sealed(sim, path, _provisioned(small_key))
    doc = cbor2.loads(path.read_bytes())
    doc["format"] = label  # the blob itself is intact
    path.write_bytes(cbor2.dumps(doc))
    with pytest.raises(KeyMaterialError, match="cannot be opened"):
        provision.load_sealed(sim, path)


def test_a_stale_temporary_file_is_overwritten_not_appended_to(tmp_path: Path,
                                                             small_key: SecretContext) -> None:
    path = tmp_path / "sealed.key"
    sim = SimPlatform(tmp_path)
    stale = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    stale.write_bytes(b"\xff" * 10_000_000)  # left by a crash: longer than the new file
    provision.store_sealed(sim, path, _provisioned(small_key))
    assert provision.load_sealed(sim, path).key_id == small_key.key_id
    assert not stale.exists()
    fresh = tmp_path / "fresh" / "sealed.key"
    provision.store_sealed(sim, fresh, _provisioned(small_key))
    assert path.stat().st_size == fresh.stat().st_size  # no stale tail after the CBOR document


def test_a_write_that_fails_before_the_file_exists_raises_its_own_error(
    tmp_path: Path, small_key: SecretContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*args: object, **kw: object) -> int:
        raise PermissionError("no")

    sim = SimPlatform(tmp_path)
    provision.store_sealed(sim, tmp_path / "first.key", _provisioned(small_key))  # sim state made
    monkeypatch.setattr(provision.os, "open", refuse)
    with pytest.raises(PermissionError) as info:
        provision.store_sealed(sim, tmp_path / "sealed.key", _provisioned(small_key))
    assert info.value.__context__ is None  # no second error from cleaning up a file never made


@pytest.mark.parametrize("platform", ["zzz", "sim2", "a", ""])
def test_a_sealed_file_relabelled_to_another_platform_is_refused(
    tmp_path: Path, small_key: SecretContext, platform: str
) -> None:
    path = tmp_path / "sealed.key"
    sim = SimPlatform(tmp_path)
    provision.store_sealed(sim, path, _provisioned(small_key))
    doc = cbor2.loads(path.read_bytes())
    doc["platform"] = platform  # the blob itself is intact and sealed to this platform
    path.write_bytes(cbor2.dumps(doc))
    with pytest.raises(KeyMaterialError, match="cannot be opened"):
        provision.load_sealed(sim, path)


@pytest.mark.parametrize(("nonce", "session_id", "match"), [
    (bytes(31), bytes(16), "nonce"),
    (bytes(33), bytes(16), "nonce"),
    ("x" * 32, bytes(16), "nonce"),
    (bytes(32), bytes(15), "session_id"),
    (bytes(32), bytes(17), "session_id"),
    (bytes(32), "x" * 16, "session_id"),
])
def test_begin_wants_exact_challenge_lengths(tmp_path: Path, nonce: bytes, session_id: bytes,
                                             match: str) -> None:
    with pytest.raises(ValueError, match=match):
        provision.begin(SimPlatform(tmp_path), nonce, session_id)
