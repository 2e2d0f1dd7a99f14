"""The result of verifying evidence, shared by every platform verifier.

Runs in: owner.
"""

from __future__ import annotations

import sys
import warnings
from dataclasses import dataclass

__all__ = ["SimulatedEvidenceWarning", "VerifiedEvidence", "warn_simulated"]


class SimulatedEvidenceWarning(UserWarning):
    """Evidence from the simulated TEE was accepted: it is NOT a TEE and protects nothing."""


def warn_simulated(message: str, *, stacklevel: int = 1) -> None:
    """Issue a :class:`SimulatedEvidenceWarning` that the default filters show every time.

    ``warnings.warn`` shows a warning once per call site under the default
    action; a fresh registry per call makes each acceptance visible. Explicit
    ``ignore``, ``once`` or ``error`` filters still apply.
    """
    frame = sys._getframe(stacklevel + 1)
    warnings.warn_explicit(
        message,
        SimulatedEvidenceWarning,
        frame.f_code.co_filename,
        frame.f_lineno,
        module=frame.f_globals.get("__name__"),
        registry={},
        module_globals=frame.f_globals,
    )


@dataclass(frozen=True)
class VerifiedEvidence:
    """What verified evidence says about the enclave that produced it.

    Attributes
    ----------
    platform : str
        ``"nitro"``, ``"sgx"``, ``"tdx"`` or ``"sim"``.
    measurement : str
        Hex code identity: PCR0 (Nitro, sim), MRENCLAVE (SGX), MRTD (TDX).
    debug : bool
        Whether the enclave runs in debug mode (never true once the policy
        has been applied).
    tcb_status : str
        Intel TCB status for DCAP; ``"NotApplicable"`` for Nitro and the sim.
    simulated : bool
        True for the simulated TEE: **not a TEE**.
    report_data : bytes
        The 64 bytes the evidence binds (Nitro ``user_data``).
    public_key : bytes or None
        The enclave key the report data was checked to bind (set by
        ``verify_offer``); before that, a Nitro document's own
        ``public_key`` field, if any.
    evidence_sha256 : bytes
        SHA-256 of the evidence bytes, as bound into the HPKE info.
    issued_at : float or None
        Evidence timestamp (Unix seconds), where the format has one.
    advisory_ids : tuple of str
        Intel security advisories that apply to the platform (DCAP).
    details : tuple of (str, str)
        Further platform fields for display (MRSIGNER, RTMRs, module id, …).
    """

    platform: str
    measurement: str
    debug: bool
    tcb_status: str
    simulated: bool
    report_data: bytes
    public_key: bytes | None
    evidence_sha256: bytes
    issued_at: float | None = None
    advisory_ids: tuple[str, ...] = ()
    details: tuple[tuple[str, str], ...] = ()
