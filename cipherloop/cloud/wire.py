"""What crosses the service's HTTP boundary as bytes, and how the host checks it.

Runs in: host. Binary bodies are :class:`~cipherloop.ckks.CiphertextBatch`
bytes, except sample uploads: one CBOR map built and split by
:mod:`cipherloop.learn.wire` (``encode_samples``/``decode_samples``), which
owners and contributors use too -- they may not import this package.

Every check here runs before anything is stored: identity (parameter digest
and key id), layouts, counts and shapes, then every ciphertext is loaded.
"""

from __future__ import annotations

from typing import Any

import cbor2

from ..ckks import CiphertextBatch, Diagonals, PublicContext, SampleBlocks
from ..ckks.layout import from_description
from ..errors import CipherloopError, InvalidCiphertext, KeyMaterialError, ShapeError
from ..learn.network import NETWORK_FORMAT
from ..learn.wire import require_one_cbor_item

BINARY = "application/octet-stream"
CBOR = "application/cbor"

# Every number in a layout description is a plain integer in [0, 2**31): CKKS has at
# most 2**15 slots, and no upload this service takes holds 2**31 samples.
_LAYOUT_MAX = 2**31


def load_public_context(body: bytes) -> PublicContext:
    """A public context from an owner's bytes, or a 422-class error (never a 500).

    Raises
    ------
    KeyMaterialError
        Malformed, trailing bytes, or parameters SEAL refuses.
    """
    try:
        require_one_cbor_item(body)
        return PublicContext.load(body)
    except CipherloopError as exc:
        raise KeyMaterialError(f"not a public context: {exc}") from None
    except Exception:
        raise KeyMaterialError("not a public context (malformed, or parameters SEAL refuses)"
                               ) from None


def check_layout_numbers(layout: dict[str, Any]) -> None:
    """Refuse a layout description with anything but bounded plain integers in it.

    Runs before the layout is rebuilt, so that ``inf``, ``NaN``, floats,
    booleans or huge integers are a :class:`ShapeError`, never a crash.
    """
    if not isinstance(layout, dict) or not isinstance(layout.get("kind"), str):
        raise ShapeError("unknown or malformed slot layout")
    for key, value in layout.items():
        if key == "kind":
            continue
        if type(value) is not int or not 0 <= value < _LAYOUT_MAX:
            raise ShapeError("unknown or malformed slot layout")


def _load_all(context: Any, batch: CiphertextBatch) -> int:
    """Load every ciphertext (refusing garbage); return the lowest level among them."""
    return int(min(context.load_ciphertext(item).level for item in batch.items))


def check_model_layouts(body: bytes) -> None:
    """Host-side pre-check of an encrypted model's bytes: one CBOR item, sane layouts.

    Raises
    ------
    InvalidCiphertext, ShapeError
    """
    require_one_cbor_item(body)
    try:
        doc = cbor2.loads(body)
        if isinstance(doc, dict) and doc.get("format") == NETWORK_FORMAT:
            groups = doc.get("groups")
            parts = list(groups.values()) if isinstance(groups, dict) else None
        else:
            parts = [v for k, v in doc.items() if k != "format"] if isinstance(doc, dict) else None
    except Exception:
        parts = None
    if not parts or not all(isinstance(v, bytes) for v in parts):
        raise InvalidCiphertext("not an encrypted model (malformed or truncated)")
    for blob in parts:
        require_one_cbor_item(blob)
        check_layout_numbers(CiphertextBatch.from_bytes(blob, max_bytes=len(blob)).layout)


def check_features(context: Any, features: CiphertextBatch, *, n_features: int) -> Diagonals:
    """Check a feature batch against the tenant's context and the model's width.

    Parameters
    ----------
    context : PublicContext
        The tenant's public context the batch must be made under.
    features : CiphertextBatch
    n_features : int
        The model's number of features.

    Returns
    -------
    Diagonals
        The batch's layout.

    Raises
    ------
    ParameterMismatch
        Other parameters or another key.
    ShapeError
        Wrong layout kind, slot count, feature count or ciphertext count.
    InvalidCiphertext
        A ciphertext does not load, or has no level left for ``X @ w``.
    """
    features.check(context)
    check_layout_numbers(features.layout)
    layout = from_description(features.layout)
    if not isinstance(layout, Diagonals) or layout.slots != context.params.slots:
        raise ShapeError("features must be in a diagonal layout for these parameters")
    if layout.n_features != n_features:
        raise ShapeError(f"expected {n_features} features, got {layout.n_features}")
    expected = layout.n_blocks * layout.per_block
    if len(features.items) != expected:
        raise ShapeError(f"expected {expected} feature ciphertexts, got {len(features.items)}")
    if _load_all(context, features) < 1:
        raise InvalidCiphertext("feature ciphertexts have no level left to multiply")
    return layout


def check_samples(context: Any, features: CiphertextBatch, labels: CiphertextBatch, *,
                  n_features: int) -> int:
    """Check a sample upload completely; return its number of samples.

    Raises
    ------
    ParameterMismatch, ShapeError, InvalidCiphertext
        As :func:`check_features`, and for labels that don't match the features.
    """
    labels.check(context)
    layout = check_features(context, features, n_features=n_features)
    check_layout_numbers(labels.layout)
    label_layout = from_description(labels.layout)
    if not isinstance(label_layout, SampleBlocks) or label_layout.slots != layout.slots:
        raise ShapeError("labels must be sample blocks for these parameters")
    if label_layout.n_samples != layout.n_samples:
        raise ShapeError(f"features hold {layout.n_samples} samples, labels "
                         f"{label_layout.n_samples}")
    if len(labels.items) != label_layout.n_blocks:
        raise ShapeError(f"expected {label_layout.n_blocks} label ciphertexts, "
                         f"got {len(labels.items)}")
    _load_all(context, labels)
    return layout.n_samples
