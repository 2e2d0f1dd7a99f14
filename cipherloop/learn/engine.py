"""Where the host's kernels run: the seam between the refining loop and the compute.

Runs in: host. :class:`LocalEngine` runs the kernels in this process. The loop
only ever asks an engine for per-block logits and a folded gradient, both
linear in the data, so an engine that shards blocks over worker processes or
a Ray cluster plugs in here without touching the loop. (A two-process
block-sharded engine was measured on the 2-core machine and was no faster:
the baby-step rotations and per-diagonal relinearisations don't split by
block, and the enclave process already keeps the second core busy.)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from ..ckks import Ciphertext, CiphertextBatch
from ..ckks.context import _ContextBase
from . import kernels
from .model import EncryptedDataset


class Engine(Protocol):
    """The two packed products of a logistic step."""

    def logits(self, data: EncryptedDataset, u_w: Ciphertext, u_b: Ciphertext | None,
               blocks: Sequence[int]) -> list[Ciphertext]: ...

    def gradient(self, data: EncryptedDataset, errors: CiphertextBatch,
                 blocks: Sequence[int]) -> Ciphertext: ...

    def close(self) -> None: ...


class LocalEngine:
    """Kernels in the calling process."""

    def __init__(self, context: _ContextBase) -> None:
        self.context = context

    def logits(self, data: EncryptedDataset, u_w: Ciphertext, u_b: Ciphertext | None,
               blocks: Sequence[int]) -> list[Ciphertext]:
        return kernels.logits(data.features, u_w, data.layout, blocks, u_b)

    def gradient(self, data: EncryptedDataset, errors: CiphertextBatch,
                 blocks: Sequence[int]) -> Ciphertext:
        e = errors.open(self.context, count=len(blocks) * data.layout.giant)
        return kernels.fold_replicas(kernels.gradient_partial(data.features, e, data.layout, blocks),
                                     data.layout)

    def close(self) -> None:
        pass
