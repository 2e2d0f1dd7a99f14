"""What crosses the service's HTTP boundary as bytes, and how it is checked.

Runs in: host (and owner/contributor, who build upload bodies). Binary
bodies are :class:`~cipherloop.ckks.CiphertextBatch` bytes, except sample
uploads: one CBOR map ``{"format": "cipherloop-samples/v1", "features":
<batch>, "labels": <batch>}``, so one request carries a whole data set and
one hash names it (the idempotency key).

Every check here runs before anything is stored: identity (parameter digest
and key id), layouts, counts and shapes, then every ciphertext is loaded.
"""

from __future__ import annotations

from typing import Any

import cbor2

from ..ckks import CiphertextBatch, Diagonals, SampleBlocks
from ..ckks.layout import from_description
from ..errors import InvalidCiphertext, ShapeError

SAMPLES_FORMAT = "cipherloop-samples/v1"
BINARY = "application/octet-stream"
CBOR = "application/cbor"


def encode_samples(features: CiphertextBatch, labels: CiphertextBatch) -> bytes:
    """The body of a sample upload.

    Parameters
    ----------
    features : CiphertextBatch
        Features in a :class:`~cipherloop.ckks.Diagonals` layout.
    labels : CiphertextBatch
        Labels in the matching :class:`~cipherloop.ckks.SampleBlocks` layout.

    Returns
    -------
    bytes
    """
    return bytes(cbor2.dumps({"format": SAMPLES_FORMAT, "features": features.to_bytes(),
                              "labels": labels.to_bytes()}))


def decode_samples(body: bytes, *, max_bytes: int) -> tuple[CiphertextBatch, CiphertextBatch]:
    """Split a sample upload into its two batches.

    Raises
    ------
    InvalidCiphertext
        The body is not a sample upload, or a batch inside it is malformed.
    """
    try:
        doc = cbor2.loads(body)
        if not isinstance(doc, dict) or doc.get("format") != SAMPLES_FORMAT:
            raise ValueError
        features, labels = doc["features"], doc["labels"]
        if not isinstance(features, bytes) or not isinstance(labels, bytes):
            raise ValueError
    except Exception:
        raise InvalidCiphertext("not a sample upload (malformed or truncated)") from None
    return (CiphertextBatch.from_bytes(features, max_bytes=max_bytes),
            CiphertextBatch.from_bytes(labels, max_bytes=max_bytes))


def _load_all(context: Any, batch: CiphertextBatch) -> int:
    """Load every ciphertext (refusing garbage); return the lowest level among them."""
    return int(min(context.load_ciphertext(item).level for item in batch.items))


def check_features(context: Any, features: CiphertextBatch, *, n_features: int) -> Diagonals:
    """Check a feature batch against the tenant's context and the model's width.

    Parameters
    ----------
    context : PublicContext
        The tenant's public context the batch must be made under.
    features : CiphertextBatch
    n_features : int
        The model's number of features.

    Returns
    -------
    Diagonals
        The batch's layout.

    Raises
    ------
    ParameterMismatch
        Other parameters or another key.
    ShapeError
        Wrong layout kind, slot count, feature count or ciphertext count.
    InvalidCiphertext
        A ciphertext does not load, or has no level left for ``X @ w``.
    """
    features.check(context)
    layout = from_description(features.layout)
    if not isinstance(layout, Diagonals) or layout.slots != context.params.slots:
        raise ShapeError("features must be in a diagonal layout for these parameters")
    if layout.n_features != n_features:
        raise ShapeError(f"expected {n_features} features, got {layout.n_features}")
    expected = layout.n_blocks * layout.period
    if len(features.items) != expected:
        raise ShapeError(f"expected {expected} feature ciphertexts, got {len(features.items)}")
    if _load_all(context, features) < 1:
        raise InvalidCiphertext("feature ciphertexts have no level left to multiply")
    return layout


def check_samples(context: Any, features: CiphertextBatch, labels: CiphertextBatch, *,
                  n_features: int) -> int:
    """Check a sample upload completely; return its number of samples.

    Raises
    ------
    ParameterMismatch, ShapeError, InvalidCiphertext
        As :func:`check_features`, and for labels that don't match the features.
    """
    labels.check(context)
    layout = check_features(context, features, n_features=n_features)
    label_layout = from_description(labels.layout)
    if not isinstance(label_layout, SampleBlocks) or label_layout.slots != layout.slots:
        raise ShapeError("labels must be sample blocks for these parameters")
    if label_layout.n_samples != layout.n_samples:
        raise ShapeError(f"features hold {layout.n_samples} samples, labels "
                         f"{label_layout.n_samples}")
    if len(labels.items) != label_layout.n_blocks:
        raise ShapeError(f"expected {label_layout.n_blocks} label ciphertexts, "
                         f"got {len(labels.items)}")
    _load_all(context, labels)
    return layout.n_samples
