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
    """``n_samples`` values, ``block`` samples per ciphertext, sample ``i`` in block ``i // block``.

    With ``lanes > 1`` a ciphertext's ``slots`` split into ``lanes`` lanes of
    ``block = slots / lanes`` slots, and every sample of the block sits once
    in each lane: sample ``i`` of lane ``l`` at slot ``l*block + (i + l*shift) % block``
    (see :class:`Diagonals`, whose lanes cover different features of the
    same samples). :meth:`pack` writes a value into all of its sample's
    slots, :meth:`unpack` reads lane 0, and :meth:`fold` sums the lanes
    (logits the host computed lane by lane). ``lanes == 1`` is one sample per slot.
    """

    n_samples: int
    slots: int
    lanes: int = 1
    shift: int = 0

    def __post_init__(self) -> None:
        if self.n_samples < 1:
            raise ShapeError("a layout needs at least one sample")
        if self.lanes < 1 or self.lanes & (self.lanes - 1) or self.slots % self.lanes:
            raise ShapeError("lanes must be a power of two dividing the slot count")
        if not 0 <= self.shift < self.block or (self.lanes == 1 and self.shift):
            raise ShapeError("lane shift outside the block")

    @property
    def block(self) -> int:
        """Samples per ciphertext."""
        return self.slots // self.lanes

    @property
    def n_blocks(self) -> int:
        return -(-self.n_samples // self.block)

    def positions(self) -> np.ndarray:
        """``(lanes, block)`` slot indices: row ``l``, column ``i`` is sample ``i``'s slot in lane ``l``."""
        m, i = self.block, np.arange(self.block)
        return np.stack([lane * m + (i + lane * self.shift) % m for lane in range(self.lanes)])

    def sample_at(self) -> np.ndarray:
        """``(slots,)``: which of the block's samples each slot holds (inverse of :meth:`positions`)."""
        out = np.empty(self.slots, dtype=np.int64)
        out[self.positions()] = np.arange(self.block)[None, :]
        return out

    def spread(self, values: np.ndarray) -> np.ndarray:
        """One block's ``block`` values as a ciphertext's slots (each value in every lane)."""
        return np.asarray(np.asarray(values, dtype=np.float64)[self.sample_at()])

    def pack(self, values: np.ndarray) -> list[np.ndarray]:
        v = np.asarray(values, dtype=np.float64).ravel()
        if v.shape[0] != self.n_samples:
            raise ShapeError(f"expected {self.n_samples} values, got {v.shape[0]}")
        out = np.zeros(self.n_blocks * self.block)
        out[: self.n_samples] = v
        blocks = out.reshape(self.n_blocks, self.block)
        if self.lanes == 1:
            return list(blocks)
        at = self.sample_at()
        return [blk[at] for blk in blocks]

    def unpack(self, blocks: list[np.ndarray]) -> np.ndarray:
        """Lane 0 of each block (lane 0 holds sample ``i`` at slot ``i``)."""
        if len(blocks) != self.n_blocks:
            raise ShapeError(f"expected {self.n_blocks} blocks, got {len(blocks)}")
        return np.concatenate([np.asarray(b)[: self.block] for b in blocks])[: self.n_samples]

    def fold(self, blocks: np.ndarray) -> np.ndarray:
        """Per-sample sums over the lanes of ``(count, slots)`` block values: ``(count * block,)``."""
        arr = np.asarray(blocks, dtype=np.float64).reshape(-1, self.slots)
        if self.lanes == 1:
            return arr.ravel()
        return np.asarray(arr[:, self.positions()].sum(axis=1).ravel())

    def mask(self, start: int = 0, stop: int | None = None) -> list[np.ndarray]:
        """1.0 on samples in ``[start, stop)``, 0.0 elsewhere (padding included)."""
        stop = self.n_samples if stop is None else stop
        m = np.zeros(self.n_blocks * self.block)
        m[start:stop] = 1.0
        blocks = m.reshape(self.n_blocks, self.block)
        return [self.spread(b) for b in blocks]

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": "samples", "n_samples": self.n_samples, "slots": self.slots}
        if self.lanes > 1:
            out.update(lanes=self.lanes, shift=self.shift)
        return out


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
    holds ``rot(D_cb, -baby * b2)`` where ``D_cb[t] = X[c*block + s(t), (t + b) % period]``
    and ``s(t)`` is the block's sample at slot ``t`` (:meth:`SampleBlocks.sample_at`).

    **Lanes** fit a block to a mini-batch smaller than a ciphertext. With
    ``lanes = 1`` a block holds ``slots`` samples and ``period`` diagonals.
    With ``L`` lanes it holds ``block = slots / L`` samples, each sample once
    per lane, and only ``period / L`` diagonals: lane ``l`` puts sample
    ``i`` at a slot congruent to ``i + l * period / L`` (mod ``period``), so
    its ``period / L`` diagonals read features ``[i + l*period/L, ...)`` and
    the lanes together read every feature once. The model stays replicated
    with period ``period`` and the host's kernels are unchanged; ``X @ w``
    leaves each sample's logit split over its lanes, which the enclave sums
    after decrypting (:meth:`SampleBlocks.fold`), and ``X.T @ e`` needs each
    error in every lane of its sample (:meth:`SampleBlocks.spread`). A step
    then costs ``period / L`` products per block of ``slots / L`` samples:
    the same work per sample, but a mini-batch of ``slots / L`` samples no
    longer pays for ``slots``. Needs ``L <= period`` and ``L * period <= slots``.
    """

    n_samples: int
    n_features: int
    slots: int
    baby: int
    lanes: int = 1

    def __post_init__(self) -> None:
        if self.n_features < 1 or self.n_samples < 1:
            raise ShapeError("a feature layout needs at least one sample and one feature")
        if self.period > self.slots:
            raise ShapeError(f"at most {self.slots} features fit this parameter set")
        if self.lanes < 1 or self.lanes & (self.lanes - 1) or self.lanes > self.period or \
                self.lanes * self.period > self.slots:
            raise ShapeError("lanes must be a power of two, at most the padded features, "
                             "with lanes * padded features <= slots")
        if self.baby < 1 or self.per_block % self.baby:
            raise ShapeError("baby steps must divide the diagonals per block")

    @classmethod
    def plan(cls, n_samples: int, n_features: int, slots: int, lanes: int = 1) -> Diagonals:
        per_block = _pow2_at_least(n_features) // max(1, lanes)
        return cls(n_samples, n_features, slots, max(1, min(per_block, 16)), lanes)

    @staticmethod
    def lanes_for(batch_size: int, n_features: int, slots: int) -> int:
        """The most lanes whose blocks still hold ``batch_size`` samples (a power of two).

        A block holds at least ``period`` samples and at most ``period`` lanes
        (one diagonal each), so ``lanes <= min(period, slots / period)``.
        """
        period = _pow2_at_least(n_features)
        block = min(slots, max(period, slots // period, _pow2_at_least(batch_size)))
        return slots // block

    @property
    def period(self) -> int:
        return _pow2_at_least(self.n_features)

    @property
    def per_block(self) -> int:
        """Diagonal ciphertexts per block: ``period / lanes``."""
        return self.period // self.lanes

    @property
    def block(self) -> int:
        """Samples per block: ``slots / lanes``."""
        return self.slots // self.lanes

    @property
    def giant(self) -> int:
        return self.per_block // self.baby

    @property
    def samples(self) -> SampleBlocks:
        return SampleBlocks(self.n_samples, self.slots, self.lanes,
                            self.per_block if self.lanes > 1 else 0)

    @property
    def model(self) -> Replicated:
        return Replicated(self.n_features, self.period, self.slots)

    @property
    def n_blocks(self) -> int:
        return self.samples.n_blocks

    def index(self, block: int, b1: int, b2: int) -> int:
        """Position of ciphertext (block, b1 + baby*b2) in :meth:`pack`'s output."""
        return (block * self.giant + b2) * self.baby + b1

    def _cells(self) -> tuple[np.ndarray, list[tuple[int, np.ndarray]]]:
        """Per slot, the block's sample; per diagonal, its giant-step roll and feature per slot."""
        t = np.arange(self.slots)
        cols = [(self.baby * b2, (t + b1 + self.baby * b2) % self.period)
                for b2 in range(self.giant) for b1 in range(self.baby)]
        return self.samples.sample_at(), cols

    def pack(self, X: np.ndarray) -> list[np.ndarray]:
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape != (self.n_samples, self.n_features):
            raise ShapeError(f"expected X of shape ({self.n_samples}, {self.n_features}), got {X.shape}")
        m, P = self.block, self.period
        padded = np.zeros((self.n_blocks * m, P))
        padded[: self.n_samples, : self.n_features] = X
        rows, cols = self._cells()
        out: list[np.ndarray] = []
        for c in range(self.n_blocks):
            Xc = padded[c * m : (c + 1) * m]
            out.extend(np.roll(Xc[rows, col], shift) for shift, col in cols)
        return out

    def unpack(self, arrays: list[np.ndarray]) -> np.ndarray:
        """Inverse of :meth:`pack`: the ``(n_samples, n_features)`` matrix back."""
        if len(arrays) != self.n_blocks * self.per_block:
            raise ShapeError(f"expected {self.n_blocks * self.per_block} diagonals, got {len(arrays)}")
        m, S = self.block, self.slots
        padded = np.zeros((self.n_blocks * m, self.period))
        rows, cols = self._cells()
        for c in range(self.n_blocks):
            for k, (shift, col) in enumerate(cols):
                diag = np.roll(np.asarray(arrays[c * self.per_block + k])[:S], -shift)
                padded[c * m + rows, col] = diag
        return padded[: self.n_samples, : self.n_features]

    def pack_errors(self, e: np.ndarray) -> list[np.ndarray]:
        """Errors pre-rotated per giant step: block ``c``, step ``b2`` at ``c*giant + b2``."""
        return self.errors_of(self.samples.pack(e))

    def errors_of(self, blocks: list[np.ndarray]) -> list[np.ndarray]:
        """Packed sample blocks (every lane filled) pre-rotated per giant step."""
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
        out: dict[str, Any] = {"kind": "diagonals", "n_samples": self.n_samples,
                               "n_features": self.n_features, "slots": self.slots, "baby": self.baby}
        if self.lanes > 1:
            out["lanes"] = self.lanes
        return out


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
            lanes = _count(desc, "lanes") if "lanes" in desc else 1
            shift = _count(desc, "shift") if "shift" in desc else 0
            return SampleBlocks(_count(desc, "n_samples"), _count(desc, "slots"), lanes, shift)
        if kind == "replicated":
            return Replicated(_count(desc, "n_values"), _count(desc, "period"), _count(desc, "slots"))
        if kind == "diagonals":
            return Diagonals(_count(desc, "n_samples"), _count(desc, "n_features"),
                             _count(desc, "slots"), _count(desc, "baby"),
                             _count(desc, "lanes") if "lanes" in desc else 1)
    except (KeyError, TypeError, ValueError, OverflowError):
        pass
    raise ShapeError("unknown or malformed slot layout")
