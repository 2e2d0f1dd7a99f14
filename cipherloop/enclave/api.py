"""The narrow operations the enclave offers. None of them returns plaintext values.

Runs in: enclave. Each operation validates everything it can -- sizes, key
and parameter identity, layouts, counts, ranges -- before it decrypts a
single ciphertext, then works branch-free on the decrypted values (clipped
inputs, masks instead of conditionals) and answers with fresh ciphertexts,
or with the coarse aggregates the owner's policy names.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..ckks import CiphertextBatch, Diagonals, Replicated, SampleBlocks
from ..ckks.layout import from_description
from ..errors import EnclaveError, PolicyViolation, ShapeError
from .keystore import KeyEntry
from .policy import coarse

MAX_BATCHES = 64


def _check_level(entry: KeyEntry, level: int, *, lowest: int = 0) -> int:
    top = entry.context.params.top_level
    if not lowest <= level <= top:
        raise EnclaveError(f"level must be between {lowest} and {top}")
    return level


def _open(entry: KeyEntry, raw: bytes, *, max_bytes: int) -> tuple[CiphertextBatch, Any]:
    batch = CiphertextBatch.from_bytes(raw, max_bytes=max_bytes)
    batch.check(entry.context)
    layout = from_description(batch.layout)
    if getattr(layout, "slots", None) != entry.context.params.slots:
        raise ShapeError("layout slot count does not match the parameters")
    return batch, layout


def _decrypt_all(entry: KeyEntry, batch: CiphertextBatch) -> list[np.ndarray]:
    ctx = entry.context
    return [ctx.decrypt(ct) for ct in batch.open(ctx)]


def _seal(entry: KeyEntry, arrays: Sequence[np.ndarray], layout: dict[str, Any], *,
          level: int, scale: float) -> bytes:
    ctx = entry.context
    items = tuple(ctx.encrypt_bytes(a, level=level, scale=scale) for a in arrays)
    return CiphertextBatch(ctx.params.digest(), ctx.key_id, dict(layout), items).to_bytes()


# --------------------------------------------------------------------------- refresh
def refresh(entry: KeyEntry, batches: Sequence[bytes], *, level: int | None,
            max_bytes: int) -> list[bytes]:
    """Decrypt and re-encrypt at ``level`` (default: top), cleaning the layout's padding.

    Replicated vectors come back with every replica set to the replicas' mean,
    so refreshing also averages away the noise the replicas picked up.
    """
    if not 1 <= len(batches) <= MAX_BATCHES:
        raise EnclaveError(f"refresh takes 1 to {MAX_BATCHES} batches")
    target = _check_level(entry, entry.context.params.top_level if level is None else level)
    opened = [_open(entry, raw, max_bytes=max_bytes) for raw in batches]
    for batch, layout in opened:
        expected = 1 if isinstance(layout, Replicated) else getattr(layout, "n_blocks", -1)
        if not isinstance(layout, Replicated | SampleBlocks) or len(batch.items) != expected:
            raise ShapeError("refresh takes model vectors or sample blocks, with matching counts")
    out = []
    scale = entry.context.params.scale
    for batch, layout in opened:
        values = _decrypt_all(entry, batch)
        if isinstance(layout, Replicated):
            arrays = [layout.pack(layout.unpack(values[0]))]
        else:
            assert isinstance(layout, SampleBlocks)
            arrays = layout.pack(layout.unpack(values))
        out.append(_seal(entry, arrays, batch.layout, level=target, scale=scale))
    return out


# --------------------------------------------------------------- logistic error step
def logistic_error(
    entry: KeyEntry,
    z_raw: bytes,
    y_raw: bytes,
    *,
    features: dict[str, Any],
    first_block: int,
    start: int,
    stop: int,
    learning_rate: float,
    level: int,
    intercept: bool,
    max_bytes: int,
) -> tuple[bytes, bytes | None]:
    """``e = (sigmoid(clip(z)) - y) * learning_rate / batch`` on samples ``[start, stop)``.

    ``e`` comes back pre-rotated per giant step of the feature layout, so the
    host's ``X.T @ e`` needs only baby-step rotations; it is encoded at the
    scale of the prime the host's rescale drops, so the gradient lands
    exactly on the nominal scale. With ``intercept`` the sum of ``e`` comes
    back too, replicated, one level lower (where the gradient lands).
    """
    policy = entry.policy
    diag = from_description(features)
    if not isinstance(diag, Diagonals) or diag.slots != entry.context.params.slots:
        raise ShapeError("features must describe a diagonal layout for these parameters")
    if not (math.isfinite(learning_rate) and 0 < learning_rate <= policy.max_learning_rate):
        raise EnclaveError("learning rate outside the policy's bounds")
    _check_level(entry, level, lowest=2 if intercept else 1)
    z_batch, z_layout = _open(entry, z_raw, max_bytes=max_bytes)
    y_batch, y_layout = _open(entry, y_raw, max_bytes=max_bytes)
    S = diag.slots
    count = len(z_batch.items)
    if z_layout != diag.samples or y_layout != diag.samples:
        raise ShapeError("logits and labels must be sample blocks of the feature layout")
    if count < 1 or len(y_batch.items) != count:
        raise ShapeError("logits and labels need the same, non-zero number of blocks")
    if not (first_block >= 0 and first_block + count <= diag.n_blocks):
        raise ShapeError("block range outside the layout")
    lo, hi = first_block * S, min((first_block + count) * S, diag.n_samples)
    if not (lo <= start < stop <= hi):
        raise ShapeError("sample range outside the blocks sent")

    z = np.concatenate(_decrypt_all(entry, z_batch))
    y = np.concatenate(_decrypt_all(entry, y_batch))
    idx = np.arange(lo, lo + count * S)
    mask = ((idx >= start) & (idx < stop)).astype(np.float64)
    p = 1.0 / (1.0 + np.exp(-np.clip(z, -policy.clip, policy.clip)))
    e = (p - np.clip(y, 0.0, 1.0)) * mask * (learning_rate / (stop - start))

    prime = float(entry.context.backend.prime(level))
    blocks = e.reshape(count, S)
    arrays = [np.roll(blk, diag.baby * b2) for blk in blocks for b2 in range(diag.giant)]
    layout = {"kind": "errors", "features": dict(features), "first_block": first_block}
    e_out = _seal(entry, arrays, layout, level=level, scale=prime)
    sum_out = None
    if intercept:
        rep = Replicated(1, 1, S)
        sum_out = _seal(entry, [rep.pack(float(e.sum()))], rep.describe(), level=level - 1,
                        scale=entry.context.params.scale)
    return e_out, sum_out


# ---------------------------------------------------------------- coarse aggregates
def _metrics(z: np.ndarray, y: np.ndarray, clip: float) -> dict[str, float]:
    zc = np.clip(z, -clip, clip)
    yb = (y > 0.5).astype(np.float64)
    return {
        "accuracy": float(np.mean((zc > 0) == (yb > 0.5))),
        "log_loss": float(np.mean(np.logaddexp(0.0, zc) - yb * zc)),
    }


def _samples(entry: KeyEntry, *raws: bytes, max_bytes: int) -> tuple[SampleBlocks, list[np.ndarray]]:
    """Decrypt several sample-block batches of one layout (logits, labels) after checking them."""
    opened = [_open(entry, raw, max_bytes=max_bytes) for raw in raws]
    layout = opened[0][1]
    if not isinstance(layout, SampleBlocks) or any(lay != layout for _, lay in opened):
        raise ShapeError("logits and labels must be sample blocks of the same layout")
    if any(len(batch.items) != layout.n_blocks for batch, _ in opened):
        raise ShapeError("logits and labels must cover every block of their layout")
    if layout.n_samples < entry.policy.min_samples:
        raise PolicyViolation("too few samples for an aggregate under this policy")
    return layout, [layout.unpack(_decrypt_all(entry, batch)) for batch, _ in opened]


def evaluate(entry: KeyEntry, z_raw: bytes, y_raw: bytes, *, metrics: Sequence[str],
             max_bytes: int) -> dict[str, float]:
    """Accuracy and/or log-loss of logits ``z`` against labels ``y``, rounded to 1e-3."""
    wanted = list(metrics)
    if not wanted or not set(wanted) <= set(entry.policy.release):
        raise PolicyViolation("the owner's policy does not release these metrics")
    _, (z, y) = _samples(entry, z_raw, y_raw, max_bytes=max_bytes)
    entry.budget.spend()
    values = _metrics(z, y, entry.policy.clip)
    return {m: coarse(values[m]) for m in wanted}


def compare(entry: KeyEntry, candidate_raw: bytes, current_raw: bytes, y_raw: bytes, *,
            metric: str, max_bytes: int) -> dict[str, Any]:
    """Promote or keep: only the decision (and the metric, if released) leaves."""
    if not entry.policy.allow_decision:
        raise PolicyViolation("the owner's policy does not release promote/keep decisions")
    if metric not in ("accuracy", "log_loss"):
        raise EnclaveError("unknown metric")
    _, (cand, cur, y) = _samples(entry, candidate_raw, current_raw, y_raw, max_bytes=max_bytes)
    entry.budget.spend()
    clip = entry.policy.clip
    a, b = _metrics(cand, y, clip)[metric], _metrics(cur, y, clip)[metric]
    promote = a >= b if metric == "accuracy" else a <= b
    out: dict[str, Any] = {"promote": bool(promote)}
    if metric in entry.policy.release:
        out["candidate"] = coarse(a)
        out["current"] = coarse(b)
    return out
