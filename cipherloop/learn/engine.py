"""Where the host's kernels run: the seam between the refining loop and the compute.

Runs in: host. The loop only ever asks an engine for per-block logits and a
folded gradient, both linear in the data, so engines differ only in where
blocks live and who multiplies them:

* :class:`LocalEngine` runs the kernels in this process and reads a streamed
  data set's blocks from the blob store when a pass needs them, keeping at
  most a byte budget of them loaded: a round's memory is the model plus that
  working set, whatever the number of samples.
* :class:`cipherloop.learn.ray_engine.RayEngine` shards the blocks over Ray
  actors that read them from the store themselves.

Both compute every block's products the same way and add them up exactly
(modular additions), so on the same ciphertexts they return identical
ciphertexts. (A two-process block-sharded engine was measured on the 2-core
machine and was no faster for binary steps: the enclave process already keeps
the second core busy. Multiclass steps, whose ``K`` classes leave the enclave
idle most of a step, share their classes over forked processes instead:
:mod:`.fanout`.)
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Protocol

from ..ckks import Ciphertext, CiphertextBatch
from ..ckks.context import _ContextBase
from ..errors import InvalidCiphertext
from . import kernels
from .dataset import Dataset

DEFAULT_WORKING_SET = 1 << 30  # bytes of loaded data blocks an engine keeps at most


class Engine(Protocol):
    """The two packed products of a logistic step."""

    def logits(self, data: Dataset, u_w: Ciphertext, u_b: Ciphertext | None,
               blocks: Sequence[int]) -> list[Ciphertext]: ...

    def gradient(self, data: Dataset, errors: CiphertextBatch,
                 blocks: Sequence[int]) -> Ciphertext: ...

    def close(self) -> None: ...


class BlockCache:
    """Loaded blocks, least recently used out first, at most ``capacity`` of them.

    Evicts *before* loading, so the peak is ``capacity`` blocks plus one
    block's bytes while it is read. Blocks already in memory (no key) pass
    through uncached.
    """

    def __init__(self) -> None:
        self._items: OrderedDict[str, Sequence[Ciphertext]] = OrderedDict()
        self.loads = 0

    def get(self, data: Dataset, c: int, capacity: int) -> Sequence[Ciphertext]:
        key = data.block_key(c)
        if key is None:
            return data.block(c)
        hit = self._items.get(key)
        if hit is not None:
            self._items.move_to_end(key)
            return hit
        while self._items and len(self._items) >= capacity:
            self._items.popitem(last=False)
        block = data.block(c)
        self.loads += 1
        self._items[key] = block
        return block

    def clear(self) -> None:
        self._items.clear()


def resident_blocks(data: Dataset, budget: int) -> int:
    """How many of ``data``'s blocks fit ``budget`` bytes (at least one)."""
    nbytes = getattr(data, "block_nbytes", None)
    return max(1, budget // nbytes()) if callable(nbytes) else 1


def open_errors(context: _ContextBase, errors: CiphertextBatch, n_blocks: int, giant: int
                ) -> list[bytes]:
    """Check the enclave's error batch (identity and count); its items, ``giant`` per block."""
    errors.check(context)
    if len(errors.items) != n_blocks * giant:
        raise InvalidCiphertext(f"expected {n_blocks * giant} ciphertexts, got {len(errors.items)}")
    return list(errors.items)


class LocalEngine:
    """Kernels in the calling process, over blocks read as they are needed.

    Parameters
    ----------
    context : the context ciphertexts are loaded under.
    working_set : bytes of loaded data blocks kept between passes (at least
        one block is). Passes alternate direction, so the blocks the last pass
        ended on are the first the next one needs.
    """

    def __init__(self, context: _ContextBase, *, working_set: int = DEFAULT_WORKING_SET) -> None:
        self.context = context
        self.working_set = working_set
        self._cache = BlockCache()
        self._forward = True

    def __repr__(self) -> str:
        return f"LocalEngine(working_set={self.working_set})"

    @property
    def block_loads(self) -> int:
        """Blocks read from the store so far (tests and benchmarks)."""
        return self._cache.loads

    def _order(self, blocks: Sequence[int]) -> list[tuple[int, int]]:
        order = list(enumerate(blocks))
        if not self._forward:
            order.reverse()
        self._forward = not self._forward
        return order

    def logits(self, data: Dataset, u_w: Ciphertext, u_b: Ciphertext | None,
               blocks: Sequence[int]) -> list[Ciphertext]:
        capacity = resident_blocks(data, self.working_set)
        out: list[Ciphertext | None] = [None] * len(blocks)
        terms: tuple[list[Ciphertext], Ciphertext | None] | None = None
        for i, c in self._order(blocks):
            block = self._cache.get(data, c, capacity)
            if terms is None:
                terms = kernels.model_terms(u_w, u_b, data.layout, block[0].scale)
            out[i] = kernels.logits_block(block, terms[0], data.layout, 0, terms[1])
            del block  # the cache alone holds it: evicting it before the next load frees it
        return [z for z in out if z is not None]

    def gradient(self, data: Dataset, errors: CiphertextBatch,
                 blocks: Sequence[int]) -> Ciphertext:
        layout = data.layout
        G = layout.giant
        items = open_errors(self.context, errors, len(blocks), G)
        capacity = resident_blocks(data, self.working_set)
        acc: list[Ciphertext] | None = None
        for i, c in self._order(blocks):
            block = self._cache.get(data, c, capacity)
            e = [self.context.load_ciphertext(b) for b in items[i * G:(i + 1) * G]]
            t = kernels.gradient_terms(block, e, layout)
            del block, e
            acc = t if acc is None else kernels.add_terms(acc, t)
        assert acc is not None
        return kernels.fold_replicas(kernels.finish_terms(acc, layout), layout)

    def close(self) -> None:
        self._cache.clear()
