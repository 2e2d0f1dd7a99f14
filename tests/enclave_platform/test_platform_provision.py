"""Sealed storage of the provisioned key: survives restarts, not code changes."""

from __future__ import annotations

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
