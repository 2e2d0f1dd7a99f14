"""Intel SGX and TDX DCAP quotes, verified with ``dcap-qvl`` under a strict policy.

Runs in: owner.

``dcap-qvl`` checks the quote's signature chain (attestation key → QE report
→ PCK certificate → Intel SGX Root CA, which it pins), the CRLs, the TCB info
and QE identity signatures, and that every collateral item is valid at the
verification time. On top of that, :func:`authenticate_quote` applies
``QuotePolicy.strict``: only ``UpToDate`` unless the owner's policy names
further statuses. It then reads the enclave identity from the verified
claims: MRENCLAVE and the DEBUG attribute bit for SGX, MRTD and the TD's
DEBUG attribute for TDX.

Failures map to the specific errors of :mod:`cipherloop.errors` by the text
of ``dcap-qvl``'s ``ValueError`` (its Python binding has no error codes):
expired or not-yet-valid collateral → ``CollateralExpired``; TCB status or
platform flags refused, no TCB level matching the platform, or a revoked
platform key → ``TcbStatusRejected``; debug → ``DebugEnclaveRejected``; undecodable quote
→ ``EvidenceMalformed``; anything else (a bad signature anywhere in the
chain) → ``EvidenceSignatureInvalid``.

Collateral (TCB info, QE identity, CRLs, issuer chains) comes from Intel PCS
or a PCCS; it is signed by Intel, so the untrusted host may fetch and relay
it. It is passed as ``dcap-qvl`` JSON (``QuoteCollateralV3.to_json``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

import dcap_qvl

from ..errors import (
    AttestationError,
    CollateralExpired,
    DebugEnclaveRejected,
    EvidenceMalformed,
    EvidenceSignatureInvalid,
    TcbStatusRejected,
)
from .evidence import VerifiedEvidence
from .policy import VerifierPolicy

__all__ = ["authenticate_quote", "is_sgx_debug", "is_tdx_debug", "load_collateral"]

_SGX_DEBUG_FLAG = 0x02  # ATTRIBUTES.FLAGS bit 1
_TDX_DEBUG_FLAG = 0x01  # TDATTRIBUTES bit 0 (TUD.DEBUG)

_EXPIRED_MARKERS = ("expired", "in the future", "notvalidyet", "not valid yet")
_TCB_MARKERS = (
    "not acceptable by policy",
    "not allowed by policy",
    "no matching tcb level",
    "tcb status is invalid",
    "tcb level",
    "revoked",
)


def is_sgx_debug(attributes: bytes) -> bool:
    """Whether SGX ``ATTRIBUTES`` (16 bytes, little-endian flags first) has DEBUG set.

    Examples
    --------
    >>> is_sgx_debug(bytes.fromhex("0700000000000000e700000000000000"))
    True
    """
    return bool(attributes[:1]) and bool(attributes[0] & _SGX_DEBUG_FLAG)


def is_tdx_debug(td_attributes: bytes) -> bool:
    """Whether TDX ``TDATTRIBUTES`` (8 bytes, little-endian) has DEBUG set."""
    return bool(td_attributes[:1]) and bool(td_attributes[0] & _TDX_DEBUG_FLAG)


def load_collateral(collateral: Any) -> Any:
    """``dcap_qvl.QuoteCollateralV3`` from JSON text/bytes, a mapping, or itself.

    Raises
    ------
    EvidenceMalformed
        If the collateral cannot be parsed.
    """
    if isinstance(collateral, dcap_qvl.QuoteCollateralV3):
        return collateral
    try:
        if isinstance(collateral, Mapping):
            text = json.dumps(dict(collateral))
        elif isinstance(collateral, bytes):
            text = collateral.decode()
        elif isinstance(collateral, str):
            text = collateral
        else:
            raise TypeError
        return dcap_qvl.QuoteCollateralV3.from_json(text)
    except (ValueError, TypeError, UnicodeDecodeError):
        raise EvidenceMalformed("DCAP collateral is not valid dcap-qvl collateral JSON") from None


def _translate(message: str) -> AttestationError:
    """The specific error for a ``dcap-qvl`` failure message."""
    detail = message.removeprefix("Verification failed: ")[:300]
    low = detail.lower()
    if any(m in low for m in _EXPIRED_MARKERS):
        return CollateralExpired(f"DCAP collateral is not valid at verification time ({detail})")
    if any(m in low for m in _TCB_MARKERS):
        return TcbStatusRejected(f"platform TCB refused by policy ({detail})")
    if "debug" in low:
        return DebugEnclaveRejected("the enclave runs in debug mode")
    if "decode" in low or "unsupported" in low or "parse quote" in low:
        return EvidenceMalformed(f"DCAP quote cannot be decoded ({detail})")
    return EvidenceSignatureInvalid(f"DCAP quote does not verify ({detail})")


def _quote_policy(policy: VerifierPolicy, now: int) -> Any:
    qp = dcap_qvl.QuotePolicy.strict(now)
    for status in policy.tcb_statuses:
        if status != "UpToDate":
            qp = qp.allow_status(status)
    return (
        qp.allow_dynamic_platform(policy.allow_dynamic_platform)
        .allow_cached_keys(policy.allow_cached_keys)
        .allow_smt(policy.allow_smt)
    )


def authenticate_quote(quote: bytes, collateral: Any, policy: VerifierPolicy) -> VerifiedEvidence:
    """Verify an SGX or TDX quote against its collateral; extract its claims.

    This is the platform half of verification; use
    :func:`cipherloop.attest.verify.verify_evidence` for the whole policy.

    Parameters
    ----------
    quote : bytes
        Raw DCAP quote (SGX v3, TDX v4/v5).
    collateral : str, bytes, mapping or dcap_qvl.QuoteCollateralV3
        Collateral for this quote's platform (see :func:`load_collateral`).
    policy : VerifierPolicy
        Accepted TCB statuses, platform flags, Intel root and the time.

    Returns
    -------
    VerifiedEvidence
        ``platform`` ``"sgx"`` or ``"tdx"``; ``debug`` read from the
        attributes; ``tcb_status`` and ``advisory_ids`` from the TCB
        evaluation.

    Raises
    ------
    EvidenceMalformed, EvidenceSignatureInvalid, CollateralExpired,
    TcbStatusRejected, DebugEnclaveRejected
        See the module docs.
    """
    coll = load_collateral(collateral)
    now = int(policy.current_time())
    verifier = (
        dcap_qvl.QuoteVerifier(policy.dcap_root_der)
        if policy.dcap_root_der is not None
        else dcap_qvl.QuoteVerifier()
    )
    try:
        claims_json = verifier.verify_with_policy(
            bytes(quote), coll, now, _quote_policy(policy, now)
        ).to_json()
    except ValueError as e:
        raise _translate(str(e)) from None
    try:
        claims = json.loads(claims_json)
        status = str(claims["tcb"]["status"])
        advisories = tuple(str(a) for a in claims["tcb"].get("advisory_ids", ()))
        ((kind, report),) = claims["report"].items()
    except (KeyError, TypeError, ValueError):
        raise EvidenceMalformed("dcap-qvl returned claims in an unexpected shape") from None
    if status not in policy.tcb_statuses:  # dcap-qvl's policy said yes; say it twice
        raise TcbStatusRejected(f"platform TCB status {status} is not accepted by the policy")

    if kind == "SgxEnclave":
        platform = "sgx"
        details: tuple[tuple[str, str], ...]
        measurement = str(report["mr_enclave"])
        debug = is_sgx_debug(bytes.fromhex(report["attributes"]))
        details = (
            ("mrsigner", str(report["mr_signer"])),
            ("isv_prod_id", str(report["isv_prod_id"])),
            ("isv_svn", str(report["isv_svn"])),
        )
    elif kind.startswith("TD"):
        platform = "tdx"
        measurement = str(report["mr_td"])
        debug = is_tdx_debug(bytes.fromhex(report["td_attributes"]))
        details = tuple((f"rtmr{i}", str(report[f"rt_mr{i}"])) for i in range(4)) + (
            ("mrseam", str(report["mr_seam"])),
        )
    else:
        raise EvidenceMalformed(f"unsupported DCAP report type {kind}")
    return VerifiedEvidence(
        platform=platform,
        measurement=measurement.lower(),
        debug=debug,
        tcb_status=status,
        simulated=False,
        report_data=bytes.fromhex(report["report_data"]),
        public_key=None,
        evidence_sha256=hashlib.sha256(quote).digest(),
        issued_at=None,
        advisory_ids=advisories,
        details=details,
    )
