"""Tenants' public contexts, loaded from the blob store and kept in a small cache.

Runs in: host. A public context with its Galois keys is tens of megabytes
and takes a fraction of a second to load, so checking every upload against
it needs a cache. Contexts are public material: the cache holds nothing secret.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from ..ckks import PublicContext
from .blobs import BlobStore


class ContextCache:
    """Least-recently-used :class:`~cipherloop.ckks.PublicContext` objects by blob name.

    Parameters
    ----------
    blobs : BlobStore
        Where the serialised contexts are stored.
    size : int
        Contexts kept loaded.
    """

    def __init__(self, blobs: BlobStore, *, size: int = 4) -> None:
        self._blobs = blobs
        self._size = size
        self._items: OrderedDict[str, PublicContext] = OrderedDict()
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"ContextCache(size={self._size}, loaded={len(self._items)})"

    def get(self, sha256: str) -> PublicContext:
        """The context stored under ``sha256``, loading it on a miss.

        Raises
        ------
        FileNotFoundError
            The blob is missing.
        KeyMaterialError
            The blob is not a public context.
        """
        with self._lock:
            ctx = self._items.get(sha256)
            if ctx is not None:
                self._items.move_to_end(sha256)
                return ctx
        loaded = PublicContext.load(self._blobs.read(sha256))
        with self._lock:
            self._items[sha256] = loaded
            self._items.move_to_end(sha256)
            while len(self._items) > self._size:
                self._items.popitem(last=False)
        return loaded

    def put(self, sha256: str, context: PublicContext) -> None:
        """Remember a context just registered, saving a reload."""
        with self._lock:
            self._items[sha256] = context
            self._items.move_to_end(sha256)
            while len(self._items) > self._size:
                self._items.popitem(last=False)
