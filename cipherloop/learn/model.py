"""Encrypted training data and encrypted models, and their wire forms.

Runs in: host (and owner, who makes and reads them). Nothing here can
decrypt: these are containers of ciphertexts with the layouts that say how
to read them.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import cbor2

from ..ckks import Ciphertext, CiphertextBatch, Diagonals, Replicated
from ..ckks.context import _ContextBase
from ..ckks.layout import from_description
from ..errors import InvalidCiphertext, ShapeError


@dataclass(frozen=True)
class EncryptedDataset:
    """Samples ``(X, y)``: features as giant-step diagonals, labels as sample blocks."""

    layout: Diagonals
    features: tuple[Ciphertext, ...]
    labels: tuple[Ciphertext, ...]

    def __post_init__(self) -> None:
        if len(self.features) != self.layout.n_blocks * self.layout.per_block:
            raise ShapeError("feature ciphertext count does not match the layout")
        if len(self.labels) != self.layout.n_blocks:
            raise ShapeError("label ciphertext count does not match the layout")

    @property
    def n_samples(self) -> int:
        return self.layout.n_samples

    @property
    def n_features(self) -> int:
        return self.layout.n_features

    @property
    def level(self) -> int:
        return min(c.level for c in self.features)

    def block(self, c: int) -> tuple[Ciphertext, ...]:
        """Block ``c``'s feature ciphertexts (see :class:`.dataset.Dataset`)."""
        P = self.layout.per_block
        return self.features[c * P:(c + 1) * P]

    def block_key(self, c: int) -> None:
        """In memory already: nothing for an engine to cache."""
        return None

    def to_batches(self, context: _ContextBase) -> tuple[CiphertextBatch, CiphertextBatch]:
        return (CiphertextBatch.of(context, self.features, self.layout.describe()),
                CiphertextBatch.of(context, self.labels, self.layout.samples.describe()))

    @classmethod
    def from_batches(cls, context: _ContextBase, features: CiphertextBatch,
                     labels: CiphertextBatch) -> EncryptedDataset:
        """Check identity, layouts and counts, then load every ciphertext."""
        features.check(context)
        labels.check(context)
        layout = from_description(features.layout)
        label_layout = from_description(labels.layout)
        if not isinstance(layout, Diagonals) or layout.slots != context.params.slots:
            raise ShapeError("features must be in a diagonal layout for these parameters")
        if label_layout != layout.samples:
            raise ShapeError("labels must be sample blocks matching the features' samples")
        n_feat = layout.n_blocks * layout.per_block
        f = features.open(context, count=n_feat)
        y = labels.open(context, count=layout.n_blocks)
        if min(c.level for c in f) < 1:
            raise InvalidCiphertext("feature ciphertexts have no level left to multiply")
        return cls(layout, tuple(f), tuple(y))


_MODEL_FORMAT = "cipherloop-lr-model/v1"


@dataclass(frozen=True)
class EncryptedModel:
    """Logistic-regression weights (replicated layout), intercept and momentum, all encrypted.

    ``intercept`` is a replicated scalar (``None`` without an intercept);
    the velocities are ``None`` until the first momentum step.
    """

    layout: Replicated
    coef: Ciphertext
    intercept: Ciphertext | None = None
    coef_velocity: Ciphertext | None = None
    intercept_velocity: Ciphertext | None = None

    @property
    def n_features(self) -> int:
        return self.layout.n_values

    def parts(self) -> dict[str, Ciphertext]:
        names = ("coef", "intercept", "coef_velocity", "intercept_velocity")
        return {n: getattr(self, n) for n in names if getattr(self, n) is not None}

    def layout_of(self, part: str) -> Replicated:
        return self.layout if part.startswith("coef") else Replicated(1, 1, self.layout.slots)

    def with_parts(self, **parts: Ciphertext | None) -> EncryptedModel:
        return replace(self, **parts)  # type: ignore[arg-type]

    def to_bytes(self, context: _ContextBase) -> bytes:
        doc: dict[str, Any] = {"format": _MODEL_FORMAT}
        for name, ct in self.parts().items():
            doc[name] = CiphertextBatch.of(context, [ct], self.layout_of(name).describe()).to_bytes()
        return bytes(cbor2.dumps(doc))

    @classmethod
    def from_bytes(cls, context: _ContextBase, data: bytes, *,
                   max_bytes: int = 64 * 1024 * 1024) -> EncryptedModel:
        if len(data) > max_bytes:
            raise InvalidCiphertext("model larger than the size limit")
        try:
            doc = cbor2.loads(data)
            if not isinstance(doc, dict) or doc.get("format") != _MODEL_FORMAT:
                raise ValueError
            raw = {k: v for k, v in doc.items() if k != "format"}
            if "coef" not in raw or not set(raw) <= {"coef", "intercept", "coef_velocity",
                                                     "intercept_velocity"}:
                raise ValueError
            if not all(isinstance(v, bytes) for v in raw.values()):
                raise ValueError
        except Exception:
            raise InvalidCiphertext("not an encrypted model (malformed or truncated)") from None
        coef_batch = CiphertextBatch.from_bytes(raw["coef"])
        layout = from_description(coef_batch.layout)
        if not isinstance(layout, Replicated) or layout.slots != context.params.slots:
            raise ShapeError("model coefficients must be a replicated vector for these parameters")
        parts: dict[str, Ciphertext] = {}
        for name, blob in raw.items():
            batch = CiphertextBatch.from_bytes(blob)
            expect = layout if name.startswith("coef") else Replicated(1, 1, layout.slots)
            if from_description(batch.layout) != expect:
                raise ShapeError(f"model part {name!r} has the wrong layout")
            parts[name] = batch.open(context, count=1)[0]
        return cls(layout, **parts)

