"""AWS Nitro attestation documents (and the simulated TEE's imitations of them).

Runs in: owner.

A document is a COSE_Sign1 (RFC 9052; tagged or untagged) whose payload is a
CBOR map (``module_id``, ``timestamp``, ``digest``, ``pcrs``,
``certificate``, ``cabundle``, ``public_key``, ``user_data``, ``nonce``),
signed with ES384 by ``certificate``, which chains through ``cabundle`` to
a root. :func:`authenticate_document` checks, in this order:

1. structure and field types (:class:`~cipherloop.errors.EvidenceMalformed`);
2. the root: the simulated root (CN ``SIMULATED TEE ROOT - NOT A TEE``) only
   when the policy allows simulation
   (:class:`~cipherloop.errors.SimulationNotAllowed`), and in any case a root
   the policy pins — the built-in AWS Nitro root, or one of
   ``pinned_roots`` (:class:`~cipherloop.errors.UntrustedRoot`);
3. every link of the chain, with CA constraints
   (:class:`~cipherloop.errors.UntrustedRoot`), and every certificate's
   validity at the verification time
   (:class:`~cipherloop.errors.CollateralExpired`);
4. the COSE signature (:class:`~cipherloop.errors.EvidenceSignatureInvalid`).

Debug mode shows as all-zero PCRs (as Nitro does for ``--debug-mode``
enclaves). Freshness, debug and the measurement allowlist are applied by
:func:`cipherloop.attest.verify.verify_evidence`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

import cbor2
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from ..errors import (
    CollateralExpired,
    EvidenceMalformed,
    EvidenceSignatureInvalid,
    SimulationNotAllowed,
    UntrustedRoot,
)
from .evidence import VerifiedEvidence
from .policy import VerifierPolicy

__all__ = [
    "AWS_NITRO_ROOT_PEM",
    "AWS_NITRO_ROOT_SHA256",
    "SIM_ROOT_CN",
    "authenticate_document",
]

#: AWS Nitro Enclaves Root-G1 (CN=aws.nitro-enclaves, P-384, valid 2019-10-28 to
#: 2049-10-28), from https://aws-nitro-enclaves.amazonaws.com/AWS_NitroEnclaves_Root-G1.zip
AWS_NITRO_ROOT_PEM = b"""-----BEGIN CERTIFICATE-----
MIICETCCAZagAwIBAgIRAPkxdWgbkK/hHUbMtOTn+FYwCgYIKoZIzj0EAwMwSTEL
MAkGA1UEBhMCVVMxDzANBgNVBAoMBkFtYXpvbjEMMAoGA1UECwwDQVdTMRswGQYD
VQQDDBJhd3Mubml0cm8tZW5jbGF2ZXMwHhcNMTkxMDI4MTMyODA1WhcNNDkxMDI4
MTQyODA1WjBJMQswCQYDVQQGEwJVUzEPMA0GA1UECgwGQW1hem9uMQwwCgYDVQQL
DANBV1MxGzAZBgNVBAMMEmF3cy5uaXRyby1lbmNsYXZlczB2MBAGByqGSM49AgEG
BSuBBAAiA2IABPwCVOumCMHzaHDimtqQvkY4MpJzbolL//Zy2YlES1BR5TSksfbb
48C8WBoyt7F2Bw7eEtaaP+ohG2bnUs990d0JX28TcPQXCEPZ3BABIeTPYwEoCWZE
h8l5YoQwTcU/9KNCMEAwDwYDVR0TAQH/BAUwAwEB/zAdBgNVHQ4EFgQUkCW1DdkF
R+eWw5b6cp3PmanfS5YwDgYDVR0PAQH/BAQDAgGGMAoGCCqGSM49BAMDA2kAMGYC
MQCjfy+Rocm9Xue4YnwWmNJVA44fA0P5W2OpYow9OYCVRaEevL8uO1XYru5xtMPW
rfMCMQCi85sWBbJwKKXdS6BptQFuZbT73o/gBh1qUxl/nNr12UO8Yfwr6wPLb+6N
IwLz3/Y=
-----END CERTIFICATE-----
"""
#: SHA-256 fingerprint of the DER root above, as AWS publishes it.
AWS_NITRO_ROOT_SHA256 = "641a0321a3e244efe456463195d606317ed7cdcc3c1756e09893f3c68f79bb5b"

#: Subject CN of the simulated TEE's root (``cipherloop.enclave.platform.sim``).
SIM_ROOT_CN = "SIMULATED TEE ROOT - NOT A TEE"

_COSE_ALG = 1
_ES384 = -35
_MAX_EVIDENCE_BYTES = 64 * 1024
_PCR_LENGTHS = (32, 48, 64)


def _load_cert(data: bytes) -> x509.Certificate:
    if data.lstrip().startswith(b"-----BEGIN"):
        return x509.load_pem_x509_certificate(data)
    return x509.load_der_x509_certificate(data)


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(Encoding.DER)


def _parse_cose(evidence: bytes) -> tuple[bytes, bytes, bytes]:
    """``(protected, payload, signature)`` of a COSE_Sign1, tagged (18) or not."""
    if len(evidence) > _MAX_EVIDENCE_BYTES:
        raise EvidenceMalformed("attestation document is too large")
    try:
        obj = cbor2.loads(evidence, allow_duplicate_keys=False, max_depth=16)
    except Exception:
        raise EvidenceMalformed("attestation document is not valid CBOR") from None
    if isinstance(obj, cbor2.CBORTag):
        if obj.tag != 18:
            raise EvidenceMalformed("attestation document has a CBOR tag other than COSE_Sign1")
        obj = obj.value
    if not isinstance(obj, list | tuple) or len(obj) != 4:
        raise EvidenceMalformed("attestation document is not a COSE_Sign1 array")
    protected, unprotected, payload, signature = obj
    if not (
        isinstance(protected, bytes)
        and isinstance(unprotected, Mapping)
        and isinstance(payload, bytes)
        and isinstance(signature, bytes)
    ):
        raise EvidenceMalformed("COSE_Sign1 fields have the wrong types")
    try:
        header = cbor2.loads(protected, allow_duplicate_keys=False) if protected else {}
    except Exception:
        raise EvidenceMalformed("COSE protected header is not valid CBOR") from None
    if not isinstance(header, Mapping) or header.get(_COSE_ALG) != _ES384:
        raise EvidenceMalformed("COSE_Sign1 algorithm is not ES384")
    return protected, payload, signature


def _parse_document(payload: bytes) -> dict[str, Any]:
    """The attestation document's fields, type-checked as AWS specifies them."""
    try:
        doc = cbor2.loads(payload, allow_duplicate_keys=False, max_depth=16)
    except Exception:
        raise EvidenceMalformed("attestation document payload is not valid CBOR") from None
    if not isinstance(doc, Mapping):
        raise EvidenceMalformed("attestation document payload is not a map")
    module_id, digest, ts = doc.get("module_id"), doc.get("digest"), doc.get("timestamp")
    pcrs, cert, bundle = doc.get("pcrs"), doc.get("certificate"), doc.get("cabundle")
    ok = (
        isinstance(module_id, str)
        and module_id != ""
        and digest == "SHA384"
        and isinstance(ts, int)
        and ts > 0
        and isinstance(pcrs, Mapping)
        and 0 in pcrs
        and 1 <= len(pcrs) <= 32
        and all(
            isinstance(i, int) and 0 <= i < 32 and isinstance(v, bytes) and len(v) in _PCR_LENGTHS
            for i, v in pcrs.items()
        )
        and isinstance(cert, bytes)
        and isinstance(bundle, list | tuple)
        and len(bundle) >= 1
        and all(isinstance(c, bytes) for c in bundle)
    )
    for name, limit in (("public_key", 1024), ("user_data", 512), ("nonce", 512)):
        value = doc.get(name)
        ok = ok and (value is None or (isinstance(value, bytes) and len(value) <= limit))
    if not ok:
        raise EvidenceMalformed("attestation document fields are missing or have wrong types")
    return dict(doc)


def _is_sim_root(cert: x509.Certificate) -> bool:
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return any(n.value == SIM_ROOT_CN for n in names)


def _pinned(policy: VerifierPolicy) -> list[bytes]:
    roots = [AWS_NITRO_ROOT_PEM, *policy.pinned_roots]
    pinned = []
    for r in roots:
        try:
            pinned.append(_der(_load_cert(r)))
        except ValueError:
            raise UntrustedRoot("a pinned root in the policy is not a certificate") from None
    return pinned


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return False
    return bc.ca


def _check_chain(chain: Sequence[x509.Certificate], now: dt.datetime) -> None:
    """``chain`` runs root → … → leaf; each link signed by the previous, CAs marked CA."""
    for parent, child in zip(chain, chain[1:], strict=False):
        if not _is_ca(parent):
            raise UntrustedRoot("a certificate in the chain signs others but is not a CA")
        try:
            child.verify_directly_issued_by(parent)
        except (ValueError, TypeError, InvalidSignature):
            raise UntrustedRoot("certificate chain does not verify to the pinned root") from None
    if _is_ca(chain[-1]):
        raise UntrustedRoot("the signing certificate is a CA certificate")
    for cert in chain:
        if not (cert.not_valid_before_utc <= now <= cert.not_valid_after_utc):
            raise CollateralExpired("a certificate in the chain is not valid at verification time")


def _check_signature(
    leaf: x509.Certificate, protected: bytes, payload: bytes, signature: bytes
) -> None:
    key = leaf.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(
        key.curve, ec.SECP384R1
    ):
        raise EvidenceSignatureInvalid("signing certificate does not hold a P-384 key")
    if len(signature) != 96:
        raise EvidenceSignatureInvalid("COSE signature has the wrong length for ES384")
    r = int.from_bytes(signature[:48], "big")
    s = int.from_bytes(signature[48:], "big")
    to_be_signed = cbor2.dumps(["Signature1", protected, b"", payload])
    try:
        key.verify(encode_dss_signature(r, s), to_be_signed, ec.ECDSA(hashes.SHA384()))
    except InvalidSignature:
        raise EvidenceSignatureInvalid("attestation document signature does not verify") from None


def authenticate_document(evidence: bytes, policy: VerifierPolicy) -> VerifiedEvidence:
    """Check a Nitro-format document's signature and chain; extract its claims.

    This is the platform half of verification; use
    :func:`cipherloop.attest.verify.verify_evidence` for the whole policy
    (freshness, debug, measurement allowlist, simulation warning).

    Parameters
    ----------
    evidence : bytes
        COSE_Sign1 attestation document (NSM output, or the sim's).
    policy : VerifierPolicy
        Supplies pinned roots, ``allow_simulated`` and the verification time.

    Returns
    -------
    VerifiedEvidence
        ``platform`` is ``"sim"`` when the root is the simulated one.

    Raises
    ------
    EvidenceMalformed, SimulationNotAllowed, UntrustedRoot, CollateralExpired,
    EvidenceSignatureInvalid
        See the module docs for which check raises which.
    """
    protected, payload, signature = _parse_cose(evidence)
    doc = _parse_document(payload)
    try:
        leaf = x509.load_der_x509_certificate(doc["certificate"])
        bundle = [x509.load_der_x509_certificate(c) for c in doc["cabundle"]]
    except ValueError:
        raise EvidenceMalformed("attestation document certificates are not DER") from None
    root = bundle[0]
    simulated = _is_sim_root(root)
    if simulated and not policy.allow_simulated:
        raise SimulationNotAllowed(
            "evidence comes from the SIMULATED TEE (not a TEE) and the policy does not "
            "allow simulation"
        )
    if _der(root) not in _pinned(policy):
        raise UntrustedRoot("certificate chain ends at a root the policy does not pin")
    now = dt.datetime.fromtimestamp(policy.current_time(), tz=dt.UTC)
    _check_chain([*bundle, leaf], now)
    _check_signature(leaf, protected, payload, signature)

    pcrs: Mapping[int, bytes] = doc["pcrs"]
    pcr0 = pcrs[0]
    # Nitro zeroes the PCRs of an enclave started in debug mode.
    debug = not any(pcr0)
    details = [("module_id", str(doc["module_id"]))]
    details += [(f"pcr{i}", pcrs[i].hex()) for i in (1, 2, 8) if i in pcrs and any(pcrs[i])]
    user_data = doc.get("user_data")
    public_key = doc.get("public_key")
    return VerifiedEvidence(
        platform="sim" if simulated else "nitro",
        measurement=pcr0.hex(),
        debug=debug,
        tcb_status="NotApplicable",
        simulated=simulated,
        report_data=bytes(user_data) if user_data is not None else b"",
        public_key=bytes(public_key) if public_key is not None else None,
        evidence_sha256=hashlib.sha256(evidence).digest(),
        issued_at=int(doc["timestamp"]) / 1000.0,
        details=tuple(details),
    )
