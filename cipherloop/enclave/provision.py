"""Attested key provisioning, the enclave's half; and sealed storage of the key.

Runs in: enclave.

Protocol ``cipherloop-prov/v1`` (RATS background check; the owner's half is
:mod:`cipherloop.attest.keyrelease`, which must agree byte for byte):

1. The owner sends a fresh 32-byte nonce and a 16-byte session id.
2. :func:`begin` makes an ephemeral X25519 key pair and asks the platform for
   evidence over ``SHA-512("cipherloop-prov/v1" ‖ public key ‖ nonce ‖
   session id)``; the :class:`Offer` goes back to the owner.
3. The owner verifies the evidence and that binding.
4. The owner HPKE-seals (RFC 9180; DHKEM(X25519, HKDF-SHA256), HKDF-SHA256,
   AES-256-GCM) the CKKS secret key, its key id, the parameter digest and
   its policy to the attested public key, with ``info = "cipherloop-prov/v1"
   ‖ SHA-256(evidence) ‖ nonce ‖ session id``.
5. :func:`accept` opens the envelope with the ephemeral private key (once),
   checks the key id and parameter digest against the key bytes, and
   :func:`store_sealed` seals the result to the platform's storage, bound to
   the enclave's measurement. After a restart, :func:`load_sealed` recovers
   it without the owner.

Every failure inside :func:`accept` raises the same
:class:`~cipherloop.errors.ProvisioningFailed` with the same message; nothing
here logs or prints key bytes, envelopes or sealed blobs, and the objects that
hold them have redacting reprs.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cbor2
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.hpke import AEAD, KDF, KEM, Suite

from ..ckks import SecretContext
from ..errors import EvidenceMalformed, KeyMaterialError, ProvisioningFailed
from .platform import Platform

__all__ = [
    "NONCE_BYTES",
    "PROTOCOL",
    "SESSION_ID_BYTES",
    "Offer",
    "ProvisionState",
    "ProvisionedKey",
    "accept",
    "begin",
    "hpke_info",
    "load_sealed",
    "report_data_for",
    "store_sealed",
]

#: Protocol label; prefixes the report data preimage and the HPKE info.
PROTOCOL = b"cipherloop-prov/v1"
#: Length of the owner's nonce.
NONCE_BYTES = 32
#: Length of the session id.
SESSION_ID_BYTES = 16

_ENVELOPE_FORMAT = "cipherloop-prov/v1"
_SEALED_FORMAT = "cipherloop-sealed-key/v2"
_SUITE = Suite(KEM.X25519, KDF.HKDF_SHA256, AEAD.AES_256_GCM)


def _check_challenge(nonce: bytes, session_id: bytes) -> None:
    if not isinstance(nonce, bytes) or len(nonce) != NONCE_BYTES:
        raise ValueError("nonce must be 32 bytes")
    if not isinstance(session_id, bytes) or len(session_id) != SESSION_ID_BYTES:
        raise ValueError("session_id must be 16 bytes")


def report_data_for(public_key: bytes, nonce: bytes, session_id: bytes) -> bytes:
    """The 64 bytes of report data that bind ``public_key`` to this challenge.

    Examples
    --------
    >>> len(report_data_for(bytes(32), bytes(32), bytes(16)))
    64
    """
    return hashlib.sha512(PROTOCOL + public_key + nonce + session_id).digest()


def hpke_info(evidence: bytes, nonce: bytes, session_id: bytes) -> bytes:
    """HPKE ``info``: protocol ‖ SHA-256(evidence) ‖ nonce ‖ session id."""
    return PROTOCOL + hashlib.sha256(evidence).digest() + nonce + session_id


@dataclass(frozen=True)
class Offer:
    """What the enclave sends the owner in answer to a challenge.

    Wire form (:meth:`to_dict`, :meth:`to_bytes` as CBOR): ``{"platform":
    str, "evidence": bytes, "public_key": bytes, "session_id": bytes,
    "collateral": str | None}``. ``collateral`` is DCAP collateral JSON the
    host may attach (it is signed by Intel, so relaying it is safe).
    """

    platform: str
    evidence: bytes = field(repr=False)
    public_key: bytes
    session_id: bytes
    collateral: str | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """The offer as a CBOR/JSON-friendly dict (bytes stay bytes)."""
        return {
            "platform": self.platform,
            "evidence": self.evidence,
            "public_key": self.public_key,
            "session_id": self.session_id,
            "collateral": self.collateral,
        }

    def to_bytes(self) -> bytes:
        """The offer as CBOR."""
        return bytes(cbor2.dumps(self.to_dict()))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Offer:
        """Parse :meth:`to_dict` output.

        Raises
        ------
        EvidenceMalformed
            If a field is missing or has the wrong type.
        """
        try:
            collateral = data.get("collateral")
            fields = {k: data[k] for k in ("evidence", "public_key", "session_id")}
            # bytes(12) would be twelve zero bytes: only real byte strings are taken.
            if not all(isinstance(v, bytes) for v in fields.values()) or not (
                    isinstance(data["platform"], str)
                    and (collateral is None or isinstance(collateral, str))):
                raise TypeError
            offer = cls(platform=data["platform"], collateral=collateral, **fields)
        except (KeyError, TypeError, ValueError):
            raise EvidenceMalformed("offer is missing a field or has a wrong type") from None
        return offer

    @classmethod
    def from_bytes(cls, data: bytes) -> Offer:
        """Parse :meth:`to_bytes` output.

        Raises
        ------
        EvidenceMalformed
            If ``data`` is not a CBOR offer.
        """
        try:
            decoded = cbor2.loads(data)
        except (cbor2.CBORDecodeError, ValueError, TypeError):
            raise EvidenceMalformed("offer is not valid CBOR") from None
        if not isinstance(decoded, Mapping):
            raise EvidenceMalformed("offer is not a CBOR map")
        return cls.from_dict(decoded)


class ProvisionState:
    """The enclave's side of one provisioning session: usable by :func:`accept` once.

    Holds the ephemeral private key; its repr shows only the session id.
    """

    __slots__ = ("_info", "_private_key", "session_id")

    def __init__(self, private_key: X25519PrivateKey, info: bytes, session_id: bytes) -> None:
        self._private_key: X25519PrivateKey | None = private_key
        self._info = info
        self.session_id = session_id

    def __repr__(self) -> str:
        used = self._private_key is None
        return f"ProvisionState(session_id={self.session_id.hex()!r}, used={used})"

    def _take(self) -> tuple[X25519PrivateKey | None, bytes]:
        """The private key, forgotten from here on."""
        key, self._private_key = self._private_key, None
        return key, self._info


@dataclass(frozen=True, eq=False)
class ProvisionedKey:
    """The owner's CKKS secret key as the enclave holds it. The repr hides the key.

    Attributes
    ----------
    secret_key_bytes : bytes
        ``SecretContext.export_secret()`` output; load with
        ``SecretContext.load_secret``.
    key_id : str
        The key id the owner named; matches the key bytes.
    params_digest : str
        ``CkksParams.digest()`` of the key's parameters; matches the key bytes.
    policy : dict
        The owner's release policy, as sent.
    state : dict or None
        In sealed files only: the enclave's durable state for this key (policy
        in force, release history, suspension), written before every release.
    """

    secret_key_bytes: bytes = field(repr=False)
    key_id: str
    params_digest: str
    policy: dict[str, Any]
    state: dict[str, Any] | None = None

    def _to_cbor(self) -> bytes:
        doc: dict[str, Any] = {
            "secret_key": self.secret_key_bytes,
            "key_id": self.key_id,
            "params_digest": self.params_digest,
            "policy": self.policy,
        }
        if self.state is not None:
            doc["state"] = self.state
        return bytes(cbor2.dumps(doc))


def begin(platform: Platform, nonce: bytes, session_id: bytes) -> tuple[Offer, ProvisionState]:
    """Answer the owner's challenge: a fresh key pair, and evidence binding it.

    Parameters
    ----------
    platform : Platform
        Produces the evidence.
    nonce : bytes
        The owner's 32-byte nonce.
    session_id : bytes
        The owner's 16-byte session id.

    Returns
    -------
    (Offer, ProvisionState)
        Send the offer to the owner; keep the state for :func:`accept`.

    Raises
    ------
    ValueError
        If ``nonce`` or ``session_id`` has the wrong length.
    """
    _check_challenge(nonce, session_id)
    private_key = X25519PrivateKey.generate()
    public_key = private_key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    evidence = platform.evidence(report_data_for(public_key, nonce, session_id))
    offer = Offer(
        platform=platform.name, evidence=evidence, public_key=public_key, session_id=session_id
    )
    state = ProvisionState(private_key, hpke_info(evidence, nonce, session_id), session_id)
    return offer, state


def _parse_key_doc(plaintext: bytes) -> ProvisionedKey | None:
    """The key, id, digest and policy inside a decrypted payload, if it is consistent."""
    body = cbor2.loads(plaintext)
    secret, key_id, digest, policy = (
        body["secret_key"],
        body["key_id"],
        body["params_digest"],
        body["policy"],
    )
    if not (
        isinstance(secret, bytes)
        and isinstance(key_id, str)
        and isinstance(digest, str)
        and isinstance(policy, dict)
        and all(isinstance(k, str) for k in policy)
    ):
        return None
    ctx = SecretContext.load_secret(secret)
    same_id = hmac.compare_digest(ctx.key_id.encode(), key_id.encode())
    same_params = hmac.compare_digest(ctx.params.digest().encode(), digest.encode())
    state = body.get("state")
    if not (same_id & same_params) or not (state is None or isinstance(state, dict)):
        return None
    return ProvisionedKey(secret, key_id, digest, dict(policy), state)


def _open_envelope(state: ProvisionState, envelope: bytes) -> ProvisionedKey | None:
    private_key, info = state._take()
    if private_key is None:
        return None
    try:
        outer = cbor2.loads(envelope)
        if outer["format"] != _ENVELOPE_FORMAT:
            return None
        plaintext = _SUITE.decrypt(bytes(outer["hpke"]), private_key, info=info)
        return _parse_key_doc(plaintext)
    except Exception:  # every failure is the same failure
        return None


def accept(state: ProvisionState, envelope: bytes) -> ProvisionedKey:
    """Open the owner's key envelope with the session's ephemeral key.

    The state is spent by the first call, whether it succeeds or not.

    Parameters
    ----------
    state : ProvisionState
        From :func:`begin` of this session.
    envelope : bytes
        The owner's ``wrap_key`` output.

    Returns
    -------
    ProvisionedKey

    Raises
    ------
    ProvisioningFailed
        On any failure (used state, wrong recipient or evidence, tampering,
        key id or parameter digest not matching the key); always the same
        message.
    """
    provisioned = _open_envelope(state, envelope)
    if provisioned is None:
        raise ProvisioningFailed("key provisioning failed")
    return provisioned


def _sealed_aad(platform: Platform) -> bytes:
    return _SEALED_FORMAT.encode() + b"\x00" + platform.name.encode()


def _write_atomic_private(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` in one step; the file is mode 0600 throughout."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def store_sealed(platform: Platform, path: Path | str, provisioned: ProvisionedKey) -> None:
    """Seal the provisioned key to this enclave identity and write it to ``path``.

    The file is CBOR ``{"format": "cipherloop-sealed-key/v1", "platform":
    name, "blob": sealed}``; the AAD binds the format version and platform.

    Parameters
    ----------
    platform : Platform
        Seals (bound to its measurement).
    path : path
        Where the sealed file goes (mode 0600, replaced atomically).
    provisioned : ProvisionedKey
        From :func:`accept`.
    """
    blob = platform.seal(provisioned._to_cbor(), _sealed_aad(platform))
    doc = cbor2.dumps({"format": _SEALED_FORMAT, "platform": platform.name, "blob": blob})
    target = Path(path)
    target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    _write_atomic_private(target, bytes(doc))


def _unseal_key(platform: Platform, data: bytes) -> ProvisionedKey | None:
    try:
        doc = cbor2.loads(data)
        if doc["format"] != _SEALED_FORMAT or doc["platform"] != platform.name:
            return None
        plaintext = platform.unseal(bytes(doc["blob"]), _sealed_aad(platform))
        return _parse_key_doc(plaintext)
    except Exception:  # every failure is the same failure
        return None


def load_sealed(platform: Platform, path: Path | str) -> ProvisionedKey:
    """Unseal the key :func:`store_sealed` wrote, without the owner.

    Parameters
    ----------
    platform : Platform
        Must have the measurement (and host/CPU) that sealed it.
    path : path
        The sealed file.

    Returns
    -------
    ProvisionedKey

    Raises
    ------
    FileNotFoundError
        If there is no sealed key yet (provision first).
    KeyMaterialError
        If the file cannot be opened by this enclave: changed code, another
        machine, another platform, or an altered file. Always the same message.
    """
    data = Path(path).read_bytes()
    provisioned = _unseal_key(platform, data)
    if provisioned is None:
        raise KeyMaterialError("sealed key cannot be opened by this enclave")
    return provisioned
