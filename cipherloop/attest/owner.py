"""Provision an enclave with the owner's key in one call; describe evidence in plain words.

Runs in: owner.

Transport stays out: the caller passes two callables, one that delivers the
challenge and returns the enclave's offer, one that delivers the envelope.
"""

from __future__ import annotations

import datetime as dt
import hmac
import os
from collections.abc import Callable, Mapping
from typing import Any

from ..ckks import SecretContext
from ..errors import KeyMaterialError
from .evidence import VerifiedEvidence
from .keyrelease import new_challenge, verify_offer, wrap_key
from .policy import VerifierPolicy

__all__ = ["OfferGetter", "Sender", "describe", "provision_enclave"]

#: ``offer_getter(nonce, session_id)`` returns the enclave's offer (dict or CBOR bytes).
OfferGetter = Callable[[bytes, bytes], Mapping[str, Any] | bytes]
#: ``sender(envelope)`` delivers the wrapped key to the enclave.
Sender = Callable[[bytes], None]

_PLATFORM_NAMES = {
    "nitro": "AWS Nitro Enclave",
    "sgx": "Intel SGX enclave",
    "tdx": "Intel TDX trust domain",
    "sim": "SIMULATED TEE (not a TEE)",
}


def _check_key(secret_context_bytes: bytes, key_id: str, params_digest: str) -> None:
    ctx = SecretContext.load_secret(secret_context_bytes)
    same_id = hmac.compare_digest(ctx.key_id.encode(), key_id.encode())
    same_params = hmac.compare_digest(ctx.params.digest().encode(), params_digest.encode())
    if not (same_id and same_params):
        raise KeyMaterialError("key_id or params_digest does not match the secret key")


def provision_enclave(
    offer_getter: OfferGetter,
    sender: Sender,
    secret_context_bytes: bytes,
    key_id: str,
    params_digest: str,
    policy: Mapping[str, Any],
    verifier_policy: VerifierPolicy,
    *,
    collateral: Any = None,
    rng: Callable[[int], bytes] = os.urandom,
) -> VerifiedEvidence:
    """Challenge an enclave, verify its evidence, and send it the wrapped secret key.

    Parameters
    ----------
    offer_getter : callable
        ``offer_getter(nonce, session_id)`` sends the challenge to the
        enclave and returns its offer (dict or CBOR bytes).
    sender : callable
        ``sender(envelope)`` delivers the envelope to the same enclave.
    secret_context_bytes : bytes
        ``SecretContext.export_secret()`` output.
    key_id : str
        Its key id.
    params_digest : str
        ``CkksParams.digest()`` of its parameters.
    policy : mapping
        The owner's release policy for the enclave (CBOR-serialisable).
    verifier_policy : VerifierPolicy
        What the owner accepts as a trustworthy enclave.
    collateral : optional
        DCAP collateral when the offer does not carry it.
    rng : callable, default os.urandom
        Randomness for the challenge; inject for tests only.

    Returns
    -------
    VerifiedEvidence
        What was verified; show it with :func:`describe`.

    Raises
    ------
    KeyMaterialError
        If ``key_id`` or ``params_digest`` does not match the secret key
        (checked before anything leaves the owner).
    AttestationError
        A specific subclass naming the failed check; nothing was sent.

    Warns
    -----
    SimulatedEvidenceWarning
        If the policy allows simulation and the enclave is simulated.
    """
    _check_key(secret_context_bytes, key_id, params_digest)
    challenge = new_challenge(rng=rng)
    offer = offer_getter(challenge.nonce, challenge.session_id)
    verified = verify_offer(offer, challenge, verifier_policy, collateral=collateral)
    envelope = wrap_key(
        verified,
        secret_context_bytes,
        key_id,
        params_digest,
        policy,
        challenge.nonce,
        challenge.session_id,
    )
    sender(envelope)
    return verified


def describe(verified: VerifiedEvidence) -> list[tuple[str, str]]:
    """Verified evidence as (label, value) rows in plain words, for printing.

    Examples
    --------
    >>> v = VerifiedEvidence("sim", "ab" * 48, False, "NotApplicable", True, b"", None, b"\\0" * 32)
    >>> dict(describe(v))["simulated"]
    'YES - NOT A TEE: the host can read the key'
    """
    rows = [
        ("platform", _PLATFORM_NAMES.get(verified.platform, verified.platform)),
        ("measurement", verified.measurement),
        ("debug", "ON - host can read enclave memory" if verified.debug else "off"),
        (
            "TCB status",
            "not reported by this platform"
            if verified.tcb_status == "NotApplicable"
            else verified.tcb_status,
        ),
        (
            "simulated",
            "YES - NOT A TEE: the host can read the key" if verified.simulated else "no",
        ),
    ]
    if verified.advisory_ids:
        rows.append(("advisories", ", ".join(verified.advisory_ids)))
    if verified.issued_at is not None:
        when = dt.datetime.fromtimestamp(verified.issued_at, tz=dt.UTC)
        rows.append(("issued at", when.isoformat(timespec="seconds")))
    if verified.public_key is not None:
        rows.append(("enclave key", verified.public_key.hex()))
    rows.append(("evidence SHA-256", verified.evidence_sha256.hex()))
    rows.extend(verified.details)
    return rows
