"""The Nitro platform without Nitro hardware: clear errors, KMS sealing seam, vsock addresses."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from pathlib import Path

import pytest

from cipherloop.enclave.platform import nitro
from cipherloop.enclave.platform.nitro import (
    NitroPlatform,
    NitroUnavailable,
    connect_vsock,
    listen_vsock,
    parse_vsock_address,
)
from cipherloop.errors import AttestationError, KeyMaterialError, PlatformUnavailable


class FakeKms:
    """In-memory stand-in for KMS data keys (no attestation, no network)."""

    def __init__(self) -> None:
        self.keys: dict[bytes, bytes] = {}

    def new_data_key(self, attest: Callable[[bytes], bytes]) -> tuple[bytes, bytes]:
        key, handle = os.urandom(32), os.urandom(16)
        self.keys[handle] = key
        return key, handle

    def open_data_key(self, wrapped: bytes, attest: Callable[[bytes], bytes]) -> bytes:
        return self.keys[wrapped]


def test_without_the_nsm_device_evidence_is_unavailable(tmp_path: Path) -> None:
    platform = NitroPlatform(device=tmp_path / "nsm")

    with pytest.raises(NitroUnavailable, match="only inside a Nitro enclave"):
        platform.evidence(bytes(64))
    with pytest.raises(NitroUnavailable):
        platform.measurement()


def test_nitro_unavailable_is_an_attestation_error() -> None:
    assert issubclass(NitroUnavailable, PlatformUnavailable)
    assert issubclass(NitroUnavailable, AttestationError)


def test_sealing_without_kms_says_kms_is_required(tmp_path: Path) -> None:
    with pytest.raises(NitroUnavailable, match="requires AWS KMS"):
        NitroPlatform(device=tmp_path / "nsm").seal(b"x", b"aad")


def test_sealing_through_a_kms_sealer_round_trips(tmp_path: Path) -> None:
    kms = FakeKms()
    blob = NitroPlatform(device=tmp_path / "nsm", kms=kms).seal(b"model key", b"aad")

    assert NitroPlatform(device=tmp_path / "nsm", kms=kms).unseal(blob, b"aad") == b"model key"
    with pytest.raises(KeyMaterialError):
        NitroPlatform(device=tmp_path / "nsm", kms=kms).unseal(blob, b"other aad")


def test_report_data_must_be_64_bytes(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="64"):
        NitroPlatform(device=tmp_path / "nsm").evidence(b"x")


def test_nsm_ioctl_number_is_iowr_0x0a_0_nsm_raw() -> None:
    assert nitro._NSM_IOCTL_RAW == 0xC0200A00


def test_nsm_requests_and_errors_are_decoded() -> None:
    assert nitro._attestation_request(b"rd") == {
        "Attestation": {"user_data": b"rd", "nonce": None, "public_key": None}
    }
    doc = {"Attestation": {"document": b"cose"}}
    assert nitro._response_field(doc, "Attestation", "document") == b"cose"
    with pytest.raises(NitroUnavailable, match="InvalidIndex"):
        nitro._response_field({"Error": "InvalidIndex"}, "DescribePCR", "data")


@pytest.mark.parametrize(
    ("address", "expected"),
    [("vsock:3:8000", (3, 8000)), ("vsock:16:5005", (16, 5005)), ("vsock:any:1", (0xFFFFFFFF, 1))],
)
def test_vsock_addresses_parse(address: str, expected: tuple[int, int]) -> None:
    assert parse_vsock_address(address) == expected


@pytest.mark.parametrize("address", ["vsock:3", "tcp:3:80", "vsock:x:80", "vsock:3:-1"])
def test_malformed_vsock_addresses_are_refused(address: str) -> None:
    with pytest.raises(ValueError, match="address"):
        parse_vsock_address(address)


def test_vsock_without_os_support_is_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(socket, "AF_VSOCK", raising=False)

    with pytest.raises(NitroUnavailable, match="AF_VSOCK"):
        connect_vsock("vsock:3:8000")
    with pytest.raises(NitroUnavailable, match="AF_VSOCK"):
        listen_vsock("vsock:any:8000")
