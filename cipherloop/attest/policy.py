"""The owner's verification policy: which enclaves, on which platforms, may get the key.

Runs in: owner.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass

__all__ = ["TCB_STATUSES", "VerifierPolicy"]

#: TCB statuses Intel reports; ``Revoked`` is never acceptable and not listed.
TCB_STATUSES = frozenset(
    {
        "UpToDate",
        "SWHardeningNeeded",
        "ConfigurationNeeded",
        "ConfigurationAndSWHardeningNeeded",
        "OutOfDate",
        "OutOfDateConfigurationNeeded",
        "TDRelaunchAdvised",
        "TDRelaunchAdvisedConfigurationNeeded",
    }
)


class _InvalidPolicy(ValueError, TypeError):
    """A policy setting has the wrong type or value (both ValueError and TypeError)."""


def _normalise_hex(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise _InvalidPolicy(f"{what} must hold hex strings")
    text = value.strip().lower()
    try:
        bytes.fromhex(text)
    except ValueError:
        raise _InvalidPolicy(f"{what} must hold hex strings") from None
    if not text:
        raise _InvalidPolicy(f"{what} must not hold empty strings")
    return text


@dataclass(frozen=True, kw_only=True)
class VerifierPolicy:
    """What the owner accepts as a trustworthy enclave.

    Every check is strict by default; each relaxation is a named setting.

    Parameters
    ----------
    measurements : collection of str
        Allowlist of enclave measurements, hex: PCR0 for Nitro (and the sim),
        MRENCLAVE for SGX, MRTD for TDX. Empty accepts nothing.
    tcb_statuses : collection of str, default ("UpToDate",)
        DCAP platform TCB statuses accepted (see :data:`TCB_STATUSES`).
    allow_simulated : bool, default False
        Accept the simulated TEE (development only). Even then its root must
        be pinned, every acceptance warns, and the result says
        ``simulated=True``.
    pinned_roots : sequence of bytes, default ()
        Extra trusted roots for COSE-signed (Nitro-format) evidence, PEM or
        DER, besides the built-in AWS Nitro root; e.g. the sim root.
    dcap_root_der : bytes, optional
        Intel SGX root CA (DER) for DCAP; default: the one dcap-qvl pins.
    max_evidence_age : float, default 300
        Oldest acceptable evidence timestamp, seconds (Nitro-format evidence;
        DCAP quotes carry no time and rely on the nonce alone).
    max_clock_skew : float, default 60
        How far in the future an evidence timestamp may lie, seconds.
    allow_dynamic_platform, allow_cached_keys, allow_smt : bool, default True
        DCAP platform-configuration flags from the PCK certificate
        (multi-package platforms, cached platform keys, hyper-threading).
        Typical cloud servers set all three; turn off to refuse them.
    now : float, optional
        Verification time (Unix seconds) to use instead of the clock; pins
        time for tests and for re-verifying archived evidence.

    Raises
    ------
    ValueError, TypeError
        (one exception type that is both) if a setting is malformed; the
        message names the setting.

    Examples
    --------
    >>> p = VerifierPolicy(measurements={"AB" * 48})
    >>> sorted(p.measurements)[0][:4], p.tcb_statuses
    ('abab', ('UpToDate',))
    """

    measurements: Collection[str] = frozenset()
    tcb_statuses: Collection[str] = ("UpToDate",)
    allow_simulated: bool = False
    pinned_roots: Sequence[bytes] = ()
    dcap_root_der: bytes | None = None
    max_evidence_age: float = 300.0
    max_clock_skew: float = 60.0
    allow_dynamic_platform: bool = True
    allow_cached_keys: bool = True
    allow_smt: bool = True
    now: float | None = None

    def __post_init__(self) -> None:
        if isinstance(self.measurements, str | bytes):
            raise _InvalidPolicy("measurements must be a collection of hex strings")
        normalised = frozenset(_normalise_hex(m, "measurements") for m in self.measurements)
        object.__setattr__(self, "measurements", normalised)
        if isinstance(self.tcb_statuses, str | bytes):
            raise _InvalidPolicy("tcb_statuses must be a collection of status names")
        statuses = tuple(self.tcb_statuses)
        if any(s not in TCB_STATUSES for s in statuses):
            raise _InvalidPolicy("tcb_statuses holds an unknown or never-acceptable status")
        object.__setattr__(self, "tcb_statuses", statuses)
        if isinstance(self.pinned_roots, bytes) or not all(
            isinstance(r, bytes) for r in self.pinned_roots
        ):
            raise _InvalidPolicy("pinned_roots must be a sequence of PEM or DER bytes")
        object.__setattr__(self, "pinned_roots", tuple(self.pinned_roots))
        for name in ("allow_simulated", "allow_dynamic_platform", "allow_cached_keys", "allow_smt"):
            if not isinstance(getattr(self, name), bool):
                raise _InvalidPolicy(f"{name} must be a bool")
        for name in ("max_evidence_age", "max_clock_skew"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise _InvalidPolicy(f"{name} must be a non-negative number of seconds")
        if self.now is not None and (
            isinstance(self.now, bool) or not isinstance(self.now, int | float)
        ):
            raise _InvalidPolicy("now must be Unix seconds or None")
        if self.dcap_root_der is not None and not isinstance(self.dcap_root_der, bytes):
            raise _InvalidPolicy("dcap_root_der must be DER bytes or None")

    def current_time(self) -> float:
        """The verification time: ``now`` if pinned, else the wall clock."""
        return float(self.now) if self.now is not None else time.time()
