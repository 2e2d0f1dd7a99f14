"""Encrypted models made of several weight vectors: multinomial logistic regression and the MLP.

Runs in: host (and owner, who makes and reads them). A model is a set of
named *groups*, each a tuple of ciphertexts in one replicated layout:
``coef`` (one vector per class) and ``intercept`` (one replicated scalar per
class) for the softmax model; ``coef1``/``intercept1`` (one per hidden unit),
``coef2``/``intercept2`` (one per class) and ``coef2t`` (``W2``'s rows, one
per hidden unit, so the backward pass's ``E @ W2.T`` is a product like any
other) for the MLP. Each group may carry momentum as ``<group>_velocity``.

Flattened part names (``coef.3``) give the refining loop's refresh and
level planning one view of every kind (see :mod:`.loop`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import cbor2

from ..ckks import Ciphertext, CiphertextBatch, Replicated
from ..ckks.context import _ContextBase
from ..ckks.layout import from_description
from ..errors import InvalidCiphertext, ShapeError

NETWORK_FORMAT = "cipherloop-network-model/v1"
KINDS = ("softmax", "mlp")
VELOCITY = "_velocity"


def _group_names(kind: str) -> tuple[str, ...]:
    if kind == "softmax":
        return ("coef", "intercept")
    return ("coef1", "intercept1", "coef2", "intercept2", "coef2t")


@dataclass(frozen=True)
class EncryptedNetwork:
    """Groups of encrypted weight vectors, their layouts and the model's (public) shape.

    ``meta`` holds wire-safe facts the host may know: ``n_classes``,
    ``n_hidden`` and ``activation`` for the MLP.
    """

    kind: str
    layouts: Mapping[str, Replicated]
    groups: Mapping[str, tuple[Ciphertext, ...]]
    meta: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ShapeError(f"model kind must be one of {KINDS}")
        for name in self.groups:
            base = name.removesuffix(VELOCITY)
            if base not in _group_names(self.kind) or base not in self.layouts:
                raise ShapeError(f"unknown model part {name!r}")

    @property
    def n_features(self) -> int:
        first = "coef" if self.kind == "softmax" else "coef1"
        return self.layouts[first].n_values

    @property
    def n_classes(self) -> int:
        return len(self.groups["coef" if self.kind == "softmax" else "coef2"])

    @property
    def activation(self) -> str:
        return str(self.meta.get("activation", "relu"))

    def group(self, name: str) -> tuple[Ciphertext, ...] | None:
        return self.groups.get(name)

    # -- the flat view the refining loop works on ------------------------------
    def parts(self) -> dict[str, Ciphertext]:
        return {f"{g}.{i}": ct for g, cts in self.groups.items() for i, ct in enumerate(cts)}

    def layout_of(self, part: str) -> Replicated:
        return self.layouts[part.split(".")[0].removesuffix(VELOCITY)]

    def with_parts(self, **parts: Ciphertext) -> EncryptedNetwork:
        groups = {g: list(cts) for g, cts in self.groups.items()}
        for name, ct in parts.items():
            g, i = name.split(".")
            groups[g][int(i)] = ct
        return EncryptedNetwork(self.kind, self.layouts,
                                {g: tuple(v) for g, v in groups.items()}, self.meta)

    def stepped(self, new: Mapping[str, Sequence[Ciphertext]], momentum: float) -> EncryptedNetwork:
        """The model after a step to ``new`` weights; with momentum ``v' = w' - w`` per group."""
        groups = {g: tuple(cts) for g, cts in new.items()}
        if momentum:
            for g, cts in new.items():
                groups[g + VELOCITY] = tuple(a - b for a, b in zip(cts, self.groups[g], strict=True))
        return EncryptedNetwork(self.kind, self.layouts, groups, self.meta)

    # -- bytes -----------------------------------------------------------------
    def to_batches(self, context: _ContextBase) -> dict[str, bytes]:
        return {g: CiphertextBatch.of(context, list(cts), self.layout_of(g).describe()).to_bytes()
                for g, cts in self.groups.items()}

    def to_bytes(self, context: _ContextBase) -> bytes:
        return bytes(cbor2.dumps({"format": NETWORK_FORMAT, "kind": self.kind,
                                  "meta": dict(self.meta), "groups": self.to_batches(context)}))

    @classmethod
    def from_bytes(cls, context: _ContextBase, data: bytes, *,
                   max_bytes: int = 256 * 1024 * 1024) -> EncryptedNetwork:
        if len(data) > max_bytes:
            raise InvalidCiphertext("model larger than the size limit")
        try:
            doc = cbor2.loads(data)
            if not isinstance(doc, dict) or doc.get("format") != NETWORK_FORMAT:
                raise ValueError
            kind, meta, raw = str(doc["kind"]), doc["meta"], doc["groups"]
            if not isinstance(meta, dict) or not isinstance(raw, dict) or \
                    not all(isinstance(v, bytes) for v in raw.values()):
                raise ValueError
        except Exception:
            raise InvalidCiphertext("not an encrypted model (malformed or truncated)") from None
        layouts: dict[str, Replicated] = {}
        groups: dict[str, tuple[Ciphertext, ...]] = {}
        for name, blob in raw.items():
            batch = CiphertextBatch.from_bytes(blob)
            layout = from_description(batch.layout)
            if not isinstance(layout, Replicated) or layout.slots != context.params.slots:
                raise ShapeError(f"model part {name!r} must be replicated vectors")
            base = str(name).removesuffix(VELOCITY)
            if layouts.setdefault(base, layout) != layout:
                raise ShapeError(f"model part {name!r} has the wrong layout")
            groups[str(name)] = tuple(batch.open(context))
        return cls(kind, layouts, groups, meta)


def is_network(data: bytes) -> bool:
    """Whether model bytes hold an :class:`EncryptedNetwork` (rather than a binary model)."""
    try:
        doc = cbor2.loads(data)
    except Exception:
        return False
    return isinstance(doc, dict) and doc.get("format") == NETWORK_FORMAT
