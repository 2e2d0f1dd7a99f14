"""Real Intel SGX and TDX DCAP quotes, verified with dcap-qvl under the owner's policy."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from cipherloop.attest import VerifierPolicy, verify_evidence
from cipherloop.attest.dcap import _translate, is_sgx_debug, is_tdx_debug
from cipherloop.attest.verify import evidence_kind
from cipherloop.errors import (
    CollateralExpired,
    DebugEnclaveRejected,
    EvidenceMalformed,
    EvidenceSignatureInvalid,
    MeasurementNotAllowed,
    TcbStatusRejected,
)

SGX_MRENCLAVE = "33d8736db756ed4997e04ba358d27833188f1932ff7b1d156904d3f560452fbb"
TDX_MRTD = (
    "91eb2b44d141d4ece09f0c75c2c53d247a3c68edd7fafe8a3520c942a604a407"
    "de03ae6dc5f87f27428b2538873118b7"
)


def _at(iso: str) -> float:
    return dt.datetime.fromisoformat(iso).timestamp()


# Inside every collateral item's window: TCB info, QE identity and PCK CRL run
# 2025-06-19 .. 2025-07-19, the root CA CRL 2025-03-20 .. 2026-04-03.
SAMPLES_VALID_AT = _at("2025-07-01T00:00:00+00:00")
# The outdated sample's collateral runs 2026-02-18 .. 2026-03-20.
OUTDATED_VALID_AT = _at("2026-03-01T00:00:00+00:00")

SGX_STATUS = "ConfigurationAndSWHardeningNeeded"


def _sample(dcap_dir: Path, name: str) -> tuple[bytes, str]:
    return (dcap_dir / name).read_bytes(), (dcap_dir / f"{name}_collateral.json").read_text()


def _policy(**kw: object) -> VerifierPolicy:
    base: dict[str, object] = {"measurements": {SGX_MRENCLAVE, TDX_MRTD}, "now": SAMPLES_VALID_AT}
    base.update(kw)
    return VerifierPolicy(**base)  # type: ignore[arg-type]


def test_tdx_quote_verifies_under_the_strict_policy_at_a_pinned_time(dcap_dir: Path) -> None:
    quote, collateral = _sample(dcap_dir, "tdx_quote")

    v = verify_evidence(quote, _policy(), collateral=collateral)

    assert (v.platform, v.measurement, v.tcb_status) == ("tdx", TDX_MRTD, "UpToDate")
    assert not v.debug and not v.simulated
    assert len(v.report_data) == 64


def test_sgx_quote_verifies_when_the_policy_names_its_tcb_status(dcap_dir: Path) -> None:
    quote, collateral = _sample(dcap_dir, "sgx_quote")
    policy = _policy(tcb_statuses=("UpToDate", SGX_STATUS))

    v = verify_evidence(quote, policy, collateral=collateral)

    assert (v.platform, v.measurement, v.tcb_status) == ("sgx", SGX_MRENCLAVE, SGX_STATUS)
    assert v.advisory_ids == ("INTEL-SA-00289", "INTEL-SA-00615")
    assert v.report_data.startswith(b"Hello, world!") and not v.debug


def test_sgx_quote_with_a_non_uptodate_platform_fails_the_strict_policy(dcap_dir: Path) -> None:
    quote, collateral = _sample(dcap_dir, "sgx_quote")

    with pytest.raises(TcbStatusRejected, match=SGX_STATUS):
        verify_evidence(quote, _policy(), collateral=collateral)


@pytest.mark.parametrize("name", ["sgx_quote", "tdx_quote"])
def test_quotes_fail_as_expired_at_the_current_time(dcap_dir: Path, name: str) -> None:
    quote, collateral = _sample(dcap_dir, name)
    policy = _policy(now=None, tcb_statuses=("UpToDate", SGX_STATUS))

    with pytest.raises(CollateralExpired):
        verify_evidence(quote, policy, collateral=collateral)


def test_quote_fails_before_its_collateral_was_issued(dcap_dir: Path) -> None:
    quote, collateral = _sample(dcap_dir, "tdx_quote")

    with pytest.raises(CollateralExpired):
        verify_evidence(quote, _policy(now=_at("2025-05-01T00:00:00+00:00")), collateral=collateral)


# Offsets inside the signed body: header (0..48) and report, including its report data.
@pytest.mark.parametrize("offset", [10, 48 + 20, 48 + 64, 48 + 320, 48 + 370])
@pytest.mark.parametrize("name", ["sgx_quote", "tdx_quote"])
def test_one_flipped_byte_in_the_signed_body_fails(dcap_dir: Path, name: str, offset: int) -> None:
    quote, collateral = _sample(dcap_dir, name)
    tampered = bytearray(quote)
    tampered[offset] ^= 0x01
    policy = _policy(tcb_statuses=("UpToDate", SGX_STATUS))

    with pytest.raises(EvidenceSignatureInvalid):
        verify_evidence(bytes(tampered), policy, collateral=collateral)


def test_flipped_report_data_byte_is_a_signature_failure(dcap_dir: Path) -> None:
    quote, collateral = _sample(dcap_dir, "tdx_quote")
    tampered = bytearray(quote)
    tampered[48 + 520] ^= 0x01  # TDX REPORTDATA starts at 48 + 520

    with pytest.raises(EvidenceSignatureInvalid):
        verify_evidence(bytes(tampered), _policy(), collateral=collateral)


def test_outdated_tdx_quote_is_rejected_by_the_strict_policy(dcap_dir: Path) -> None:
    quote, collateral = _sample(dcap_dir, "tdx_quote_outdated")

    with pytest.raises(TcbStatusRejected):
        verify_evidence(quote, _policy(now=OUTDATED_VALID_AT), collateral=collateral)


def test_outdated_tdx_quote_stays_rejected_even_when_out_of_date_is_allowed(
    dcap_dir: Path,
) -> None:
    # This platform's CPU SVN lies below every TCB level of its collateral, so
    # dcap-qvl finds no level at all ("No matching TCB level found"): there is
    # no status a policy could name to accept it.
    quote, collateral = _sample(dcap_dir, "tdx_quote_outdated")
    lenient = _policy(now=OUTDATED_VALID_AT, tcb_statuses=("UpToDate", "OutOfDate"))

    with pytest.raises(TcbStatusRejected, match="No matching TCB level"):
        verify_evidence(quote, lenient, collateral=collateral)


def test_dcap_measurement_must_be_on_the_allowlist(dcap_dir: Path) -> None:
    quote, collateral = _sample(dcap_dir, "tdx_quote")

    with pytest.raises(MeasurementNotAllowed):
        verify_evidence(quote, _policy(measurements={SGX_MRENCLAVE}), collateral=collateral)


def test_dcap_quote_without_collateral_is_refused(dcap_dir: Path) -> None:
    quote, _ = _sample(dcap_dir, "tdx_quote")

    with pytest.raises(EvidenceMalformed, match="collateral"):
        verify_evidence(quote, _policy())


def test_quotes_are_recognised_as_dcap(dcap_dir: Path) -> None:
    for name in ("sgx_quote", "tdx_quote", "tdx_quote_outdated"):
        assert evidence_kind((dcap_dir / name).read_bytes()) == "dcap"


def test_debug_attribute_bits() -> None:
    # The SGX sample's ATTRIBUTES (INIT | MODE64BIT) and the same with DEBUG set.
    assert not is_sgx_debug(bytes.fromhex("0500000000000000e700000000000000"))
    assert is_sgx_debug(bytes.fromhex("0700000000000000e700000000000000"))
    # The TDX sample's TDATTRIBUTES (SEPT_VE_DISABLE only) and with TUD.DEBUG set.
    assert not is_tdx_debug(bytes.fromhex("0000001000000000"))
    assert is_tdx_debug(bytes.fromhex("0100001000000000"))


@pytest.mark.parametrize(
    ("message", "error"),
    [
        ("Verification failed: TCBInfo expired", CollateralExpired),
        ("Verification failed: QE Identity issue date is in the future", CollateralExpired),
        ("Verification failed: CrlExpired { time: .., next_update: .. }", CollateralExpired),
        ("Verification failed: TCB status OutOfDate is not acceptable by policy", TcbStatusRejected),
        ("Verification failed: Dynamic platform is not allowed by policy", TcbStatusRejected),
        ("Verification failed: TCB status is invalid: Revoked", TcbStatusRejected),
        ("Verification failed: Debug mode is enabled", DebugEnclaveRejected),
        ("Failed to decode quote", EvidenceMalformed),
        ("Verification failed: ISV enclave report signature is invalid", EvidenceSignatureInvalid),
    ],
)
def test_dcap_qvl_failures_map_to_specific_errors(message: str, error: type) -> None:
    translated = _translate(message)

    assert type(translated) is error
