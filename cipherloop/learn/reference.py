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
