"""Encrypting data and models for the cloud, and reading models back.

Runs in: owner (and contributors, who hold only the public context).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..ckks import CiphertextBatch, Diagonals, Replicated, SampleBlocks, SecretContext
from ..ckks.context import _ContextBase
from ..ckks.layout import from_description
from ..errors import ShapeError
from ..learn.model import EncryptedDataset, EncryptedModel
from ..learn.wire import encode_samples

Progress = Callable[[int], None]


def _as_xy(X: object, y: object, n_classes: int = 2) -> tuple[np.ndarray, np.ndarray]:
    Xa = np.asarray(X, dtype=np.float64)
    ya = np.asarray(y, dtype=np.float64).ravel()
    if Xa.ndim != 2:
        raise ShapeError("X must be a 2-D array of shape (n_samples, n_features)")
    if Xa.shape[0] != ya.shape[0]:
        raise ShapeError(f"X has {Xa.shape[0]} samples but y has {ya.shape[0]}")
    if not (np.all(np.isfinite(Xa)) and np.all(np.isfinite(ya))):
        raise ShapeError("X and y must be finite")
    if n_classes == 2 and not np.all((ya == 0) | (ya == 1)):
        raise ShapeError("y must hold binary labels 0/1")
    if not np.all((ya == np.rint(ya)) & (ya >= 0) & (ya < n_classes)):
        raise ShapeError(f"y must hold class indices 0..{n_classes - 1}")
    return Xa, ya


def encrypt_batches(context: _ContextBase, X: object, y: object, *,
                    progress: Progress | None = None, n_classes: int = 2
                    ) -> tuple[CiphertextBatch, CiphertextBatch]:
    """Pack ``X`` in giant-step diagonals and ``y`` in sample blocks; encrypt to wire batches.

    With the owner's secret context the ciphertexts are seeded (half the
    bytes); a contributor's public context encrypts with the public key.
    Labels are encrypted at level 0: only the enclave ever reads them, so they
    need no multiplicative depth and travel at a fraction of the size. With
    ``n_classes > 2`` labels are class indices ``0..n_classes-1`` (one value
    per sample, whatever ``K``; the enclave one-hots them).
    """
    Xa, ya = _as_xy(X, y, n_classes)
    layout = Diagonals.plan(Xa.shape[0], Xa.shape[1], context.params.slots)

    def seal(arrays: list[np.ndarray], level: int | None) -> tuple[bytes, ...]:
        out = []
        for arr in arrays:
            out.append(context.encrypt_bytes(arr, level=level))
            if progress is not None:
                progress(1)
        return tuple(out)

    ident = (context.params.digest(), context.key_id)
    return (CiphertextBatch(*ident, layout.describe(), seal(layout.pack(Xa), None)),
            CiphertextBatch(*ident, layout.samples.describe(), seal(layout.samples.pack(ya), 0)))


def encrypt_dataset(context: _ContextBase, X: object, y: object, *,
                    progress: Progress | None = None, n_classes: int = 2) -> EncryptedDataset:
    """:func:`encrypt_batches`, loaded as the host would load them."""
    features, labels = encrypt_batches(context, X, y, progress=progress, n_classes=n_classes)
    return EncryptedDataset.from_batches(context, features, labels)


def upload_body(context: _ContextBase, X: object, y: object, *,
                progress: Progress | None = None, n_classes: int = 2) -> bytes:
    """The body of a sample upload to the service."""
    return encode_samples(*encrypt_batches(context, X, y, progress=progress, n_classes=n_classes))


def encrypt_features(context: _ContextBase, X: object) -> CiphertextBatch:
    """Features alone, for encrypted inference."""
    Xa = np.asarray(X, dtype=np.float64)
    if Xa.ndim != 2 or not np.all(np.isfinite(Xa)):
        raise ShapeError("X must be a finite 2-D array of shape (n_samples, n_features)")
    layout = Diagonals.plan(Xa.shape[0], Xa.shape[1], context.params.slots)
    items = tuple(context.encrypt_bytes(a) for a in layout.pack(Xa))
    return CiphertextBatch(context.params.digest(), context.key_id, layout.describe(), items)


def decrypt_scores(context: SecretContext, scores: bytes) -> np.ndarray:
    """The owner reads encrypted inference results: logits, one per sample (binary model),
    or an ``(n_samples, n_classes)`` array (the blocks of each class in turn)."""
    batch = CiphertextBatch.from_bytes(scores)
    layout = from_description(batch.layout)
    if not isinstance(layout, SampleBlocks):
        raise ShapeError("scores must be sample blocks")
    n_classes, rest = divmod(len(batch.items), layout.n_blocks)
    if rest or n_classes < 1:
        raise ShapeError("scores must hold whole sets of sample blocks")
    cts = batch.open(context)
    cols = [layout.unpack([context.decrypt(c) for c in cts[k * layout.n_blocks:(k + 1) * layout.n_blocks]])
            for k in range(n_classes)]
    return cols[0] if n_classes == 1 else np.stack(cols, axis=1)


def dataset_size(n_samples: int, n_features: int, slots: int) -> int:
    """Ciphertexts :func:`encrypt_dataset` makes (for progress bars)."""
    layout = Diagonals.plan(n_samples, n_features, slots)
    return layout.n_blocks * (layout.period + 1)


def encrypt_model(context: _ContextBase, coef: object, intercept: float | None = 0.0
                  ) -> EncryptedModel:
    """Encrypt initial weights (and intercept, unless ``None``) in the replicated layout."""
    w = np.asarray(coef, dtype=np.float64).ravel()
    if not np.all(np.isfinite(w)):
        raise ShapeError("coefficients must be finite")
    layout = Replicated.for_features(w.shape[0], context.params.slots)
    enc_b = None
    if intercept is not None:
        enc_b = context.encrypt(Replicated(1, 1, layout.slots).pack(float(intercept)))
    return EncryptedModel(layout, context.encrypt(layout.pack(w)), enc_b)


def decrypt_model(context: SecretContext, model: EncryptedModel) -> tuple[np.ndarray, float]:
    """The owner reads weights and intercept back (replicas averaged)."""
    coef = model.layout.unpack(context.decrypt(model.coef))
    b = 0.0
    if model.intercept is not None:
        b = float(Replicated(1, 1, model.layout.slots).unpack(context.decrypt(model.intercept))[0])
    return coef, b
