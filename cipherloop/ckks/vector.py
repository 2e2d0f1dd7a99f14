"""An encrypted vector that feels like TenSEAL's ``CKKSVector``, without its regrets.

Runs in: owner, host and enclave. One wrapper holds exactly one backend
ciphertext; operators delegate to named backend methods; no in-place twins,
no global relinearise/rescale flags: the packed kernels decide.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .backend import CkksBackend


class Ciphertext:
    """One CKKS ciphertext of ``slots`` values at some level and scale."""

    __slots__ = ("_backend", "handle")

    def __init__(self, backend: CkksBackend, handle: Any) -> None:
        self._backend = backend
        self.handle = handle

    def __repr__(self) -> str:
        return f"Ciphertext(level={self.level}, scale=2^{np.log2(self.scale):.2f})"

    def _wrap(self, handle: Any) -> Ciphertext:
        return Ciphertext(self._backend, handle)

    @property
    def level(self) -> int:
        return self._backend.level(self.handle)

    @property
    def scale(self) -> float:
        return self._backend.scale(self.handle)

    @property
    def next_prime(self) -> int:
        """The prime the next rescale of this ciphertext divides by."""
        return self._backend.prime(self.level)

    def __add__(self, other: Ciphertext) -> Ciphertext:
        return self._wrap(self._backend.add(self.handle, other.handle))

    def __sub__(self, other: Ciphertext) -> Ciphertext:
        return self._wrap(self._backend.sub(self.handle, other.handle))

    def __mul__(self, other: Ciphertext) -> Ciphertext:
        """Product, relinearised and rescaled (one level spent)."""
        b = self._backend
        return self._wrap(b.rescale(b.relinearize(b.multiply(self.handle, other.handle))))

    def rotate(self, steps: int) -> Ciphertext:
        """Slot ``i`` of the result holds slot ``i + steps`` of this one (cyclic)."""
        return self._wrap(self._backend.rotate(self.handle, steps))

    def at_level(self, level: int) -> Ciphertext:
        return self._wrap(self._backend.mod_switch_to(self.handle, level))

    def times(self, values: np.ndarray | float, *, scale: float | None = None) -> Ciphertext:
        """Multiply by plaintext values and rescale (one level spent).

        By default the values are encoded at the scale of the prime the rescale
        drops, so the result keeps exactly this ciphertext's scale; pass
        ``scale`` to land on another one (e.g. to match a product's scale).
        """
        b = self._backend
        enc = float(b.prime(self.level)) if scale is None else scale
        return self._wrap(b.rescale(b.multiply_values(self.handle, values, scale=enc)))

    def to_bytes(self) -> bytes:
        return self._backend.save(self.handle)


def product_sum(left: Sequence[Ciphertext], right: Sequence[Ciphertext]) -> Ciphertext:
    """``sum(l * r)`` left unrelinearised and unrescaled; finish it with :func:`finish`.

    Modular additions are exact, so product sums of disjoint terms -- computed
    block by block, or by different workers -- add up to exactly the
    ciphertext one :func:`inner` over all the terms would relinearise.
    """
    if len(left) != len(right) or not left:
        raise ValueError("product_sum() needs two equally long, non-empty sequences")
    b = left[0]._backend
    return Ciphertext(b, b.product_sum([x.handle for x in left], [y.handle for y in right]))


def finish(product: Ciphertext) -> Ciphertext:
    """Relinearise and rescale a :func:`product_sum` (one level spent)."""
    b = product._backend
    return Ciphertext(b, b.rescale(b.relinearize(product.handle)))


def inner(left: Sequence[Ciphertext], right: Sequence[Ciphertext]) -> Ciphertext:
    """``sum(l * r)`` with one relinearisation and one rescale for the whole sum.

    The saving that makes packed kernels cheap: products stay unrelinearised
    (size 3) while they are summed.
    """
    if len(left) != len(right) or not left:
        raise ValueError("inner() needs two equally long, non-empty sequences")
    b = left[0]._backend
    return Ciphertext(b, b.inner_product([x.handle for x in left], [y.handle for y in right]))
