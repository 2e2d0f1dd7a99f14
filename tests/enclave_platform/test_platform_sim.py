"""The simulated TEE: its measurement, evidence format, state files and sealing."""

from __future__ import annotations

import stat
from pathlib import Path

import cbor2
import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from cipherloop.enclave.platform import Platform, load_platform
from cipherloop.enclave.platform.sim import SIM_MODULE_ID, SIM_ROOT_CN, SimPlatform, measure_package
from cipherloop.errors import KeyMaterialError

REPORT_DATA = bytes(range(64))


def _document(evidence: bytes) -> dict[str, object]:
    tagged = cbor2.loads(evidence)
    assert tagged.tag == 18
    protected, unprotected, payload, signature = tagged.value
    assert cbor2.loads(protected) == {1: -35} and unprotected == {} and len(signature) == 96
    doc = cbor2.loads(payload)
    assert isinstance(doc, dict)
    return doc


def test_measurement_is_sha384_of_the_installed_package(tmp_path: Path) -> None:
    sim = SimPlatform(tmp_path)

    assert len(sim.measurement()) == 48
    assert sim.measurement() == measure_package()


def test_measurement_changes_when_enclave_code_changes(package_copy: Path) -> None:
    before = measure_package(package_copy)
    target = package_copy / "cipherloop" / "enclave" / "platform" / "sim.py"
    target.write_text(target.read_text() + "\n# changed\n")

    assert measure_package(package_copy) != before


@pytest.mark.parametrize(
    "rel", ["cipherloop/ckks/params.py", "cipherloop/errors.py", "cipherloop/__init__.py"]
)
def test_measurement_covers_ckks_errors_and_the_package_init(package_copy: Path, rel: str) -> None:
    before = measure_package(package_copy)
    (package_copy / rel).write_text((package_copy / rel).read_text() + "\n")

    assert measure_package(package_copy) != before


def test_measurement_ignores_bytecode_caches(package_copy: Path) -> None:
    before = measure_package(package_copy)
    cache = package_copy / "cipherloop" / "enclave" / "__pycache__"
    cache.mkdir(exist_ok=True)
    (cache / "x.cpython-311.pyc").write_bytes(b"\x00" * 10)

    assert measure_package(package_copy) == before


def test_measurement_covers_dependency_versions(package_copy: Path) -> None:
    pinned = {"cbor2": "1", "cryptography": "2", "numpy": "3", "tenseal": "4"}
    bumped = pinned | {"tenseal": "5"}

    assert measure_package(package_copy, dependencies=pinned) != measure_package(
        package_copy, dependencies=bumped
    )


def test_evidence_is_a_nitro_format_document_over_the_report_data(tmp_path: Path) -> None:
    sim = SimPlatform(tmp_path)

    doc = _document(sim.evidence(REPORT_DATA))

    assert doc["module_id"] == SIM_MODULE_ID and doc["digest"] == "SHA384"
    assert doc["user_data"] == REPORT_DATA
    pcrs = doc["pcrs"]
    assert isinstance(pcrs, dict) and pcrs[0] == sim.measurement()
    assert isinstance(doc["timestamp"], int)
    assert {"certificate", "cabundle", "public_key", "nonce"} <= doc.keys()


def test_debug_evidence_shows_all_zero_pcrs_like_nitro(tmp_path: Path) -> None:
    doc = _document(SimPlatform(tmp_path, debug=True).evidence(REPORT_DATA))

    pcrs = doc["pcrs"]
    assert isinstance(pcrs, dict) and all(v == bytes(48) for v in pcrs.values())


def test_evidence_needs_64_bytes_of_report_data(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="64"):
        SimPlatform(tmp_path).evidence(b"short")


def test_state_is_created_once_with_private_permissions(tmp_path: Path) -> None:
    state = tmp_path / "state"
    first = SimPlatform(state).root_certificate_pem()
    second = SimPlatform(state).root_certificate_pem()

    assert first == second
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    files = [p for p in state.iterdir()]
    assert {p.name for p in files} >= {
        "sim-root.crt.pem", "sim-root.key.pem", "sim-leaf.crt.pem", "sim-leaf.key.pem",
        "host-secret",
    }
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in files)


def test_root_subject_says_it_is_not_a_tee(tmp_path: Path) -> None:
    root = x509.load_pem_x509_certificate(SimPlatform(tmp_path).root_certificate_pem())

    (cn,) = root.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    assert cn.value == SIM_ROOT_CN == "SIMULATED TEE ROOT - NOT A TEE"


def test_sealed_data_survives_a_restart(tmp_path: Path) -> None:
    blob = SimPlatform(tmp_path).seal(b"model key", b"aad")

    assert SimPlatform(tmp_path).unseal(blob, b"aad") == b"model key"


def test_changed_code_cannot_unseal(tmp_path: Path, package_copy: Path) -> None:
    blob = SimPlatform(tmp_path, package_root=package_copy).seal(b"model key", b"aad")
    f = package_copy / "cipherloop" / "enclave" / "platform" / "__init__.py"
    f.write_text(f.read_text() + "\n# patched by the host\n")

    with pytest.raises(KeyMaterialError):
        SimPlatform(tmp_path, package_root=package_copy).unseal(blob, b"aad")


@pytest.mark.parametrize("how", ["other host", "other measurement", "other aad", "tampered"])
def test_unseal_fails_on_any_mismatch(tmp_path: Path, how: str) -> None:
    blob = SimPlatform(tmp_path / "a").seal(b"model key", b"aad")
    platform, aad = SimPlatform(tmp_path / "a"), b"aad"
    if how == "other host":
        platform = SimPlatform(tmp_path / "b")
    elif how == "other measurement":
        platform = SimPlatform(tmp_path / "a", measurement="ab" * 48)
    elif how == "other aad":
        aad = b"aad2"
    else:
        blob = blob[:-1] + bytes([blob[-1] ^ 1])

    with pytest.raises(KeyMaterialError):
        platform.unseal(blob, aad)


def test_load_platform_builds_each_platform(tmp_path: Path) -> None:
    platforms = [
        load_platform("sim", state_dir=tmp_path),
        load_platform("sgx", attestation_dir=tmp_path / "none"),
        load_platform("nitro", device=tmp_path / "nsm"),
    ]

    assert [p.name for p in platforms] == ["sim", "sgx", "nitro"]
    assert all(isinstance(p, Platform) for p in platforms)


def test_load_platform_rejects_unknown_names() -> None:
    with pytest.raises(ValueError, match="name"):
        load_platform("tpm")
