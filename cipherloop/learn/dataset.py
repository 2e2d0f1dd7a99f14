"""Encrypted data sets that stream: samples stored as per-block blobs and read when a step needs them.

Runs in: host (the round worker, the engines and their Ray workers) and owner
(whose encryption writes blocks straight into a store). A data set of
``n`` samples is ``ceil(n / slots)`` blocks; block ``c`` is one blob of its
``per_block`` feature ciphertexts (giant-step diagonals, ``Diagonals.index``
order with block 0) and one blob of its label ciphertext, both named by
their SHA-256 in a :class:`~cipherloop.blobstore.BlobStore`. A *manifest*
blob lists them with the layout and the features' lowest level.

Why per-block blobs rather than reading the upload's batch for every block:
an upload is one CBOR document holding every ciphertext of its samples, so
reading one block out of it means reading (and hashing) the whole upload --
``n_blocks`` times per pass. Splitting it once into blocks makes every later
read exactly one block (one hash check, one parse), lets Ray workers read
their shard by content address without the driver, and keeps the working set
of a round at one block however many samples it has. The upload itself stays
stored as it came (the durable, acknowledged record); its blocks are a
derived index that can always be rebuilt from it.

A block blob is ``MAGIC | u32 header length | CBOR header | ciphertext
bytes``: unlike a CBOR list of byte strings it can be read one ciphertext at
a time, hashed as it goes, so reading a block holds one ciphertext's bytes
beside the loaded ones -- never the block's bytes -- and still returns
nothing unless the whole blob matches its name.
"""

from __future__ import annotations

import hmac
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, overload

import cbor2

from ..blobstore import BlobStore
from ..ckks import Ciphertext, CiphertextBatch, Diagonals, SampleBlocks
from ..ckks.context import _ContextBase
from ..ckks.layout import from_description
from ..errors import InvalidCiphertext, ParameterMismatch, ShapeError

_MAGIC = b"CLBLOCK1"
_MANIFEST_FORMAT = "cipherloop-blocks/v1"
_MAX_HEADER = 1 << 24  # bytes of a block blob's header (lengths of up to ~1M ciphertexts)
_MAX_ITEM = 1 << 26  # bytes of one ciphertext (N=32768 at 20 primes is ~21 MB)


class Dataset(Protocol):
    """What the refining loop and the engines read from a data set, in memory or streamed."""

    @property
    def layout(self) -> Diagonals: ...

    @property
    def labels(self) -> Sequence[Ciphertext]: ...

    @property
    def level(self) -> int: ...

    @property
    def n_samples(self) -> int: ...

    @property
    def n_features(self) -> int: ...

    def block(self, c: int) -> Sequence[Ciphertext]:
        """Block ``c``'s ``per_block`` feature ciphertexts, block-local order."""
        ...

    def block_key(self, c: int) -> str | None:
        """A stable name of block ``c`` (its blob), or ``None`` when it is already in memory."""
        ...


# -- block blobs ----------------------------------------------------------------------
def encode_block(context: _ContextBase, items: Sequence[bytes]) -> bytes:
    """One block blob: the ciphertexts' bytes behind a header naming parameters and key."""
    header = bytes(cbor2.dumps({"params": context.params.digest(), "key_id": context.key_id,
                                "lengths": [len(b) for b in items]}))
    return b"".join([_MAGIC, struct.pack(">I", len(header)), header, *items])


def _header(context: _ContextBase, head: bytes, *, count: int) -> list[int]:
    """Parse a block blob's header; the ciphertexts' lengths, after checking key and count."""
    try:
        doc = cbor2.loads(head)
        lengths = [int(n) for n in doc["lengths"]]
        params, key_id = str(doc["params"]), str(doc["key_id"])
    except Exception:
        raise InvalidCiphertext("not a block of ciphertexts (malformed or truncated)") from None
    if not hmac.compare_digest(params, context.params.digest()):
        raise ParameterMismatch("ciphertexts were made under other CKKS parameters")
    if not hmac.compare_digest(key_id, context.key_id):
        raise ParameterMismatch("ciphertexts were made under another key")
    if len(lengths) != count or any(not 0 < n <= _MAX_ITEM for n in lengths):
        raise InvalidCiphertext(f"expected a block of {count} ciphertexts")
    return lengths


def _hlen(prefix: bytes) -> int:
    if len(prefix) != 12 or prefix[:8] != _MAGIC:
        raise InvalidCiphertext("not a block of ciphertexts (malformed or truncated)")
    n = int(struct.unpack(">I", prefix[8:12])[0])
    if n > _MAX_HEADER:  # a damaged length must not make us read gigabytes before the hash check
        raise InvalidCiphertext("not a block of ciphertexts (malformed or truncated)")
    return n


def load_block(context: _ContextBase, store: BlobStore, digest: str, *, count: int
               ) -> list[Ciphertext]:
    """Read a block blob ciphertext by ciphertext, load each, and check the blob's hash.

    Only one ciphertext's bytes are in memory at a time, next to the loaded
    ones; nothing is returned unless the whole blob hashes to its name.
    """
    with store.reader(digest) as r:
        try:
            lengths = _header(context, r.read(_hlen(r.read(12))), count=count)
            out = []
            for n in lengths:
                raw = r.read(n)
                if len(raw) != n:
                    raise InvalidCiphertext(f"expected a block of {count} ciphertexts")
                out.append(context.load_ciphertext(raw))
        except InvalidCiphertext:
            r.verify(at_end=False)  # damaged on disk? say so (BlobCorrupted) rather than "invalid"
            raise
        r.verify()
    return out


# -- manifests --------------------------------------------------------------------------
@dataclass(frozen=True)
class Manifest:
    """A stored data set: layout, lowest feature level, and its blocks' blob names."""

    layout: Diagonals
    level: int
    features: tuple[str, ...]
    labels: tuple[str, ...]
    params_digest: str
    key_id: str

    def __post_init__(self) -> None:
        if len(self.features) != self.layout.n_blocks or len(self.labels) != self.layout.n_blocks:
            raise ShapeError("a manifest names one feature and one label blob per block")

    def to_bytes(self) -> bytes:
        return bytes(cbor2.dumps({
            "format": _MANIFEST_FORMAT, "layout": self.layout.describe(), "level": self.level,
            "features": list(self.features), "labels": list(self.labels),
            "params": self.params_digest, "key_id": self.key_id}))

    @classmethod
    def from_bytes(cls, data: bytes) -> Manifest:
        try:
            doc = cbor2.loads(data)
            if not isinstance(doc, dict) or doc.get("format") != _MANIFEST_FORMAT:
                raise ValueError
            layout = from_description(doc["layout"])
            if not isinstance(layout, Diagonals):
                raise ValueError
            return cls(layout, int(doc["level"]), tuple(str(d) for d in doc["features"]),
                       tuple(str(d) for d in doc["labels"]), str(doc["params"]), str(doc["key_id"]))
        except Exception:
            raise InvalidCiphertext("not a data set manifest (malformed or truncated)") from None


def blob_names(manifest: bytes) -> list[str]:
    """Every block blob a manifest names (features, then labels)."""
    m = Manifest.from_bytes(manifest)
    return [*m.features, *m.labels]


def write_manifest(context: _ContextBase, store: BlobStore, layout: Diagonals, level: int,
                   features: Sequence[str], labels: Sequence[str]) -> str:
    """Store a manifest for blocks already in ``store``; returns its blob name."""
    m = Manifest(layout, level, tuple(features), tuple(labels), context.params.digest(),
                 context.key_id)
    return store.put(m.to_bytes())


def store_blocks(context: _ContextBase, store: BlobStore, features: CiphertextBatch,
                 labels: CiphertextBatch) -> str:
    """Split an upload's two batches into per-block blobs; returns the manifest's blob name.

    Checks what :meth:`EncryptedDataset.from_batches` checks -- identity,
    layouts, counts, every ciphertext loads, a level left to multiply -- one
    block at a time, so the working set is one ciphertext beyond the batches.
    Idempotent: the same upload gives the same blobs.
    """
    features.check(context)
    labels.check(context)
    layout = from_description(features.layout)
    if not isinstance(layout, Diagonals) or layout.slots != context.params.slots:
        raise ShapeError("features must be in a diagonal layout for these parameters")
    if from_description(labels.layout) != layout.samples:
        raise ShapeError("labels must be sample blocks matching the features' samples")
    P, C = layout.per_block, layout.n_blocks
    if len(features.items) != C * P or len(labels.items) != C:
        raise InvalidCiphertext("ciphertext counts do not match the layout")
    level, f_names, y_names = None, [], []
    for c in range(C):
        items = features.items[c * P:(c + 1) * P]
        lv = min(context.load_ciphertext(b).level for b in items)
        level = lv if level is None else min(level, lv)
        context.load_ciphertext(labels.items[c])
        f_names.append(store.put(encode_block(context, items)))
        y_names.append(store.put(encode_block(context, [labels.items[c]])))
    assert level is not None
    if level < 1:
        raise InvalidCiphertext("feature ciphertexts have no level left to multiply")
    return write_manifest(context, store, layout, level, f_names, y_names)


# -- the streamed data set -----------------------------------------------------------------
class _StoredLabels(Sequence[Ciphertext]):
    """The label ciphertexts, read from their blobs when indexed (one per block)."""

    def __init__(self, data: StreamedDataset) -> None:
        self._data = data

    def __len__(self) -> int:
        return len(self._data.label_blocks)

    @overload
    def __getitem__(self, i: int) -> Ciphertext: ...

    @overload
    def __getitem__(self, i: slice) -> Sequence[Ciphertext]: ...

    def __getitem__(self, i: int | slice) -> Ciphertext | Sequence[Ciphertext]:
        d = self._data
        if isinstance(i, slice):
            return [load_block(d.context, d.store, n, count=1)[0] for n in d.label_blocks[i]]
        return load_block(d.context, d.store, d.label_blocks[i], count=1)[0]

    def __iter__(self) -> Iterator[Ciphertext]:
        for i in range(len(self)):
            yield self[i]


@dataclass(frozen=True)
class StreamedDataset:
    """A data set whose blocks stay in the blob store until a step reads them.

    Holds names, not ciphertexts: :meth:`block` reads and loads one block;
    the engine decides how many stay resident. Picklable apart from the
    context, which workers replace with their own (see ``ray_engine``).
    """

    context: _ContextBase = field(repr=False)
    store: BlobStore
    layout: Diagonals
    level: int
    feature_blocks: tuple[str, ...]
    label_blocks: tuple[str, ...]

    @classmethod
    def open(cls, context: _ContextBase, store: BlobStore, manifest: str) -> StreamedDataset:
        """The data set a manifest names, checked against ``context``'s parameters and key."""
        m = Manifest.from_bytes(store.read(manifest))
        if not hmac.compare_digest(m.params_digest, context.params.digest()):
            raise ParameterMismatch("ciphertexts were made under other CKKS parameters")
        if not hmac.compare_digest(m.key_id, context.key_id):
            raise ParameterMismatch("ciphertexts were made under another key")
        if m.layout.slots != context.params.slots:
            raise ShapeError("features must be in a diagonal layout for these parameters")
        return cls(context, store, m.layout, m.level, m.features, m.labels)

    def under(self, context: _ContextBase) -> StreamedDataset:
        """The same blocks, loaded under another context of the same key (e.g. the host's)."""
        if (context.key_id != self.context.key_id
                or context.params.digest() != self.context.params.digest()):
            raise ParameterMismatch("a data set moves only between contexts of one key")
        return replace(self, context=context)

    @property
    def n_samples(self) -> int:
        return self.layout.n_samples

    @property
    def n_features(self) -> int:
        return self.layout.n_features

    @property
    def labels(self) -> Sequence[Ciphertext]:
        return _StoredLabels(self)

    @property
    def samples(self) -> SampleBlocks:
        return self.layout.samples

    def block(self, c: int) -> list[Ciphertext]:
        return load_block(self.context, self.store, self.feature_blocks[c],
                          count=self.layout.per_block)

    def block_key(self, c: int) -> str:
        return self.feature_blocks[c]

    def block_nbytes(self) -> int:
        """Memory one loaded block of feature ciphertexts takes (two polynomials per level)."""
        p = self.context.params
        return self.layout.per_block * 2 * p.poly_modulus_degree * (self.level + 1) * 8

    def describe(self) -> dict[str, Any]:
        """What a worker needs to read this data set itself: store, layout and blob names."""
        return {"store": str(self.store.root), "layout": self.layout.describe(),
                "level": self.level, "features": list(self.feature_blocks),
                "labels": list(self.label_blocks)}
