"""The refining loop's kernels on a Ray cluster: actors own shards of a data set's blocks.

Runs in: host -- the driver (beside the one enclave process) and Ray worker
processes on any number of machines. Needs the optional extra
``cipherloop[ray]``; nothing else in cipherloop imports this module.

How a step runs:

* **Data never travels through the driver.** A data set is named by its
  blocks' blob names (:class:`~cipherloop.learn.dataset.StreamedDataset`);
  each block belongs to one actor (given on first sight to the actor owning
  fewest), which reads it from the blob store by content address itself (a
  path all nodes share) and keeps it loaded (within its own working set) for
  the next steps.
* **The model is broadcast** through Ray's object store each step: one
  ``ray.put`` of the look-ahead weights (and intercept) that every actor
  reads. The public context goes the same way, once per engine and key;
  each actor loads it once (TenSEAL objects don't pickle: bytes travel).
* **Logits come back** one ciphertext per block; the enclave step stays on
  the driver (one enclave process serves all workers).
* **Gradient partials are reduced on the workers**: each actor sums its
  blocks' unrelinearised terms, pairs of actors add theirs in a tree (the
  partial moves actor to actor, not through the driver), and the root
  relinearises, rotates and folds once, so the driver receives one
  ciphertext. The sums are exact modular additions, so the result is the
  same ciphertext :class:`~cipherloop.learn.engine.LocalEngine` computes.

Faults: actors are restartable and their methods pure (block caches are only
caches), so Ray replaces a worker that dies mid-step and retries its task on
the new one -- nothing is lost. If that is impossible (the cluster is gone,
retries run out) a step raises :class:`~cipherloop.errors.EngineUnavailable`,
the round is abandoned before any version is written and the service retries
it later. An unreachable cluster is the same error, at connect time.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray
import ray.exceptions

from ..blobstore import BlobStore
from ..ckks import Ciphertext, CiphertextBatch, Diagonals, PublicContext
from ..ckks.context import _ContextBase
from ..ckks.layout import from_description
from ..errors import EngineUnavailable, ShapeError
from . import kernels
from .dataset import Dataset, StreamedDataset
from .engine import DEFAULT_WORKING_SET, BlockCache, open_errors, resident_blocks

_RAY_FAILURES = (ray.exceptions.RayError, ConnectionError)


@dataclass
class Traffic:
    """Bytes between driver and workers (and worker to worker), for benchmarks."""

    to_workers: int = 0
    from_workers: int = 0
    between_workers: int = 0
    steps: int = 0
    per_call: list[dict[str, int]] = field(default_factory=list)


class ShardWorker:
    """One Ray actor: loads contexts and blocks once, computes its blocks' products.

    Every method is a pure function of its arguments (the caches only save
    reloads), so a restarted actor can redo any call.
    """

    def __init__(self, working_set: int) -> None:
        self._contexts: dict[str, PublicContext] = {}
        self._stores: dict[str, BlobStore] = {}
        self._cache = BlockCache()
        self._working_set = working_set
        self._received = 0

    def pid(self) -> int:
        return os.getpid()

    def _context(self, key_id: str, ref: list[Any]) -> PublicContext:
        ctx = self._contexts.get(key_id)
        if ctx is None:
            ctx = PublicContext.load(ray.get(ref[0]))
            self._contexts[key_id] = ctx
        return ctx

    def _data(self, ctx: PublicContext, desc: dict[str, Any]) -> StreamedDataset:
        root = str(desc["store"])
        store = self._stores.setdefault(root, BlobStore(Path(root)))
        layout = from_description(desc["layout"])
        if not isinstance(layout, Diagonals):
            raise ShapeError("features must be in a diagonal layout")
        return StreamedDataset(ctx, store, layout, int(desc["level"]), tuple(desc["features"]),
                               tuple(desc["labels"]))

    def logits(self, key_id: str, ctx_ref: list[Any], desc: dict[str, Any], blocks: list[int],
               w: bytes, b: bytes | None) -> list[bytes]:
        ctx = self._context(key_id, ctx_ref)
        data = self._data(ctx, desc)
        capacity = resident_blocks(data, self._working_set)
        u_w = ctx.load_ciphertext(w)
        u_b = None if b is None else ctx.load_ciphertext(b)
        out: list[bytes] = []
        terms = None
        for c in blocks:
            block = self._cache.get(data, c, capacity)
            if terms is None:
                terms = kernels.model_terms(u_w, u_b, data.layout, block[0].scale)
            out.append(kernels.logits_block(block, terms[0], data.layout, 0, terms[1]).to_bytes())
            del block  # the cache alone holds it
        return out

    def gradient(self, key_id: str, ctx_ref: list[Any], desc: dict[str, Any], blocks: list[int],
                 errors: list[bytes]) -> list[bytes]:
        ctx = self._context(key_id, ctx_ref)
        data = self._data(ctx, desc)
        capacity = resident_blocks(data, self._working_set)
        G = data.layout.giant
        acc: list[Ciphertext] | None = None
        for i, c in reversed(list(enumerate(blocks))):  # start where logits ended
            block = self._cache.get(data, c, capacity)
            e = [ctx.load_ciphertext(x) for x in errors[i * G:(i + 1) * G]]
            t = kernels.gradient_terms(block, e, data.layout)
            del block, e
            acc = t if acc is None else kernels.add_terms(acc, t)
        assert acc is not None
        return [t.to_bytes() for t in acc]

    def add(self, key_id: str, ctx_ref: list[Any], mine: list[bytes], theirs: list[bytes]
            ) -> list[bytes]:
        ctx = self._context(key_id, ctx_ref)
        self._received += sum(len(x) for x in theirs)
        a = [Ciphertext(ctx.backend, ctx.backend.load_product(x)) for x in mine]
        b = [Ciphertext(ctx.backend, ctx.backend.load_product(x)) for x in theirs]
        return [t.to_bytes() for t in kernels.add_terms(a, b)]

    def finish(self, key_id: str, ctx_ref: list[Any], terms: list[bytes],
               layout: dict[str, Any]) -> bytes:
        ctx = self._context(key_id, ctx_ref)
        lay = from_description(layout)
        assert isinstance(lay, Diagonals)
        acc = [Ciphertext(ctx.backend, ctx.backend.load_product(x)) for x in terms]
        return kernels.fold_replicas(kernels.finish_terms(acc, lay), lay).to_bytes()

    def received(self) -> int:
        """Partial-gradient bytes this actor received from other actors."""
        return self._received


def _check_reachable(address: str, timeout: float) -> None:
    """Fail fast, with a clear message, when nothing listens at a cluster's address."""
    if address in ("auto", "local") or address.startswith("ray://"):
        return
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout):
            pass
    except (OSError, ValueError):
        raise EngineUnavailable(f"no Ray cluster is reachable at {address}") from None


class RayEngine:
    """:class:`~cipherloop.learn.engine.Engine` on Ray actors that own shards of the blocks.

    Parameters
    ----------
    address : str or None
        A running cluster's address (``host:port`` of its head); ``None``
        joins the cluster this process already joined, or starts a local one.
    n_workers : int
        Actors the blocks are sharded over.
    cpus_per_worker : float
        Ray CPUs each actor reserves (actors spread over nodes).
    working_set : int
        Bytes of loaded blocks each actor keeps (at least one block).
    max_restarts : int
        Times Ray may restart a dead actor (its calls are retried on the new one).
    connect_timeout : float
        Seconds to wait for the cluster's address to answer.

    Raises
    ------
    EngineUnavailable
        On connect (:meth:`connect`, or the first step): the cluster is unreachable.
    """

    def __init__(self, *, address: str | None = None, n_workers: int = 2,
                 cpus_per_worker: float = 1.0, working_set: int = 64 * DEFAULT_WORKING_SET,
                 max_restarts: int = 4, connect_timeout: float = 10.0) -> None:
        if n_workers < 1:
            raise ValueError("n_workers must be at least 1")
        self.address = address
        self.n_workers = n_workers
        self.cpus_per_worker = cpus_per_worker
        self.working_set = working_set
        self.max_restarts = max_restarts
        self.connect_timeout = connect_timeout
        self.traffic = Traffic()
        self._actors: list[Any] = []
        self._contexts: dict[str, list[Any]] = {}
        self._owner: dict[str, int] = {}  # block blob name -> actor that owns it
        self._started_ray = False

    def __repr__(self) -> str:
        return f"RayEngine(address={self.address!r}, n_workers={self.n_workers})"

    # -- cluster ------------------------------------------------------------------
    def connect(self) -> RayEngine:
        """Join the cluster and start the actors (idempotent)."""
        if self._actors:
            return self
        if self.address is not None:
            _check_reachable(self.address, self.connect_timeout)
        try:
            if not ray.is_initialized():
                ray.init(address=self.address, include_dashboard=False, log_to_driver=False,
                         configure_logging=False)
                self._started_ray = True
            actor = ray.remote(num_cpus=self.cpus_per_worker, max_restarts=self.max_restarts,
                               max_task_retries=self.max_restarts)(ShardWorker)
            self._actors = [actor.options(scheduling_strategy="SPREAD").remote(self.working_set)
                            for _ in range(self.n_workers)]
            ray.get([a.pid.remote() for a in self._actors], timeout=300)
        except EngineUnavailable:
            raise
        except (*_RAY_FAILURES, TimeoutError) as exc:
            self._actors = []
            raise EngineUnavailable(f"the Ray cluster did not start its workers "
                                    f"({type(exc).__name__})") from None
        return self

    def _lost(self, exc: BaseException) -> EngineUnavailable:
        """A worker is gone for good: drop every actor, so the next round starts a fresh set."""
        for a in self._actors:
            with contextlib.suppress(Exception):  # already dead, or the cluster is gone
                ray.kill(a)
        self._actors = []
        self._contexts.clear()
        self._owner.clear()
        return EngineUnavailable(f"a Ray worker was lost and not replaced ({type(exc).__name__})")

    def worker_pids(self) -> list[int]:
        """Process ids of the actors (tests kill one)."""
        return [int(p) for p in ray.get([a.pid.remote() for a in self.connect()._actors])]

    def close(self) -> None:
        """Stop the actors (and Ray, if this engine started it)."""
        for a in self._actors:
            ray.kill(a)
        self._actors = []
        self._contexts.clear()
        self._owner.clear()
        if self._started_ray:
            ray.shutdown()
            self._started_ray = False

    # -- the engine protocol --------------------------------------------------------
    def _streamed(self, data: Dataset) -> StreamedDataset:
        if not isinstance(data, StreamedDataset):
            raise ShapeError("RayEngine reads data sets from a blob store: pass a StreamedDataset "
                             "(see cipherloop.client.data.encrypt_to_store)")
        return data

    def _context_ref(self, context: _ContextBase) -> list[Any]:
        ref = self._contexts.get(context.key_id)
        if ref is None:
            raw = (context.serialize() if isinstance(context, PublicContext)
                   else context.public_context().serialize())  # type: ignore[attr-defined]
            ref = [ray.put(raw)]
            self.traffic.to_workers += len(raw) * self.n_workers
            self._contexts[context.key_id] = ref
        return ref

    def _shards(self, data: StreamedDataset, blocks: Sequence[int]
                ) -> list[tuple[int, list[int], list[int]]]:
        """``(actor, positions in blocks, block numbers)`` for every actor with work.

        A block belongs to the actor it was first given to (the one owning
        fewest blocks then), so shards stay put across steps and rounds and
        stay balanced across data sets of any size.
        """
        for c in blocks:
            name = data.block_key(c)
            if name not in self._owner:
                load = [0] * self.n_workers
                for k in self._owner.values():
                    load[k] += 1
                self._owner[name] = load.index(min(load))
        out = []
        for k in range(self.n_workers):
            pos = [i for i, c in enumerate(blocks) if self._owner[data.block_key(c)] == k]
            if pos:
                out.append((k, pos, [blocks[i] for i in pos]))
        return out

    def logits(self, data: Dataset, u_w: Ciphertext, u_b: Ciphertext | None,
               blocks: Sequence[int]) -> list[Ciphertext]:
        d = self._streamed(data)
        self.connect()
        try:
            ctx = self._context_ref(d.context)
            desc = d.describe()
            w, b = u_w.to_bytes(), None if u_b is None else u_b.to_bytes()
            w_ref, b_ref = ray.put(w), None if b is None else ray.put(b)
            shards = self._shards(d, blocks)
            self.traffic.to_workers += (len(w) + len(b or b"")) * len(shards)
            refs = [self._actors[k].logits.remote(d.context.key_id, ctx, desc, cs, w_ref, b_ref)
                    for k, _, cs in shards]
            results = ray.get(refs)
        except _RAY_FAILURES as exc:
            raise self._lost(exc) from None
        out: list[Ciphertext | None] = [None] * len(blocks)
        for (_, pos, _), zs in zip(shards, results, strict=True):
            for i, z in zip(pos, zs, strict=True):
                self.traffic.from_workers += len(z)
                out[i] = d.context.load_ciphertext(z)
        return [z for z in out if z is not None]

    def gradient(self, data: Dataset, errors: CiphertextBatch,
                 blocks: Sequence[int]) -> Ciphertext:
        d = self._streamed(data)
        self.connect()
        G = d.layout.giant
        items = open_errors(d.context, errors, len(blocks), G)
        try:
            ctx = self._context_ref(d.context)
            desc = d.describe()
            key = d.context.key_id
            parts: list[tuple[int, Any]] = []
            for k, pos, cs in self._shards(d, blocks):
                mine = [x for i in pos for x in items[i * G:(i + 1) * G]]
                self.traffic.to_workers += sum(len(x) for x in mine)
                parts.append((k, self._actors[k].gradient.remote(key, ctx, desc, cs, mine)))
            while len(parts) > 1:  # pairwise, on the workers: the partials never reach the driver
                nxt = [(k, self._actors[k].add.remote(key, ctx, ref, other))
                       for (k, ref), (_, other) in zip(parts[0::2], parts[1::2], strict=False)]
                if len(parts) % 2:
                    nxt.append(parts[-1])
                parts = nxt
            root, ref = parts[0]
            g = ray.get(self._actors[root].finish.remote(key, ctx, ref, d.layout.describe()))
        except _RAY_FAILURES as exc:
            raise self._lost(exc) from None
        self.traffic.from_workers += len(g)
        self.traffic.steps += 1
        return d.context.load_ciphertext(g)

    def partial_bytes_between_workers(self) -> int:
        """Partial-gradient bytes actors sent each other so far (the tree reduction)."""
        return int(sum(ray.get([a.received.remote() for a in self._actors])))
