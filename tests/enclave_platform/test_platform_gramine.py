"""The Gramine SGX platform against a fake /dev/attestation directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from cipherloop.enclave.platform.sgx_gramine import GraminePlatform
from cipherloop.errors import KeyMaterialError, PlatformUnavailable

MRENCLAVE = bytes(range(100, 132))


def _fake_quote(mrenclave: bytes = MRENCLAVE) -> bytes:
    quote = bytearray(1024)
    quote[0:2] = (3).to_bytes(2, "little")  # version 3
    quote[2:4] = (2).to_bytes(2, "little")  # ECDSA-256
    quote[112:144] = mrenclave
    return bytes(quote)


@pytest.fixture()
def attestation_dir(tmp_path: Path) -> Path:
    root = tmp_path / "attestation"
    (root / "keys").mkdir(parents=True)
    (root / "attestation_type").write_text("dcap")
    (root / "user_report_data").write_bytes(b"")
    (root / "quote").write_bytes(_fake_quote())
    (root / "my_target_info").write_bytes(MRENCLAVE + bytes(480))
    (root / "keys" / "_sgx_mrenclave").write_bytes(bytes(range(16)))
    return root


def test_evidence_writes_report_data_then_reads_the_quote(attestation_dir: Path) -> None:
    report_data = bytes(range(64))

    quote = GraminePlatform(attestation_dir).evidence(report_data)

    assert (attestation_dir / "user_report_data").read_bytes() == report_data
    assert quote == _fake_quote()


def test_measurement_is_mrenclave_from_target_info(attestation_dir: Path) -> None:
    assert GraminePlatform(attestation_dir).measurement() == MRENCLAVE


def test_measurement_falls_back_to_the_quote(attestation_dir: Path) -> None:
    (attestation_dir / "my_target_info").unlink()
    (attestation_dir / "quote").write_bytes(_fake_quote(b"\x07" * 32))

    assert GraminePlatform(attestation_dir).measurement() == b"\x07" * 32


def test_seal_round_trip_with_the_mrenclave_key(attestation_dir: Path) -> None:
    blob = GraminePlatform(attestation_dir).seal(b"model key", b"aad")

    assert GraminePlatform(attestation_dir).unseal(blob, b"aad") == b"model key"


def test_another_mrenclave_key_cannot_unseal(attestation_dir: Path) -> None:
    blob = GraminePlatform(attestation_dir).seal(b"model key", b"aad")
    (attestation_dir / "keys" / "_sgx_mrenclave").write_bytes(bytes(16))

    with pytest.raises(KeyMaterialError):
        GraminePlatform(attestation_dir).unseal(blob, b"aad")


def test_outside_gramine_everything_says_unavailable(tmp_path: Path) -> None:
    platform = GraminePlatform(tmp_path / "missing")

    with pytest.raises(PlatformUnavailable, match="gramine-sgx"):
        platform.evidence(bytes(64))
    with pytest.raises(PlatformUnavailable):
        platform.seal(b"x", b"")


def test_non_dcap_attestation_type_is_refused(attestation_dir: Path) -> None:
    (attestation_dir / "attestation_type").write_text("none")

    with pytest.raises(PlatformUnavailable, match="dcap"):
        GraminePlatform(attestation_dir).evidence(bytes(64))


def test_report_data_must_be_64_bytes(attestation_dir: Path) -> None:
    with pytest.raises(ValueError, match="64"):
        GraminePlatform(attestation_dir).evidence(bytes(32))


def test_the_manifests_fixed_command_line_starts_the_enclave() -> None:
    """``loader.argv`` is part of MRENCLAVE: it must parse, name the state dir the manifest
    mounts, and never admit the unattested hand-over."""
    import json
    import re

    from cipherloop.enclave.__main__ import parser

    template = (Path(__file__).parents[2] / "deploy" / "gramine"
                / "cipherloop-enclave.manifest.template").read_text()
    block = re.search(r"^loader\.argv = (\[.*?\])$", template, re.S | re.M)
    assert block is not None
    argv = json.loads(re.sub(r",\s*\]", "]", block.group(1)))
    assert argv[1:5] == ["-B", "-s", "-m", "cipherloop.enclave"]
    args = parser().parse_args(argv[5:])
    assert args.platform == "sgx" and not args.allow_local_provisioning
    assert f'path = "{args.state_dir}"' in template
