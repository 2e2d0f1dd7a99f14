"""Encrypting data and models for the cloud, and reading models back.

Runs in: owner (and contributors, who hold only the public context).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..ckks import Diagonals, Replicated, SecretContext
from ..ckks.context import _ContextBase
from ..errors import ShapeError
from ..learn.model import EncryptedDataset, EncryptedModel

Progress = Callable[[int], None]


def _as_xy(X: object, y: object) -> tuple[np.ndarray, np.ndarray]:
    Xa = np.asarray(X, dtype=np.float64)
    ya = np.asarray(y, dtype=np.float64).ravel()
    if Xa.ndim != 2:
        raise ShapeError("X must be a 2-D array of shape (n_samples, n_features)")
    if Xa.shape[0] != ya.shape[0]:
        raise ShapeError(f"X has {Xa.shape[0]} samples but y has {ya.shape[0]}")
    if not (np.all(np.isfinite(Xa)) and np.all(np.isfinite(ya))):
        raise ShapeError("X and y must be finite")
    if not np.all((ya == 0) | (ya == 1)):
        raise ShapeError("y must hold binary labels 0/1")
    return Xa, ya


def encrypt_dataset(context: _ContextBase, X: object, y: object, *,
                    progress: Progress | None = None) -> EncryptedDataset:
    """Pack ``X`` in giant-step diagonals and ``y`` in sample blocks, and encrypt both.

    Labels are encrypted at level 0: only the enclave ever reads them, so they
    need no multiplicative depth and travel at a fifth of the size.
    """
    Xa, ya = _as_xy(X, y)
    layout = Diagonals.plan(Xa.shape[0], Xa.shape[1], context.params.slots)
    features = []
    for arr in layout.pack(Xa):
        features.append(context.encrypt(arr))
        if progress is not None:
            progress(1)
    labels = []
    for arr in layout.samples.pack(ya):
        labels.append(context.encrypt(arr, level=0))
        if progress is not None:
            progress(1)
    return EncryptedDataset(layout, tuple(features), tuple(labels))


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
