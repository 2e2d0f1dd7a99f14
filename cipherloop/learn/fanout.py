"""A multiclass step's classes on more than one core: forked helpers that take a share each.

Runs in: host. SEAL holds Python's GIL, so threads cannot overlap products.
The ``K`` classes of a softmax step are independent (``z_k = X @ u_k`` and
``g_k = X.T @ e_k`` share only the feature ciphertexts), so ``n_jobs - 1``
forked helper processes each take a share of the classes while this process
computes the first share. The helpers inherit the context and the data sets
at fork, so nothing large is pickled; per step only the model vectors, the
logits and the errors of their classes cross a pipe, as ciphertext bytes.
Same kernels on the same inputs: the ciphertexts are bit-identical to a
serial step's, and the helpers' operation counts are added to this
process's, so a step's counts do not depend on ``n_jobs``.

Fork only: a process running other threads (a Ray driver, a server) may
hold a lock a forked copy could never release, so there the step stays
serial (:func:`fork_context`).
"""

from __future__ import annotations

import ctypes
import multiprocessing
import multiprocessing.context
import os
import signal
import sys
import threading
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any

from ..ckks import Ciphertext, CiphertextBatch, Diagonals
from ..ckks.context import _ContextBase
from . import kernels
from .dataset import Dataset

# What a helper inherited at fork (per process, never shared).
_INHERITED: dict[str, Any] = {}


def fork_context() -> multiprocessing.context.BaseContext | None:
    """The fork start method where it is safe here: this process runs one thread."""
    if threading.active_count() == 1 and "fork" in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("fork")
    return None


def resolve_jobs(n_jobs: int | None) -> int:
    """scikit-learn's convention: ``None`` is 1, ``-1`` every core, ``-2`` all but one."""
    if n_jobs is None or n_jobs == 0:
        return 1
    cores = os.cpu_count() or 1
    return max(1, cores + 1 + n_jobs if n_jobs < 0 else n_jobs)


def shares(n: int, parts: int) -> list[range]:
    """``range(n)`` cut into ``parts`` contiguous, near-equal, non-empty shares."""
    parts = max(1, min(parts, n))
    bounds = [n * i // parts for i in range(parts + 1)]
    return [range(bounds[i], bounds[i + 1]) for i in range(parts)]


def window_features(data: Dataset, blocks: Sequence[int]) -> list[Ciphertext]:
    """The feature ciphertexts of ``blocks`` only, in block-local order (block ``i`` of the
    window at ``layout.index(i, b1, b2)``): a step reads nothing outside its window."""
    return [ct for c in blocks for ct in data.block(c)]


def class_products(features: Sequence[Ciphertext], layout: Diagonals,
                   weights: Sequence[Ciphertext], intercepts: Sequence[Ciphertext] | None,
                   n_blocks: int) -> list[list[Ciphertext]]:
    """``X @ w_k + b_k`` for each weight vector over the window's blocks, reusing the diagonals."""
    bias: Sequence[Ciphertext | None] = intercepts if intercepts is not None else [None] * len(weights)
    local = list(range(n_blocks))
    return [kernels.logits(features, w, layout, local, b) for w, b in zip(weights, bias, strict=True)]


def class_gradients(context: _ContextBase, features: Sequence[Ciphertext], layout: Diagonals,
                    errors: Sequence[bytes], n_blocks: int) -> list[Ciphertext]:
    """``X.T @ e_k`` for each error batch the enclave returned (pre-rotated for ``layout``)."""
    local = list(range(n_blocks))
    out = []
    for raw in errors:
        e = CiphertextBatch.from_bytes(raw).open(context, count=n_blocks * layout.giant)
        out.append(kernels.fold_replicas(kernels.gradient_partial(features, e, layout, local),
                                         layout))
    return out


# ---------------------------------------------------------------- in the helpers
def _inherit(driver: int, context: _ContextBase, datasets: Sequence[Dataset]) -> None:
    _die_with_driver(driver)
    _INHERITED.update(context=context, datasets=list(datasets))


def _die_with_driver(driver: int) -> None:
    """A helper keeps nothing worth saving: it dies with the process that forked it, even
    one killed by SIGKILL that never shut its pool down (Linux's ``PR_SET_PDEATHSIG``).

    The pool's pipes cannot tell it: a forked helper holds copies of their write ends.
    """
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL), 0, 0, 0)  # PR_SET_PDEATHSIG
    if os.getppid() != driver:  # the driver died before the line above took effect
        os._exit(1)


def _helper_products(which: int, blocks: list[int], weights: list[bytes],
                     intercepts: list[bytes] | None) -> tuple[list[list[bytes]], Counter[str]]:
    ctx: _ContextBase = _INHERITED["context"]
    data: Dataset = _INHERITED["datasets"][which]
    before = Counter(ctx.backend.counts)
    w = [ctx.load_ciphertext(b) for b in weights]
    b = None if intercepts is None else [ctx.load_ciphertext(x) for x in intercepts]
    z = class_products(window_features(data, blocks), data.layout, w, b, len(blocks))
    return [[ct.to_bytes() for ct in zk] for zk in z], ctx.backend.counts - before


def _helper_gradients(which: int, blocks: list[int], errors: list[bytes]
                      ) -> tuple[list[bytes], Counter[str]]:
    ctx: _ContextBase = _INHERITED["context"]
    data: Dataset = _INHERITED["datasets"][which]
    before = Counter(ctx.backend.counts)
    g = class_gradients(ctx, window_features(data, blocks), data.layout, errors, len(blocks))
    return [ct.to_bytes() for ct in g], ctx.backend.counts - before


# ------------------------------------------------------------------ in the driver
class ClassFanout:
    """Per-class products of a refinement's steps over this process and forked helpers.

    Create it once per refinement, after the data sets are loaded (helpers
    inherit them), and close it at the end; :func:`serial` when ``n_jobs``
    is 1 or forking is unsafe here.
    """

    def __init__(self, context: _ContextBase, datasets: Sequence[Dataset], n_jobs: int,
                 method: multiprocessing.context.BaseContext) -> None:
        self.context = context
        self.datasets = list(datasets)
        self.n_jobs = n_jobs
        self._pool = ProcessPoolExecutor(max_workers=n_jobs - 1, mp_context=method,
                                         initializer=_inherit,
                                         initargs=(os.getpid(), context, self.datasets))

    def __repr__(self) -> str:
        return f"ClassFanout(n_jobs={self.n_jobs})"

    def _which(self, data: Dataset) -> int:
        for i, d in enumerate(self.datasets):
            if d is data:
                return i
        raise ValueError("data set not given to this fan-out")

    def _merge(self, counts: Counter[str]) -> None:
        self.context.backend.counts.update(counts)

    def products(self, data: Dataset, blocks: Sequence[int], features: Sequence[Ciphertext],
                 weights: Sequence[Ciphertext], intercepts: Sequence[Ciphertext] | None
                 ) -> list[list[Ciphertext]]:
        """:func:`class_products` for every class, the first share here, the rest in helpers."""
        which, cuts = self._which(data), shares(len(weights), self.n_jobs)
        futures: list[Future[tuple[list[list[bytes]], Counter[str]]]] = [
            self._pool.submit(_helper_products, which, list(blocks),
                              [w.to_bytes() for w in weights[r.start:r.stop]],
                              None if intercepts is None else
                              [b.to_bytes() for b in intercepts[r.start:r.stop]])
            for r in cuts[1:]]
        first = cuts[0]
        out = class_products(features, data.layout, weights[first.start:first.stop],
                             None if intercepts is None else intercepts[first.start:first.stop],
                             len(blocks))
        for fut in futures:
            raws, counts = fut.result()
            self._merge(counts)
            out.extend([self.context.load_ciphertext(b) for b in zk] for zk in raws)
        return out

    def gradients(self, data: Dataset, blocks: Sequence[int], features: Sequence[Ciphertext],
                  errors: Sequence[bytes]) -> list[Ciphertext]:
        """:func:`class_gradients` for every class, shared out as :meth:`products`."""
        which, cuts = self._which(data), shares(len(errors), self.n_jobs)
        futures: list[Future[tuple[list[bytes], Counter[str]]]] = [
            self._pool.submit(_helper_gradients, which, list(blocks), list(errors[r.start:r.stop]))
            for r in cuts[1:]]
        first = cuts[0]
        out = class_gradients(self.context, features, data.layout,
                              errors[first.start:first.stop], len(blocks))
        for fut in futures:
            raws, counts = fut.result()
            self._merge(counts)
            out.extend(self.context.load_ciphertext(b) for b in raws)
        return out

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


class SerialClasses:
    """Every class in this process (``n_jobs=1``, or where forking is unsafe)."""

    def __init__(self, context: _ContextBase) -> None:
        self.context = context

    def products(self, data: Dataset, blocks: Sequence[int], features: Sequence[Ciphertext],
                 weights: Sequence[Ciphertext], intercepts: Sequence[Ciphertext] | None
                 ) -> list[list[Ciphertext]]:
        return class_products(features, data.layout, weights, intercepts, len(blocks))

    def gradients(self, data: Dataset, blocks: Sequence[int], features: Sequence[Ciphertext],
                  errors: Sequence[bytes]) -> list[Ciphertext]:
        return class_gradients(self.context, features, data.layout, errors, len(blocks))

    def close(self) -> None:
        return None


ClassRunner = ClassFanout | SerialClasses


def class_runner(context: _ContextBase, datasets: Sequence[Dataset], n_jobs: int | None
                 ) -> ClassRunner:
    """A fan-out over ``n_jobs`` processes where that is possible, else the serial runner."""
    jobs = resolve_jobs(n_jobs)
    method = fork_context() if jobs > 1 else None
    if method is None:
        return SerialClasses(context)
    return ClassFanout(context, datasets, jobs, method)
