"""What crosses the service's HTTP boundary as bytes, and how the host checks it.

Runs in: host. Binary bodies are :class:`~cipherloop.ckks.CiphertextBatch`
bytes, except sample uploads: one CBOR map built and split by
:mod:`cipherloop.learn.wire` (``encode_samples``/``decode_samples``), which
owners and contributors use too -- they may not import this package.

Every check here runs before anything is stored: identity (parameter digest
and key id), layouts, counts and shapes, then every ciphertext is loaded.
"""

from __future__ import annotations

from typing import Any

from ..ckks import CiphertextBatch, Diagonals, SampleBlocks
from ..ckks.layout import from_description
from ..errors import InvalidCiphertext, ShapeError

BINARY = "application/octet-stream"
CBOR = "application/cbor"


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
