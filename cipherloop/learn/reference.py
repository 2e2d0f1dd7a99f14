"""The same refining algorithm on plaintext NumPy arrays, step for step.

Runs in: owner and benchmarks. The yardstick the encrypted run is measured
against: identical mini-batches, learning rate, momentum form and clipping,
so any difference is CKKS noise.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .logistic import RefineConfig, minibatches

CLIP = 16.0  # the enclave policy's default logit clip


@dataclass
class PlainModel:
    """Weights, intercept and their velocities (zeros before the first momentum step)."""

    coef: np.ndarray
    intercept: float = 0.0
    coef_velocity: np.ndarray | None = None
    intercept_velocity: float = 0.0

    def copy(self) -> PlainModel:
        v = None if self.coef_velocity is None else self.coef_velocity.copy()
        return PlainModel(self.coef.copy(), self.intercept, v, self.intercept_velocity)


def plain_step(m: PlainModel, X: np.ndarray, y: np.ndarray, lr: float, momentum: float,
               fit_intercept: bool, clip: float = CLIP) -> PlainModel:
    v = m.coef_velocity if m.coef_velocity is not None else np.zeros_like(m.coef)
    u = m.coef + momentum * v
    ub = m.intercept + momentum * m.intercept_velocity if fit_intercept else 0.0
    z = X @ u + ub
    e = (1.0 / (1.0 + np.exp(-np.clip(z, -clip, clip))) - y) * (lr / len(y))
    w2 = u - X.T @ e
    b2 = ub - float(e.sum()) if fit_intercept else 0.0
    return PlainModel(w2, b2, w2 - m.coef, b2 - m.intercept)


def plain_refine(model: PlainModel, datasets: Sequence[tuple[np.ndarray, np.ndarray]],
                 config: RefineConfig, *, fit_intercept: bool = True) -> PlainModel:
    """Plaintext twin of :func:`cipherloop.learn.logistic.refine`."""
    m = model.copy()
    plan = [(X, y, s, e) for X, y in datasets for s, e in minibatches(len(y), config.batch_size)]
    for _ in range(config.epochs):
        for X, y, s, e in plan:
            m = plain_step(m, X[s:e], y[s:e], config.learning_rate, config.momentum, fit_intercept)
    return m


# ------------------------------------------------ multinomial LR and the MLP
VALUE_BOUND = float(2**20)  # the enclave's clip of decrypted products (enclave/api.py)


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return np.asarray(e / e.sum(axis=1, keepdims=True))


def _act(name: str, z: np.ndarray) -> np.ndarray:
    if name == "relu":
        return np.asarray(np.maximum(z, 0.0))
    if name == "tanh":
        return np.asarray(np.tanh(z))
    return np.asarray(1.0 / (1.0 + np.exp(-z)))


def _act_derivative(name: str, z: np.ndarray) -> np.ndarray:
    if name == "relu":
        return (z > 0).astype(np.float64)
    if name == "tanh":
        return np.asarray(1.0 - np.tanh(z) ** 2)
    s = 1.0 / (1.0 + np.exp(-z))
    return np.asarray(s * (1.0 - s))


@dataclass
class PlainNetwork:
    """Plaintext twin of :class:`cipherloop.learn.network.EncryptedNetwork`.

    ``weights`` per group as the encrypted model holds them, as matrices:
    softmax ``coef`` (d, K) and ``intercept`` (K,); MLP ``coef1`` (d, H),
    ``intercept1`` (H,), ``coef2`` (H, K), ``intercept2`` (K,). The MLP's
    transposed copy of ``coef2`` is ``coef2.T`` here (it gets the same updates).
    Intercept groups are absent without intercepts.
    """

    kind: str
    weights: dict[str, np.ndarray]
    activation: str = "relu"
    velocity: dict[str, np.ndarray] | None = None

    def copy(self) -> PlainNetwork:
        v = None if self.velocity is None else {k: a.copy() for k, a in self.velocity.items()}
        return PlainNetwork(self.kind, {k: a.copy() for k, a in self.weights.items()},
                            self.activation, v)

    def lookahead(self, momentum: float) -> dict[str, np.ndarray]:
        if not momentum or self.velocity is None:
            return {k: a.copy() for k, a in self.weights.items()}
        return {k: a + momentum * self.velocity[k] for k, a in self.weights.items()}

    def scores(self, X: np.ndarray, clip: float = CLIP) -> np.ndarray:
        """Output-layer logits (the MLP's hidden pre-activations clipped, as in the enclave)."""
        w = self.weights
        if self.kind == "softmax":
            return np.asarray(X @ w["coef"] + w.get("intercept", 0.0))
        a = _act(self.activation, np.clip(X @ w["coef1"] + w.get("intercept1", 0.0), -clip, clip))
        return np.asarray(a @ w["coef2"] + w.get("intercept2", 0.0))


def plain_network_step(m: PlainNetwork, X: np.ndarray, y: np.ndarray, lr: float, momentum: float,
                       clip: float = CLIP) -> PlainNetwork:
    """One step, exactly as ``learn/softmax.py`` / ``learn/mlp.py`` and the enclave compute it."""
    u = m.lookahead(momentum)
    K = (u["coef"] if m.kind == "softmax" else u["coef2"]).shape[1]
    Y = np.eye(K)[y.astype(np.int64)]
    step = lr / len(y)
    g: dict[str, np.ndarray] = {}
    if m.kind == "softmax":
        z = X @ u["coef"] + u.get("intercept", 0.0)
        e = (_softmax(np.clip(z, -clip, clip)) - Y) * step
        g["coef"] = X.T @ e
        if "intercept" in u:
            g["intercept"] = e.sum(axis=0)
    else:
        z1 = np.clip(X @ u["coef1"] + u.get("intercept1", 0.0), -clip, clip)
        a = _act(m.activation, z1)
        z2 = a @ u["coef2"] + u.get("intercept2", 0.0)
        e = (_softmax(np.clip(z2, -clip, clip)) - Y) * step
        g["coef2"] = a.T @ e
        p = np.clip(e @ u["coef2"].T, -VALUE_BOUND, VALUE_BOUND)
        delta = p * _act_derivative(m.activation, z1)
        g["coef1"] = X.T @ delta
        if "intercept2" in u:
            g["intercept2"] = e.sum(axis=0)
        if "intercept1" in u:
            g["intercept1"] = delta.sum(axis=0)
    new = {k: u[k] - g[k] for k in u}
    vel = {k: new[k] - m.weights[k] for k in new}
    return PlainNetwork(m.kind, new, m.activation, vel)


def plain_network_refine(model: PlainNetwork, datasets: Sequence[tuple[np.ndarray, np.ndarray]],
                         config: RefineConfig) -> PlainNetwork:
    """Plaintext twin of :func:`cipherloop.learn.refine` for softmax and MLP models."""
    m = model.copy()
    plan = [(X, y, s, e) for X, y in datasets for s, e in minibatches(len(y), config.batch_size)]
    for _ in range(config.epochs):
        for X, y, s, e in plan:
            m = plain_network_step(m, X[s:e], y[s:e], config.learning_rate, config.momentum)
    return m
