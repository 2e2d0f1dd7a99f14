"""The non-linear steps of multiclass and neural-network refinement: softmax, activations.

Runs in: enclave. Same two phases as :mod:`.api`: everything the host sends
is validated before the first decryption (:func:`.api._load`: layout, count,
level, exact scale), and after it values come only from
:func:`.api._reveal` (NaN to 0, infinities to the ends, clipped) and leave
only re-encrypted, at levels and scales the operation fixes (the host may
pick an output level only inside a range that is safe for every value in
the clipped range). No operation keeps state between requests: the
backward step takes the pre-activations ``Z1`` again from the host, so a
host that sends other values only changes what comes back encrypted.

Three operations (``learn/softmax.py`` and ``learn/mlp.py`` drive them):

* :func:`softmax_error` -- ``E = (softmax(clip(Z)) - onehot(y)) * lr / m``
  for ``K`` classes, pre-rotated for the host's ``X.T @ E``; optionally
  ``E`` as a ``K``-feature diagonal layout too (the MLP's ``E @ W2.T``).
* :func:`mlp_hidden` -- ``A = act(clip(Z1))`` as new features in the
  diagonal layout ``Z2 = A @ W2`` needs, and as errors pre-rotated for
  ``E.T @ A`` (the transposed output weights' gradient).
* :func:`mlp_backward` -- ``delta = clip(E @ W2.T) * act'(clip(Z1))``,
  pre-rotated for the host's ``X.T @ delta``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..ckks import Ciphertext, CiphertextBatch, Diagonals, Replicated, SampleBlocks
from ..errors import BadRequest, ShapeError
from .activations import ACTIVATIONS, activation, activation_derivative
from .api import (
    VALUE_BOUND,
    _after_decryption,
    _all_levels,
    _errors,
    _learning_rate,
    _load,
    _nominal,
    _out_level,
    _parse,
    _product,
    _reveal_samples,
    _seal,
    _Window,
)
from .keystore import KeyEntry
from .limits import MAX_CLASSES, MAX_HIDDEN


def softmax(z: np.ndarray) -> np.ndarray:
    """Row-wise softmax of ``(n, K)`` logits, shifted by the row maximum (never overflows)."""
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return np.asarray(e / e.sum(axis=1, keepdims=True))


def one_hot(y: np.ndarray, n_classes: int) -> np.ndarray:
    """Revealed labels (already clipped to ``[0, K-1]``) rounded to class indices, one-hot."""
    return np.asarray(np.eye(n_classes)[np.rint(y).astype(np.int64)])


# ------------------------------------------------------------- before decryption
def _units(raws: Any, name: str, limit: int) -> list[bytes]:
    if not isinstance(raws, list | tuple) or not 1 <= len(raws) <= limit or \
            not all(isinstance(r, bytes) for r in raws):
        raise BadRequest(f"{name} must be 1 to {limit} batches")
    return list(raws)


def _per_unit(entry: KeyEntry, raws: Sequence[bytes], window: _Window, *, max_bytes: int,
              product: bool) -> list[list[Ciphertext]]:
    """One sample-block batch per unit (class or hidden unit), all of the window's blocks."""
    scale = _product(entry) if product else _nominal(entry)
    out = []
    for raw in raws:
        layout, cts = _load(entry, _parse(raw, max_bytes=max_bytes), SampleBlocks,
                            count=window.count, levels=_all_levels(entry), scale=scale)
        if layout != window.samples():
            raise ShapeError("per-unit values must be sample blocks of the feature layout")
        out.append(cts)
    return out


def _activation(name: Any) -> str:
    if name not in ACTIVATIONS:
        raise BadRequest(f"activation must be one of {ACTIVATIONS}")
    return str(name)


# -------------------------------------------------------------- after decryption
def _columns(entry: KeyEntry, units: Sequence[Sequence[Ciphertext]], window: _Window,
             low: float, high: float) -> np.ndarray:
    """Per-unit products (summed over lanes), sanitised: a ``(count * block, units)`` matrix."""
    samples = window.samples()
    return np.stack([_reveal_samples(entry, cts, samples, low, high, partial=True)
                     for cts in units], axis=1)


def _as_features(entry: KeyEntry, values: np.ndarray, layout: Diagonals) -> bytes:
    """``values`` (rows: the window's samples) as fresh top-level diagonals of ``layout``."""
    params = entry.context.params
    return _seal(entry, layout.pack(values[: layout.n_samples]), layout.describe(),
                 level=params.top_level, scale=params.scale)


def _sums(entry: KeyEntry, values: np.ndarray, *, level: int) -> bytes:
    """Column sums, each a replicated scalar at the nominal scale (intercept gradients)."""
    S = entry.context.params.slots
    rep = Replicated(1, 1, S)
    totals = np.clip(values.sum(axis=0), -VALUE_BOUND, VALUE_BOUND)
    ctx = entry.context
    items = tuple(ctx.encrypt_bytes(rep.pack(float(t)), level=level, scale=ctx.params.scale)
                  for t in totals)
    return CiphertextBatch(ctx.params.digest(), ctx.key_id, rep.describe(), items).to_bytes()


# ------------------------------------------------------------------- operations
def softmax_error(entry: KeyEntry, z_raws: Sequence[bytes], y_raw: bytes, *,
                  features: dict[str, Any], first_block: int, start: int, stop: int,
                  learning_rate: float, level: int, intercept: bool, transposed: bool,
                  max_bytes: int) -> tuple[list[bytes], bytes | None, bytes | None]:
    """``E = (softmax(clip(Z)) - onehot(clip(y))) * learning_rate / m`` on samples ``[start, stop)``.

    ``z_raws`` holds one batch per class, each the window's blocks of one
    rescaled ct x ct product (scale ``S^2 / q``); ``y`` holds class indices
    at the nominal scale (clipped to ``[0, K-1]`` and rounded). Outside
    ``[start, stop)`` ``E`` is zero. Returns, per class, ``E[:, k]``
    pre-rotated per giant step of ``features`` at ``level`` (host-chosen in
    ``[1, top]``, ``[2, top]`` with ``intercept``) and the scale of the prime
    the host's rescale drops; with ``intercept`` the column sums, one
    replicated scalar per class at ``level - 1``; with ``transposed`` ``E``
    itself as a ``K``-feature diagonal layout of the window's samples, fresh
    at the top level (the MLP's ``E @ W2.T``). ``|E| <= lr / m <= lr <= 1000``
    and ``|sum E[:, k]| <= lr``: no value can overflow any of these encodings.
    """
    entry.check_open()
    raws = _units(z_raws, "logits", MAX_CLASSES)
    if len(raws) < 2:
        raise BadRequest("softmax needs at least two classes")
    step = _learning_rate(entry, learning_rate) / max(1, stop - start)
    level = _out_level(entry, level, intercept)
    y_batch = _parse(y_raw, max_bytes=max_bytes)
    window = _Window(entry, features, first_block, len(y_batch.items), start, stop)
    y_layout, y_cts = _load(entry, y_batch, SampleBlocks, count=window.count,
                            levels=_all_levels(entry), scale=_nominal(entry))
    if y_layout != window.samples():
        raise ShapeError("labels must be sample blocks of the feature layout")
    z_units = _per_unit(entry, raws, window, max_bytes=max_bytes, product=True)
    K, clip = len(raws), entry.policy.clip

    with _after_decryption(entry):
        z = _columns(entry, z_units, window, -clip, clip)
        y = _reveal_samples(entry, y_cts, window.samples(), 0.0, float(K - 1), partial=False)
        e = (softmax(z) - one_hot(y, K)) * (window.mask * step)[:, None]
        e_out = _errors(entry, e, window.diag, first_block, features, level=level)
        sums = _sums(entry, e, level=level - 1) if intercept else None
        e_diag = _as_features(entry, e, window.local_layout(K)) if transposed else None
    return e_out, sums, e_diag


def mlp_hidden(entry: KeyEntry, z_raws: Sequence[bytes], *, features: dict[str, Any],
               first_block: int, start: int, stop: int, activation_name: str, n_classes: int,
               max_bytes: int) -> tuple[bytes, list[bytes]]:
    """``A = act(clip(Z1))`` on samples ``[start, stop)`` (zero elsewhere), in the layouts the
    output layer needs.

    ``z_raws``: one batch per hidden unit, each the window's blocks of a
    rescaled product. Returns ``A`` as an ``H``-feature diagonal layout of
    the window's samples, fresh at the top level and nominal scale (the
    features of ``Z2 = A @ W2`` and ``W2``'s gradient ``A.T @ E``), and each
    column of ``A`` as errors pre-rotated for the ``n_classes``-feature
    diagonal layout of ``E`` (the transposed weights' gradient ``E.T @ A``),
    at the top level and the scale of its prime. ``|A| <= clip <= 64``: both
    encodings hold every value.
    """
    entry.check_open()
    raws = _units(z_raws, "pre-activations", MAX_HIDDEN)
    act = _activation(activation_name)
    if isinstance(n_classes, bool) or not isinstance(n_classes, int) or \
            not 2 <= n_classes <= MAX_CLASSES:
        raise BadRequest(f"n_classes must be in 2..{MAX_CLASSES}")
    first = _parse(raws[0], max_bytes=max_bytes)
    window = _Window(entry, features, first_block, len(first.items), start, stop)
    z_units = _per_unit(entry, raws, window, max_bytes=max_bytes, product=True)
    clip, top = entry.policy.clip, entry.context.params.top_level
    e_layout = window.local_layout(n_classes)

    with _after_decryption(entry):
        z = _columns(entry, z_units, window, -clip, clip)
        a = activation(act, z) * window.mask[:, None]
        a_diag = _as_features(entry, a, window.local_layout(len(raws)))
        a_err = _errors(entry, a, e_layout, 0, e_layout.describe(), level=top)
    return a_diag, a_err


def mlp_backward(entry: KeyEntry, p_raws: Sequence[bytes], z_raws: Sequence[bytes], *,
                 features: dict[str, Any], first_block: int, start: int, stop: int,
                 activation_name: str, level: int, intercept: bool, max_bytes: int
                 ) -> tuple[list[bytes], bytes | None]:
    """``delta = clip(P) * act'(clip(Z1))`` with ``P = E @ W2.T``, on samples ``[start, stop)``.

    ``p_raws`` and ``z_raws``: one batch per hidden unit each, the window's
    blocks of rescaled products; ``Z1`` is the host's to resend (the enclave
    keeps nothing between requests). ``P`` is clipped to ``±VALUE_BOUND``
    and ``act'`` lies in ``[0, 1]``, so ``|delta| <= 2^20``; it comes back
    per hidden unit pre-rotated per giant step of ``features`` at ``level``
    (host-chosen in ``[1, top]``, ``[2, top]`` with ``intercept``) and the
    scale of its prime; with ``intercept`` the column sums (clipped to
    ``±VALUE_BOUND``) as replicated scalars at ``level - 1``. ``2^20`` times
    either scale stays 29 bits under the smallest modulus these levels have.
    """
    entry.check_open()
    praws = _units(p_raws, "backpropagated errors", MAX_HIDDEN)
    zraws = _units(z_raws, "pre-activations", MAX_HIDDEN)
    if len(praws) != len(zraws):
        raise ShapeError("one backpropagated error and one pre-activation per hidden unit")
    act = _activation(activation_name)
    level = _out_level(entry, level, intercept)
    first = _parse(praws[0], max_bytes=max_bytes)
    window = _Window(entry, features, first_block, len(first.items), start, stop)
    p_units = _per_unit(entry, praws, window, max_bytes=max_bytes, product=True)
    z_units = _per_unit(entry, zraws, window, max_bytes=max_bytes, product=True)
    clip = entry.policy.clip

    with _after_decryption(entry):
        p = _columns(entry, p_units, window, -VALUE_BOUND, VALUE_BOUND)
        z = _columns(entry, z_units, window, -clip, clip)
        delta = p * activation_derivative(act, z) * window.mask[:, None]
        d_out = _errors(entry, delta, window.diag, first_block, features, level=level)
        sums = _sums(entry, delta, level=level - 1) if intercept else None
    return d_out, sums
