"""Encrypting multiclass and MLP models for the cloud, and reading them back.

Runs in: owner. Weight matrices become groups of replicated vectors (see
:mod:`cipherloop.learn.network`): one per column of ``coef`` (softmax: one
per class; MLP: one per hidden unit for ``coef1``, one per class for
``coef2``), and the MLP's ``coef2`` once more by rows (``coef2t``).
"""

from __future__ import annotations

import numpy as np

from ..ckks import Ciphertext, Replicated, SecretContext
from ..ckks.context import _ContextBase
from ..errors import ShapeError
from ..learn.network import EncryptedNetwork
from ..learn.reference import PlainNetwork


def _columns(context: _ContextBase, matrix: np.ndarray) -> tuple[Replicated, tuple[Ciphertext, ...]]:
    layout = Replicated.for_features(matrix.shape[0], context.params.slots)
    return layout, tuple(context.encrypt(layout.pack(col)) for col in matrix.T)


def _scalars(context: _ContextBase, values: np.ndarray) -> tuple[Replicated, tuple[Ciphertext, ...]]:
    rep = Replicated(1, 1, context.params.slots)
    return rep, tuple(context.encrypt(rep.pack(float(v))) for v in values)


def encrypt_network(context: _ContextBase, model: PlainNetwork) -> EncryptedNetwork:
    """Encrypt a softmax or MLP model's weights (velocities start empty)."""
    w = {k: np.asarray(v, dtype=np.float64) for k, v in model.weights.items()}
    if not all(np.all(np.isfinite(a)) for a in w.values()):
        raise ShapeError("weights must be finite")
    layouts: dict[str, Replicated] = {}
    groups: dict[str, tuple[Ciphertext, ...]] = {}
    matrices = ("coef",) if model.kind == "softmax" else ("coef1", "coef2")
    for name in matrices:
        layouts[name], groups[name] = _columns(context, w[name])
    if model.kind == "mlp":
        layouts["coef2t"], groups["coef2t"] = _columns(context, w["coef2"].T)
    for name in ("intercept", "intercept1", "intercept2"):
        if name in w:
            layouts[name], groups[name] = _scalars(context, w[name])
    meta = {"activation": model.activation} if model.kind == "mlp" else {}
    return EncryptedNetwork(model.kind, layouts, groups, meta)


def decrypt_network(context: SecretContext, model: EncryptedNetwork) -> PlainNetwork:
    """The owner reads a network back (replicas averaged); ``coef2t`` is dropped."""
    out: dict[str, np.ndarray] = {}
    for name, cts in model.groups.items():
        if name.endswith("_velocity") or name == "coef2t":
            continue
        layout = model.layouts[name]
        cols = [layout.unpack(context.decrypt(ct)) for ct in cts]
        out[name] = (np.asarray(cols).ravel() if name.startswith("intercept")
                     else np.stack(cols, axis=1))
    return PlainNetwork(model.kind, out, model.activation)


def glorot(rng: np.random.Generator, fan_in: int, fan_out: int, activation: str
           ) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's ``MLPClassifier`` initialisation (Glorot uniform; factor 2 for logistic)."""
    factor = 2.0 if activation == "logistic" else 6.0
    bound = float(np.sqrt(factor / (fan_in + fan_out)))
    return (rng.uniform(-bound, bound, (fan_in, fan_out)), rng.uniform(-bound, bound, fan_out))


def initial_network(kind: str, n_features: int, n_classes: int, *, hidden: int = 32,
                    activation: str = "relu", fit_intercept: bool = True,
                    rng: np.random.Generator | None = None) -> PlainNetwork:
    """Starting weights: zeros for softmax (like the binary model), Glorot for the MLP."""
    if kind == "softmax":
        w: dict[str, np.ndarray] = {"coef": np.zeros((n_features, n_classes))}
        if fit_intercept:
            w["intercept"] = np.zeros(n_classes)
        return PlainNetwork("softmax", w)
    rng = rng if rng is not None else np.random.default_rng(0)
    w1, b1 = glorot(rng, n_features, hidden, activation)
    w2, b2 = glorot(rng, hidden, n_classes, activation)
    w = {"coef1": w1, "coef2": w2}
    if fit_intercept:
        w |= {"intercept1": b1, "intercept2": b2}
    return PlainNetwork("mlp", w, activation)
