"""Key release, the owner's half: challenge, check the binding, HPKE-wrap the key.

Runs in: owner.

Protocol ``cipherloop-prov/v1``; the enclave's half is
:mod:`cipherloop.enclave.provision` and the two must agree byte for byte
(the import rule keeps them in separate packages, a test keeps them equal):

* report data = ``SHA-512("cipherloop-prov/v1" ‖ enclave X25519 public key
  (32) ‖ nonce (32) ‖ session id (16))``;
* HPKE (RFC 9180, ``cryptography``'s implementation), base mode,
  DHKEM(X25519, HKDF-SHA256) / HKDF-SHA256 / AES-256-GCM, with
  ``info = "cipherloop-prov/v1" ‖ SHA-256(evidence) ‖ nonce ‖ session id``;
* plaintext = CBOR ``{"secret_key", "key_id", "params_digest", "policy"}``;
* envelope = CBOR ``{"format": "cipherloop-prov/v1", "hpke": enc ‖ ct}``.

A :class:`Challenge` answers exactly one offer: :func:`verify_offer` spends
it before it looks at the offer, so a replayed or retried offer needs a new
challenge, and an offer for another session is refused.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import cbor2
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey
from cryptography.hazmat.primitives.hpke import AEAD, KDF, KEM, Suite

from ..errors import EvidenceMalformed, ReplayedChallenge, ReportDataMismatch
from .evidence import VerifiedEvidence
from .policy import VerifierPolicy
from .verify import verify_evidence

__all__ = [
    "NONCE_BYTES",
    "PROTOCOL",
    "SESSION_ID_BYTES",
    "Challenge",
    "EnclaveOffer",
    "expected_report_data",
    "hpke_info",
    "new_challenge",
    "parse_offer",
    "verify_offer",
    "wrap_key",
]

PROTOCOL = b"cipherloop-prov/v1"
NONCE_BYTES = 32
SESSION_ID_BYTES = 16
PUBLIC_KEY_BYTES = 32

_ENVELOPE_FORMAT = "cipherloop-prov/v1"
_SUITE = Suite(KEM.X25519, KDF.HKDF_SHA256, AEAD.AES_256_GCM)


def expected_report_data(public_key: bytes, nonce: bytes, session_id: bytes) -> bytes:
    """The 64 bytes the enclave's evidence must carry for this key and challenge."""
    return hashlib.sha512(PROTOCOL + public_key + nonce + session_id).digest()


def hpke_info(evidence_sha256: bytes, nonce: bytes, session_id: bytes) -> bytes:
    """HPKE ``info``: protocol ‖ SHA-256(evidence) ‖ nonce ‖ session id."""
    return PROTOCOL + evidence_sha256 + nonce + session_id


class Challenge:
    """A fresh nonce and session id that may answer one offer only.

    Create with :func:`new_challenge`. The nonce is not secret, but it must
    never be reused: :func:`verify_offer` spends the challenge.

    Attributes
    ----------
    nonce : bytes
        32 bytes.
    session_id : bytes
        16 bytes.
    used : bool
        Whether an offer has already been checked against it.
    """

    __slots__ = ("_used", "nonce", "session_id")

    def __init__(self, nonce: bytes, session_id: bytes) -> None:
        if not isinstance(nonce, bytes) or len(nonce) != NONCE_BYTES:
            raise ValueError("nonce must be 32 bytes")
        if not isinstance(session_id, bytes) or len(session_id) != SESSION_ID_BYTES:
            raise ValueError("session_id must be 16 bytes")
        self.nonce = nonce
        self.session_id = session_id
        self._used = False

    def __repr__(self) -> str:
        return f"Challenge(session_id={self.session_id.hex()!r}, used={self._used})"

    @property
    def used(self) -> bool:
        """Whether the challenge has been spent."""
        return self._used

    def spend(self) -> None:
        """Mark the challenge used.

        Raises
        ------
        ReplayedChallenge
            If it was already used.
        """
        if self._used:
            raise ReplayedChallenge("this challenge has already been answered (replay?)")
        self._used = True


def new_challenge(*, rng: Callable[[int], bytes] = os.urandom) -> Challenge:
    """A fresh challenge: 32 random bytes of nonce and 16 of session id.

    Parameters
    ----------
    rng : callable, default os.urandom
        ``rng(n)`` returns ``n`` random bytes; inject for tests only.

    Examples
    --------
    >>> c = new_challenge()
    >>> len(c.nonce), len(c.session_id), c.used
    (32, 16, False)
    """
    return Challenge(bytes(rng(NONCE_BYTES)), bytes(rng(SESSION_ID_BYTES)))


@dataclass(frozen=True)
class EnclaveOffer:
    """An enclave's answer to a challenge, as the owner receives it.

    Wire form (the enclave's ``Offer.to_dict``/``to_bytes``): ``{"platform",
    "evidence", "public_key", "session_id", "collateral"?}``.
    """

    platform: str
    evidence: bytes = field(repr=False)
    public_key: bytes
    session_id: bytes
    collateral: str | None = field(default=None, repr=False)


def parse_offer(data: Mapping[str, Any] | bytes) -> EnclaveOffer:
    """Read an offer from its dict or CBOR form.

    Raises
    ------
    EvidenceMalformed
        If it is not an offer, or its public key or session id have the
        wrong length.
    """
    if isinstance(data, bytes | bytearray):
        try:
            data = cbor2.loads(bytes(data), allow_duplicate_keys=False, max_depth=8)
        except Exception:
            raise EvidenceMalformed("offer is not valid CBOR") from None
    if not isinstance(data, Mapping):
        raise EvidenceMalformed("offer is not a map")
    try:
        collateral = data.get("collateral")
        offer = EnclaveOffer(
            platform=str(data["platform"]),
            evidence=bytes(data["evidence"]),
            public_key=bytes(data["public_key"]),
            session_id=bytes(data["session_id"]),
            collateral=None if collateral is None else str(collateral),
        )
    except (KeyError, TypeError, ValueError):
        raise EvidenceMalformed("offer is missing a field or has a wrong type") from None
    if len(offer.public_key) != PUBLIC_KEY_BYTES or len(offer.session_id) != SESSION_ID_BYTES:
        raise EvidenceMalformed("offer's public key or session id has the wrong length")
    return offer


def _check_binding(
    verified_report_data: bytes, public_key: bytes, nonce: bytes, session_id: bytes
) -> None:
    expected = expected_report_data(public_key, nonce, session_id)
    if not hmac.compare_digest(verified_report_data, expected):
        raise ReportDataMismatch(
            "evidence report data does not bind this public key, nonce and session"
        )


def verify_offer(
    offer: EnclaveOffer | Mapping[str, Any] | bytes,
    challenge: Challenge,
    policy: VerifierPolicy,
    *,
    collateral: Any = None,
) -> VerifiedEvidence:
    """Check an enclave's offer against the challenge it answers.

    Spends the challenge, checks the session, verifies the evidence under
    ``policy`` and then its report-data binding of the offered key.

    Parameters
    ----------
    offer : EnclaveOffer, dict or bytes
        The enclave's offer.
    challenge : Challenge
        The challenge sent for it; spent by this call.
    policy : VerifierPolicy
        What the owner accepts.
    collateral : optional
        DCAP collateral, if the offer does not carry it.

    Returns
    -------
    VerifiedEvidence
        With ``public_key`` set to the bound enclave key.

    Raises
    ------
    ReplayedChallenge
        If the challenge was used before or the offer is for another session.
    ReportDataMismatch
        If the evidence does not bind the offered key, nonce and session.
    AttestationError
        Any other verification failure, from :func:`verify_evidence`.
    """
    challenge.spend()  # first: even a malformed offer uses up the challenge
    parsed = offer if isinstance(offer, EnclaveOffer) else parse_offer(offer)
    if not hmac.compare_digest(parsed.session_id, challenge.session_id):
        raise ReplayedChallenge("offer answers another session (stale or replayed)")
    verified = verify_evidence(
        parsed.evidence, policy, collateral=parsed.collateral or collateral
    )
    _check_binding(verified.report_data, parsed.public_key, challenge.nonce, challenge.session_id)
    return dataclasses.replace(verified, public_key=parsed.public_key)


def wrap_key(
    verified: VerifiedEvidence,
    secret_key_bytes: bytes,
    key_id: str,
    params_digest: str,
    policy: Mapping[str, Any],
    nonce: bytes,
    session_id: bytes,
) -> bytes:
    """HPKE-seal the secret key, its identity and the owner's policy to the attested key.

    Parameters
    ----------
    verified : VerifiedEvidence
        From :func:`verify_offer` (its ``public_key`` is the bound key).
    secret_key_bytes : bytes
        ``SecretContext.export_secret()`` output.
    key_id : str
        The key's id.
    params_digest : str
        ``CkksParams.digest()`` of its parameters.
    policy : mapping
        The owner's release policy for the enclave (CBOR-serialisable).
    nonce, session_id : bytes
        The challenge the evidence answered.

    Returns
    -------
    bytes
        The envelope for :func:`cipherloop.enclave.provision.accept`.

    Raises
    ------
    ReportDataMismatch
        If ``verified`` binds no public key, or binds it to another challenge.
    """
    public_key = verified.public_key
    if public_key is None or len(public_key) != PUBLIC_KEY_BYTES:
        raise ReportDataMismatch("verified evidence binds no X25519 public key")
    _check_binding(verified.report_data, public_key, nonce, session_id)
    if not isinstance(secret_key_bytes, bytes):
        raise TypeError("secret_key_bytes must be bytes")
    if not isinstance(key_id, str) or not isinstance(params_digest, str):
        raise TypeError("key_id and params_digest must be str")
    plaintext = cbor2.dumps(
        {
            "secret_key": secret_key_bytes,
            "key_id": key_id,
            "params_digest": params_digest,
            "policy": dict(policy),
        }
    )
    sealed = _SUITE.encrypt(
        plaintext,
        X25519PublicKey.from_public_bytes(public_key),
        info=hpke_info(verified.evidence_sha256, nonce, session_id),
    )
    return bytes(cbor2.dumps({"format": _ENVELOPE_FORMAT, "hpke": sealed}))
