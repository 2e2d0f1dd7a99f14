"""Slot layouts: where each value sits in which ciphertext.

Runs in: owner (packs data and model), host (plans rotations), enclave (reads
z, writes e in the layout the next host step wants). Index arithmetic lives
here and nowhere else. ``rot(v, k)[t] == v[(t + k) % slots]``, SEAL's left
rotation, which is ``np.roll(v, -k)``.

The three layouts of the logistic refining step (see ``learn/kernels.py``):

* :class:`SampleBlocks` -- one value per sample, ``slots`` samples per
  ciphertext (labels ``y``, logits ``z``, errors ``e``).
* :class:`Replicated` -- a model vector of ``period`` values repeated across
  all slots; rotating it by ``k`` gives the same vector shifted by ``k``.
* :class:`Diagonals` -- the feature matrix in generalised diagonals,
  pre-rotated by giant steps, so that ``X @ w`` needs no rotation of the data
  and ``X.T @ e`` needs only baby-step rotations of one summed ciphertext.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import ShapeError


def _pow2_at_least(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


@dataclass(frozen=True)
class SampleBlocks:
    """``n_samples`` values, ``slots`` per ciphertext, sample ``i`` in block ``i // slots``."""

    n_samples: int
    slots: int

    def __post_init__(self) -> None:
        if self.n_samples < 1:
            raise ShapeError("a layout needs at least one sample")

    @property
    def n_blocks(self) -> int:
        return -(-self.n_samples // self.slots)

    def pack(self, values: np.ndarray) -> list[np.ndarray]:
        v = np.asarray(values, dtype=np.float64).ravel()
        if v.shape[0] != self.n_samples:
            raise ShapeError(f"expected {self.n_samples} values, got {v.shape[0]}")
        out = np.zeros(self.n_blocks * self.slots)
        out[: self.n_samples] = v
        return list(out.reshape(self.n_blocks, self.slots))

    def unpack(self, blocks: list[np.ndarray]) -> np.ndarray:
        if len(blocks) != self.n_blocks:
            raise ShapeError(f"expected {self.n_blocks} blocks, got {len(blocks)}")
        return np.concatenate([np.asarray(b)[: self.slots] for b in blocks])[: self.n_samples]

    def mask(self, start: int = 0, stop: int | None = None) -> list[np.ndarray]:
        """1.0 on samples in ``[start, stop)``, 0.0 elsewhere (padding included)."""
        stop = self.n_samples if stop is None else stop
        m = np.zeros(self.n_blocks * self.slots)
        m[start:stop] = 1.0
        return list(m.reshape(self.n_blocks, self.slots))

    def describe(self) -> dict[str, Any]:
        return {"kind": "samples", "n_samples": self.n_samples, "slots": self.slots}


@dataclass(frozen=True)
class Replicated:
    """A vector of ``n_values`` (zero-padded to ``period``) repeated across all slots."""

    n_values: int
    period: int
    slots: int

    def __post_init__(self) -> None:
        if self.period & (self.period - 1) or self.period > self.slots or self.n_values > self.period:
            raise ShapeError("period must be a power of two >= n_values and <= slots")

    @classmethod
    def for_features(cls, n_features: int, slots: int) -> Replicated:
        return cls(n_features, _pow2_at_least(n_features), slots)

    def pack(self, values: np.ndarray | float) -> np.ndarray:
        v = np.atleast_1d(np.asarray(values, dtype=np.float64)).ravel()
        if v.shape[0] != self.n_values:
            raise ShapeError(f"expected {self.n_values} values, got {v.shape[0]}")
        base = np.zeros(self.period)
        base[: self.n_values] = v
        return np.tile(base, self.slots // self.period)

    def unpack(self, slots: np.ndarray) -> np.ndarray:
        """Average the replicas: the owner gets the least noisy reading."""
        s = np.asarray(slots)[: self.slots].reshape(self.slots // self.period, self.period)
        return np.asarray(s.mean(axis=0)[: self.n_values])

    def describe(self) -> dict[str, Any]:
        return {"kind": "replicated", "n_values": self.n_values, "period": self.period,
                "slots": self.slots}


@dataclass(frozen=True)
class Diagonals:
    """Feature matrix ``X`` (n x d) as generalised diagonals with giant-step pre-rotation.

    Ciphertext ``(c, b)`` for block ``c`` and diagonal ``b = b1 + baby * b2``
    holds ``rot(D_cb, -baby * b2)`` where ``D_cb[t] = X[c*slots + t, (t + b) % period]``.
    """

    n_samples: int
    n_features: int
    slots: int
    baby: int

    def __post_init__(self) -> None:
        if self.n_features < 1 or self.n_samples < 1:
            raise ShapeError("a feature layout needs at least one sample and one feature")
        if self.period > self.slots:
            raise ShapeError(f"at most {self.slots} features fit this parameter set")
        if self.baby < 1 or self.period % self.baby:
            raise ShapeError("baby steps must divide the padded feature count")

    @classmethod
    def plan(cls, n_samples: int, n_features: int, slots: int) -> Diagonals:
        period = _pow2_at_least(n_features)
        return cls(n_samples, n_features, slots, min(period, 16))

    @property
    def period(self) -> int:
        return _pow2_at_least(self.n_features)

    @property
    def giant(self) -> int:
        return self.period // self.baby

    @property
    def samples(self) -> SampleBlocks:
        return SampleBlocks(self.n_samples, self.slots)

    @property
    def model(self) -> Replicated:
        return Replicated(self.n_features, self.period, self.slots)

    @property
    def n_blocks(self) -> int:
        return self.samples.n_blocks

    def index(self, block: int, b1: int, b2: int) -> int:
        """Position of ciphertext (block, b1 + baby*b2) in :meth:`pack`'s output."""
        return (block * self.giant + b2) * self.baby + b1

    def pack(self, X: np.ndarray) -> list[np.ndarray]:
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape != (self.n_samples, self.n_features):
            raise ShapeError(f"expected X of shape ({self.n_samples}, {self.n_features}), got {X.shape}")
        S, P = self.slots, self.period
        padded = np.zeros((self.n_blocks * S, P))
        padded[: self.n_samples, : self.n_features] = X
        t = np.arange(S)
        out: list[np.ndarray] = []
        for c in range(self.n_blocks):
            Xc = padded[c * S : (c + 1) * S]
            for b2 in range(self.giant):
                for b1 in range(self.baby):
                    diag = Xc[t, (t + b1 + self.baby * b2) % P]
                    out.append(np.roll(diag, self.baby * b2))
        return out

    def unpack(self, arrays: list[np.ndarray]) -> np.ndarray:
        """Inverse of :meth:`pack`: the ``(n_samples, n_features)`` matrix back."""
        if len(arrays) != self.n_blocks * self.period:
            raise ShapeError(f"expected {self.n_blocks * self.period} diagonals, got {len(arrays)}")
        S, P = self.slots, self.period
        padded = np.zeros((self.n_blocks * S, P))
        t = np.arange(S)
        for c in range(self.n_blocks):
            for b2 in range(self.giant):
                for b1 in range(self.baby):
                    diag = np.roll(np.asarray(arrays[self.index(c, b1, b2)])[:S], -self.baby * b2)
                    padded[c * S + t, (t + b1 + self.baby * b2) % P] = diag
        return padded[: self.n_samples, : self.n_features]

    def pack_errors(self, e: np.ndarray) -> list[np.ndarray]:
        """Errors pre-rotated per giant step: block ``c``, step ``b2`` at ``c*giant + b2``."""
        blocks = self.samples.pack(e)
        return [np.roll(blk, self.baby * b2) for blk in blocks for b2 in range(self.giant)]

    def rotations(self) -> list[int]:
        """Every rotation step the host kernels use (for Galois key generation).

        The kernels walk baby and giant steps Horner-style (rotate by one step,
        add, rotate again), so each direction needs a single key, and the
        period replicas fold with one key per doubling.
        """
        S, P, B = self.slots, self.period, self.baby
        steps = {1, S - 1}
        if self.giant > 1:
            steps.add(B)
        k = P
        while k < S:
            steps.add(k)
            k *= 2
        return sorted(steps)

    def describe(self) -> dict[str, Any]:
        return {"kind": "diagonals", "n_samples": self.n_samples, "n_features": self.n_features,
                "slots": self.slots, "baby": self.baby}


def rotations_for_features(n_features: int, slots: int) -> list[int]:
    """Rotation steps that train on any number of features up to ``n_features``.

    Every power of two below ``slots`` (the fold of any smaller period, and the
    giant step) plus the unit step back; Galois keys are made once per owner key.
    """
    need = set(Diagonals.plan(1, n_features, slots).rotations())
    k = 1
    while k < slots:
        need.add(k)
        k *= 2
    return sorted(need)


#: Largest count any layout field may hold: 2**31 samples is ~500 GB of ciphertexts.
MAX_COUNT = 2**31


def _count(desc: dict[str, Any], name: str) -> int:
    """A layout field: a true integer in ``[1, MAX_COUNT]`` (no floats, bools or infinities)."""
    value = desc[name]
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_COUNT:
        raise ValueError(name)
    return value


def from_description(desc: dict[str, Any]) -> SampleBlocks | Replicated | Diagonals:
    """Rebuild a layout from its wire description, refusing anything malformed or out of bounds."""
    try:
        kind = desc["kind"]
        if kind == "samples":
            return SampleBlocks(_count(desc, "n_samples"), _count(desc, "slots"))
        if kind == "replicated":
            return Replicated(_count(desc, "n_values"), _count(desc, "period"), _count(desc, "slots"))
        if kind == "diagonals":
            return Diagonals(_count(desc, "n_samples"), _count(desc, "n_features"),
                             _count(desc, "slots"), _count(desc, "baby"))
    except (KeyError, TypeError, ValueError, OverflowError):
        pass
    raise ShapeError("unknown or malformed slot layout")
