"""The exact non-linearities the enclave applies (hidden layers and their derivatives).

Runs in: enclave. Inputs are already clipped decrypted values, so nothing here
can fail or branch on a value: numpy's elementwise functions only.
"""

from __future__ import annotations

import numpy as np

ACTIVATIONS = ("relu", "tanh", "logistic")


def activation(name: str, z: np.ndarray) -> np.ndarray:
    """``act(z)`` for already clipped ``z``; bounded by ``max|z|`` (relu) or 1."""
    if name == "relu":
        return np.asarray(np.maximum(z, 0.0))
    if name == "tanh":
        return np.asarray(np.tanh(z))
    return np.asarray(1.0 / (1.0 + np.exp(-z)))


def activation_derivative(name: str, z: np.ndarray) -> np.ndarray:
    """``act'(z)`` for already clipped ``z``; always in ``[0, 1]``."""
    if name == "relu":
        return (z > 0).astype(np.float64)
    if name == "tanh":
        return np.asarray(1.0 - np.tanh(z) ** 2)
    s = 1.0 / (1.0 + np.exp(-z))
    return np.asarray(s * (1.0 - s))
