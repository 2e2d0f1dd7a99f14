"""The wire form of a sample upload: one CBOR map holding the two batches.

Runs in: owner and contributors (who build upload bodies) and host (which
splits them). ``{"format": "cipherloop-samples/v1", "features": <batch>,
"labels": <batch>}``: one request carries a whole data set, and one hash
names it (the service's idempotency key).
"""

from __future__ import annotations

import cbor2

from ..ckks import CiphertextBatch
from ..ckks.batch import cbor_one
from ..errors import InvalidCiphertext

SAMPLES_FORMAT = "cipherloop-samples/v1"


def encode_samples(features: CiphertextBatch, labels: CiphertextBatch) -> bytes:
    """The body of a sample upload: features (diagonals) and labels (sample blocks)."""
    return bytes(cbor2.dumps({"format": SAMPLES_FORMAT, "features": features.to_bytes(),
                              "labels": labels.to_bytes()}))


def require_one_cbor_item(body: bytes) -> None:
    """Refuse a body that is not exactly one CBOR item (trailing bytes included).

    ``cbor2.loads`` stops after the first item and ignores the rest; bytes
    after a valid body would be stored and hashed unseen.

    Raises
    ------
    InvalidCiphertext
    """
    try:
        cbor_one(body)
    except ValueError as exc:
        message = ("trailing bytes after the CBOR body" if "trailing" in str(exc)
                   else "not a CBOR body (malformed or truncated)")
        raise InvalidCiphertext(message) from None


def decode_samples(body: bytes, *, max_bytes: int) -> tuple[CiphertextBatch, CiphertextBatch]:
    """Split a sample upload into its two batches.

    Raises
    ------
    InvalidCiphertext
        The body is not a sample upload, or a batch inside it is malformed.
    """
    require_one_cbor_item(body)
    try:
        doc = cbor2.loads(body)
        if not isinstance(doc, dict) or doc.get("format") != SAMPLES_FORMAT:
            raise ValueError
        features, labels = doc["features"], doc["labels"]
        if not isinstance(features, bytes) or not isinstance(labels, bytes):
            raise ValueError
    except Exception:
        raise InvalidCiphertext("not a sample upload (malformed or truncated)") from None
    require_one_cbor_item(features)
    require_one_cbor_item(labels)
    return (CiphertextBatch.from_bytes(features, max_bytes=max_bytes),
            CiphertextBatch.from_bytes(labels, max_bytes=max_bytes))
