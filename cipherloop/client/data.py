"""Encrypting data and models for the cloud, and reading models back.

Runs in: owner (and contributors, who hold only the public context).
Encryption is the owner's bulk cost (a public-key encryption is ~5 ms, one
per diagonal per block), so a data set is encrypted block by block in a
process pool (``n_jobs``; TenSEAL holds the GIL, so threads would not help):
each process loads the context once, in its initializer, and encrypts whole
blocks; results are put back in block order, so the output is the same as
one process's apart from CKKS's fresh randomness.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.context
import os
import tempfile
import threading
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..blobstore import BlobStore
from ..ckks import CiphertextBatch, Diagonals, PublicContext, Replicated, SampleBlocks, SecretContext
from ..ckks.context import _ContextBase
from ..ckks.layout import from_description
from ..errors import ShapeError
from ..learn.dataset import StreamedDataset, encode_block, write_manifest
from ..learn.model import EncryptedDataset, EncryptedModel
from ..learn.wire import encode_samples

Progress = Callable[[int], None]


def _as_xy(X: object, y: object, n_classes: int = 2) -> tuple[np.ndarray, np.ndarray]:
    Xa = np.asarray(X, dtype=np.float64)
    ya = np.asarray(y, dtype=np.float64).ravel()
    if Xa.ndim != 2:
        raise ShapeError("X must be a 2-D array of shape (n_samples, n_features)")
    if Xa.shape[0] != ya.shape[0]:
        raise ShapeError(f"X has {Xa.shape[0]} samples but y has {ya.shape[0]}")
    if not (np.all(np.isfinite(Xa)) and np.all(np.isfinite(ya))):
        raise ShapeError("X and y must be finite")
    if n_classes == 2 and not np.all((ya == 0) | (ya == 1)):
        raise ShapeError("y must hold binary labels 0/1")
    if not np.all((ya == np.rint(ya)) & (ya >= 0) & (ya < n_classes)):
        raise ShapeError(f"y must hold class indices 0..{n_classes - 1}")
    return Xa, ya


@dataclass(frozen=True)
class _Block:
    """One block's encryption: ciphertext bytes, or (with a store) the blobs' names."""

    features: tuple[bytes, ...] | str
    label: bytes | str | None


# The context each pool process loads once, in its initializer (per process, never shared).
_PROCESS_CONTEXT: dict[str, _ContextBase] = {}
# With fork, the data too: a pool process slices its blocks from the parent's arrays.
_PROCESS_DATA: dict[str, np.ndarray | None] = {}


def _load_context(kind: str, key: bytes) -> None:
    _PROCESS_CONTEXT["ctx"] = (SecretContext.load_secret(key) if kind == "secret"
                               else PublicContext.load(key))


def _inherit_context(context: _ContextBase, X: np.ndarray, y: np.ndarray | None) -> None:
    """A forked process already holds the parent's context and data: nothing to pickle."""
    _PROCESS_CONTEXT["ctx"] = context
    _PROCESS_DATA.update(X=X, y=y)


def _seal_block(ctx: _ContextBase, X: np.ndarray, y: np.ndarray | None, baby: int, lanes: int,
                store: str | None) -> _Block:
    """Pack and encrypt one block (``<= block`` rows); write it to ``store`` if given."""
    sub = Diagonals(X.shape[0], X.shape[1], ctx.params.slots, baby, lanes)
    feats = tuple(ctx.encrypt_bytes(a) for a in sub.pack(X))
    # Labels at level 0: only the enclave reads them, so they need no depth.
    label = None if y is None else ctx.encrypt_bytes(sub.samples.pack(y)[0], level=0)
    if store is None:
        return _Block(feats, label)
    blobs = BlobStore(Path(store))
    return _Block(blobs.put(encode_block(ctx, feats)),
                  None if label is None else blobs.put(encode_block(ctx, [label])))


@dataclass(frozen=True)
class _Spooled:
    """A block a pool process wrote to a spool file: its path and each ciphertext's length."""

    path: str
    features: tuple[int, ...]
    label: int | None

    def take(self) -> _Block:
        """Read the block back (one copy per ciphertext) and remove the file."""
        try:
            with open(self.path, "rb") as f:
                feats = tuple(f.read(n) for n in self.features)
                label = None if self.label is None else f.read(self.label)
        finally:
            os.unlink(self.path)
        return _Block(feats, label)


def _seal_in_process(X: np.ndarray | None, y: np.ndarray | None, rows: slice, baby: int,
                     lanes: int, store: str | None, spool: str | None) -> _Block | _Spooled:
    """A pool process's block. Ciphertext bytes come back through a spool file, not the
    result pipe: pickling ~200 MB per block through a pipe costs the parent more CPU
    than a file in memory (``/dev/shm``) does, and the parent shares the cores."""
    if X is None:  # forked: rows of the inherited arrays
        X, y = _PROCESS_DATA["X"], _PROCESS_DATA["y"]
        assert X is not None
        X, y = X[rows], None if y is None else y[rows]
    block = _seal_block(_PROCESS_CONTEXT["ctx"], X, y, baby, lanes, store)
    if spool is None or not isinstance(block.features, tuple) or isinstance(block.label, str):
        return block
    fd, path = tempfile.mkstemp(dir=spool)
    with os.fdopen(fd, "wb") as f:
        for item in block.features:
            f.write(item)
        if block.label is not None:
            f.write(block.label)
    return _Spooled(path, tuple(len(b) for b in block.features),
                    None if block.label is None else len(block.label))


def _spool_dir() -> str | None:
    """Memory-backed ``/dev/shm`` where the system has one, else the default temporary directory."""
    shm = Path("/dev/shm")
    return str(shm) if shm.is_dir() and os.access(shm, os.W_OK | os.X_OK) else None


def _n_processes(n_jobs: int | None, n_blocks: int) -> int:
    if n_jobs is None or n_jobs == 0:
        n_jobs = 1
    cores = os.cpu_count() or 1
    n = cores + 1 + n_jobs if n_jobs < 0 else n_jobs  # -1: every core, -2: all but one
    return max(1, min(n, n_blocks))


def _start_method() -> multiprocessing.context.BaseContext:
    """Fork when this process has one thread (~0.1 s to start a pool); spawn otherwise.

    Spawning costs seconds per pool (a fresh interpreter imports numpy and
    TenSEAL), a quarter of encrypting 16,384 x 768 on two cores; but forking
    a process that runs other threads (a Ray driver, a heartbeat) may copy a
    lock some thread holds, so those processes spawn.
    """
    one_thread = threading.active_count() == 1
    if one_thread and "fork" in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("spawn")


def _seal_blocks(context: _ContextBase, X: np.ndarray, y: np.ndarray | None, layout: Diagonals,
                 *, n_jobs: int | None, store: BlobStore | None,
                 progress: Progress | None) -> list[_Block]:
    """Every block of ``(X, y)`` encrypted, in block order, on ``n_jobs`` processes."""
    S, C = layout.block, layout.n_blocks
    root = None if store is None else str(store.root)
    parts = [(X[c * S:(c + 1) * S], None if y is None else y[c * S:(c + 1) * S]) for c in range(C)]
    per_block = layout.per_block + (0 if y is None else 1)
    n = _n_processes(n_jobs, C)
    out: list[_Block] = []
    if n == 1:
        for xb, yb in parts:
            out.append(_seal_block(context, xb, yb, layout.baby, layout.lanes, root))
            if progress is not None:
                progress(per_block)
        return out
    method = _start_method()
    init: Callable[..., None] = _inherit_context
    args: tuple[object, ...] = (context, X, y)  # with fork, initargs are inherited, never pickled
    if method.get_start_method() != "fork":
        init, args = _load_context, (
            ("secret", context.export_secret()) if isinstance(context, SecretContext)
            else ("public", context.serialize() if isinstance(context, PublicContext) else b""))
    with tempfile.TemporaryDirectory(prefix="cipherloop-spool-", dir=_spool_dir()) as spool, \
            ProcessPoolExecutor(max_workers=n, mp_context=method, initializer=init,
                                initargs=args) as pool:
        forked = init is _inherit_context
        futures = [pool.submit(_seal_in_process, None if forked else xb,
                               None if forked else yb, slice(c * S, (c + 1) * S), layout.baby,
                               layout.lanes, root, None if root is not None else spool)
                   for c, (xb, yb) in enumerate(parts)]
        for fut in futures:
            done = fut.result()
            out.append(done.take() if isinstance(done, _Spooled) else done)
            if progress is not None:
                progress(per_block)
    return out


def encrypt_batches(context: _ContextBase, X: object, y: object, *,
                    progress: Progress | None = None, n_jobs: int | None = None,
                    n_classes: int = 2, lanes: int = 1) -> tuple[CiphertextBatch, CiphertextBatch]:
    """Pack ``X`` in giant-step diagonals and ``y`` in sample blocks; encrypt to wire batches.

    With the owner's secret context the ciphertexts are seeded (half the
    bytes); a contributor's public context encrypts with the public key.
    Labels are encrypted at level 0: only the enclave ever reads them, so they
    need no multiplicative depth and travel at a fraction of the size. With
    ``n_classes > 2`` labels are class indices ``0..n_classes-1`` (one value
    per sample, whatever ``K``; the enclave one-hots them). ``n_jobs``
    processes encrypt blocks in parallel (``-1``: every core). ``lanes`` sizes
    the blocks to mini-batches (:meth:`Diagonals.lanes_for`; see :class:`Diagonals`).
    """
    Xa, ya = _as_xy(X, y, n_classes)
    layout = Diagonals.plan(Xa.shape[0], Xa.shape[1], context.params.slots, lanes)
    blocks = _seal_blocks(context, Xa, ya, layout, n_jobs=n_jobs, store=None, progress=progress)
    ident = (context.params.digest(), context.key_id)
    feats = tuple(b for blk in blocks if isinstance(blk.features, tuple) for b in blk.features)
    labels = tuple(blk.label for blk in blocks if isinstance(blk.label, bytes))
    return (CiphertextBatch(*ident, layout.describe(), feats),
            CiphertextBatch(*ident, layout.samples.describe(), labels))


def encrypt_to_store(context: _ContextBase, X: object, y: object, store: BlobStore, *,
                     progress: Progress | None = None, n_jobs: int | None = None,
                     n_classes: int = 2, lanes: int = 1) -> StreamedDataset:
    """Encrypt ``(X, y)`` straight into per-block blobs; the data set streams from ``store``.

    The pool's processes write their blocks themselves, so the caller never
    holds more than a block's plaintext per process: the way to encrypt a data
    set larger than memory for the estimator or a Ray engine.
    """
    Xa, ya = _as_xy(X, y, n_classes)
    layout = Diagonals.plan(Xa.shape[0], Xa.shape[1], context.params.slots, lanes)
    blocks = _seal_blocks(context, Xa, ya, layout, n_jobs=n_jobs, store=store, progress=progress)
    manifest = write_manifest(context, store, layout, context.params.top_level,
                              [str(b.features) for b in blocks], [str(b.label) for b in blocks])
    return StreamedDataset.open(context, store, manifest)


def encrypt_dataset(context: _ContextBase, X: object, y: object, *,
                    progress: Progress | None = None, n_jobs: int | None = None,
                    n_classes: int = 2, lanes: int = 1) -> EncryptedDataset:
    """:func:`encrypt_batches`, loaded as the host would load them."""
    features, labels = encrypt_batches(context, X, y, progress=progress, n_jobs=n_jobs,
                                       n_classes=n_classes, lanes=lanes)
    return EncryptedDataset.from_batches(context, features, labels)


def upload_body(context: _ContextBase, X: object, y: object, *,
                progress: Progress | None = None, n_jobs: int | None = None,
                n_classes: int = 2) -> bytes:
    """The body of a sample upload to the service."""
    return encode_samples(*encrypt_batches(context, X, y, progress=progress, n_jobs=n_jobs,
                                           n_classes=n_classes))


def encrypt_features(context: _ContextBase, X: object, *, n_jobs: int | None = None,
                     lanes: int = 1) -> CiphertextBatch:
    """Features alone, for encrypted inference (``n_jobs`` as :func:`encrypt_batches`)."""
    Xa = np.asarray(X, dtype=np.float64)
    if Xa.ndim != 2 or not np.all(np.isfinite(Xa)):
        raise ShapeError("X must be a finite 2-D array of shape (n_samples, n_features)")
    layout = Diagonals.plan(Xa.shape[0], Xa.shape[1], context.params.slots, lanes)
    blocks = _seal_blocks(context, Xa, None, layout, n_jobs=n_jobs, store=None, progress=None)
    items = tuple(b for blk in blocks if isinstance(blk.features, tuple) for b in blk.features)
    return CiphertextBatch(context.params.digest(), context.key_id, layout.describe(), items)


def decrypt_scores(context: SecretContext, scores: bytes) -> np.ndarray:
    """The owner reads encrypted inference results: logits, one per sample (binary model),
    or an ``(n_samples, n_classes)`` array (the blocks of each class in turn)."""
    batch = CiphertextBatch.from_bytes(scores)
    layout = from_description(batch.layout)
    if not isinstance(layout, SampleBlocks):
        raise ShapeError("scores must be sample blocks")
    n_classes, rest = divmod(len(batch.items), layout.n_blocks)
    if rest or n_classes < 1:
        raise ShapeError("scores must hold whole sets of sample blocks")
    cts, C, n = batch.open(context), layout.n_blocks, layout.n_samples
    # Scores are the host's products: with lanes, each sample's score is split over its lanes.
    cols = [layout.fold(np.stack([context.decrypt(c) for c in cts[k * C:(k + 1) * C]]))[:n]
            for k in range(n_classes)]
    return cols[0] if n_classes == 1 else np.stack(cols, axis=1)


def dataset_size(n_samples: int, n_features: int, slots: int, lanes: int = 1) -> int:
    """Ciphertexts :func:`encrypt_dataset` makes (for progress bars)."""
    layout = Diagonals.plan(n_samples, n_features, slots, lanes)
    return layout.n_blocks * (layout.per_block + 1)


def encrypt_model(context: _ContextBase, coef: object, intercept: float | None = 0.0
                  ) -> EncryptedModel:
    """Encrypt initial weights (and intercept, unless ``None``) in the replicated layout."""
    w = np.asarray(coef, dtype=np.float64).ravel()
    if not np.all(np.isfinite(w)):
        raise ShapeError("coefficients must be finite")
    layout = Replicated.for_features(w.shape[0], context.params.slots)
    enc_b = None
    if intercept is not None:
        enc_b = context.encrypt(Replicated(1, 1, layout.slots).pack(float(intercept)))
    return EncryptedModel(layout, context.encrypt(layout.pack(w)), enc_b)


def decrypt_model(context: SecretContext, model: EncryptedModel) -> tuple[np.ndarray, float]:
    """The owner reads weights and intercept back (replicas averaged)."""
    coef = model.layout.unpack(context.decrypt(model.coef))
    b = 0.0
    if model.intercept is not None:
        b = float(Replicated(1, 1, model.layout.slots).unpack(context.decrypt(model.intercept))[0])
    return coef, b
