"""The narrow operations the enclave offers. None of them returns plaintext values.

Runs in: enclave. The host is the attacker (DESIGN.md, "The enclave's
rules"); any reply, error or timing that depends on a decrypted value is a
decryption oracle. So every operation has two phases:

1. **Before decryption** it validates everything the host sent: sizes,
   parameter digest and key id, layouts, counts, ranges, and each
   ciphertext's level, exact scale, size and ring membership
   (:func:`_load`). A refusal here has its own error class and depends only
   on what the host already knows.
2. **After decryption** (:func:`_after_decryption`) values are sanitised by
   construction -- non-finite values replaced, then clipped to a documented
   range (:func:`_reveal`) -- and every output encoding (level, scale,
   layout) is fixed by the operation and sized so that no value in that range
   can make re-encryption fail. Should anything fail there anyway, it is the
   enclave's own fault: the reply is the same :class:`EnclaveFault` whatever
   the values, and the key is suspended until the owner re-provisions it, so
   a fault cannot be probed twice.

Releases (:func:`evaluate`, :func:`compare`) are computed only on hold-out
sets the owner pinned in its policy, scored by the enclave itself from the
model ciphertexts -- the only host-chosen input to a release is the model --
and every released number is charged, durably, before it leaves. Scoring
decrypts the pinned hold-out set (the owner's own data, pinned for exactly
this); the refining steps never see a sample's features.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from ..ckks import Ciphertext, CiphertextBatch, Diagonals, Replicated, SampleBlocks
from ..ckks.layout import from_description
from ..errors import (
    BadRequest,
    EnclaveFault,
    LevelMismatch,
    PolicyViolation,
    ScaleMismatch,
    ShapeError,
    TooFewSamples,
    UnpinnedHoldout,
)
from .activations import ACTIVATIONS, activation
from .keystore import KeyEntry
from .limits import MAX_BATCHES, MAX_UNITS
from .policy import METRICS, coarse

log = logging.getLogger("cipherloop.enclave")

#: Decrypted model and sample values are clipped to ``[-VALUE_BOUND, VALUE_BOUND]``;
#: at the top level and nominal scale that leaves > 60 bits of modulus headroom.
VALUE_BOUND = float(2**20)

L = TypeVar("L", SampleBlocks, Replicated, Diagonals)


# ------------------------------------------------------------- before decryption
def _parse(raw: bytes, *, max_bytes: int) -> CiphertextBatch:
    return CiphertextBatch.from_bytes(raw, max_bytes=max_bytes)


def _load(entry: KeyEntry, batch: CiphertextBatch, kind: type[L], *, levels: range,
          scale: Callable[[int], float], count: int | None = None
          ) -> tuple[L, list[Ciphertext]]:
    """Validate one parsed batch completely and load its ciphertexts; nothing is decrypted here.

    ``levels`` are the levels the operation takes; ``scale(level)`` the exact
    scale it expects there (the engine keeps scales exact, so any other value
    was edited). All ciphertexts of a batch must share one level.
    """
    ctx = entry.context
    batch.check(ctx)
    layout = from_description(batch.layout)
    if not isinstance(layout, kind) or layout.slots != ctx.params.slots:
        raise ShapeError(f"expected a {kind.__name__} layout for these parameters")
    want = count if count is not None else _count(layout)
    if len(batch.items) != want:
        raise ShapeError(f"expected {want} ciphertexts for this layout, got {len(batch.items)}")
    cts = [ctx.load_ciphertext(item) for item in batch.items]
    level = cts[0].level
    if level not in levels or any(ct.level != level for ct in cts):
        raise LevelMismatch(f"ciphertexts must share one level in {levels.start}..{levels.stop - 1}")
    expected = scale(level)
    if any(ct.scale != expected for ct in cts):
        raise ScaleMismatch("ciphertext scale is not the exact scale this operation takes")
    return layout, cts


def _count(layout: SampleBlocks | Replicated | Diagonals) -> int:
    if isinstance(layout, Replicated):
        return 1
    if isinstance(layout, Diagonals):
        return layout.n_blocks * layout.per_block
    return layout.n_blocks


def _nominal(entry: KeyEntry) -> Callable[[int], float]:
    """Fresh ciphertexts, models and anything only added or multiplied at prime scale."""
    scale = entry.context.params.scale
    return lambda level: scale


def _product(entry: KeyEntry) -> Callable[[int], float]:
    """One ct x ct product of nominal-scale factors, rescaled to ``level``."""
    scale, backend = entry.context.params.scale, entry.context.backend
    top = entry.context.params.top_level
    return lambda level: scale * scale / backend.prime(level + 1) if level < top else math.nan


def _learning_rate(entry: KeyEntry, learning_rate: float) -> float:
    """A finite float in ``(0, max_learning_rate]``: it bounds every error the steps encode."""
    if not (isinstance(learning_rate, float) and math.isfinite(learning_rate)
            and 0 < learning_rate <= entry.policy.max_learning_rate):
        raise BadRequest("learning rate outside the policy's bounds")
    return learning_rate


def _out_level(entry: KeyEntry, level: int, intercept: bool) -> int:
    """Where a step may encode its errors: ``[1, top]``, ``[2, top]`` when their sum comes back
    too (one level lower). With ``|e| <= lr`` no value can overflow at these levels."""
    if isinstance(level, bool) or not isinstance(level, int) or \
            level not in _all_levels(entry, 2 if intercept else 1):
        raise BadRequest("output level outside the range this operation encodes safely")
    return level


def _all_levels(entry: KeyEntry, lowest: int = 0) -> range:
    return range(lowest, entry.context.params.top_level + 1)


class _Window:
    """The blocks a step sends and the samples ``[start, stop)`` of them it covers."""

    def __init__(self, entry: KeyEntry, features: Any, first_block: int, count: int,
                 start: int, stop: int) -> None:
        diag = from_description(features) if isinstance(features, dict) else None
        if not isinstance(diag, Diagonals) or diag.slots != entry.context.params.slots:
            raise ShapeError("features must describe a diagonal layout for these parameters")
        m = diag.block
        if count < 1 or not (first_block >= 0 and first_block + count <= diag.n_blocks):
            raise ShapeError("block range outside the layout")
        lo, hi = first_block * m, min((first_block + count) * m, diag.n_samples)
        if not (lo <= start < stop <= hi):
            raise ShapeError("sample range outside the blocks sent")
        self.diag, self.first_block, self.count = diag, first_block, count
        self.start, self.stop = start, stop
        idx = np.arange(lo, lo + count * m)
        #: Per sample of the window's blocks (``count * block``): 1 inside ``[start, stop)``.
        self.mask = ((idx >= start) & (idx < stop)).astype(np.float64)
        #: The samples these blocks hold, numbered from the first block: layouts the
        #: enclave emits for the host's next products are local to the window.
        self.local = hi - lo

    def samples(self) -> SampleBlocks:
        return self.diag.samples

    def local_layout(self, n_features: int) -> Diagonals:
        return Diagonals.plan(self.local, n_features, self.diag.slots)


def _check_holdout(entry: KeyEntry, features_raw: bytes, labels_raw: bytes, *, max_bytes: int
                   ) -> tuple[Diagonals, list[Ciphertext], list[Ciphertext]]:
    """The owner's pinned hold-out set: digests pinned, fresh encodings, enough samples."""
    features = _parse(features_raw, max_bytes=max_bytes)
    labels = _parse(labels_raw, max_bytes=max_bytes)
    if not entry.policy.pins(features.digest(), labels.digest()):
        raise UnpinnedHoldout("releases are computed only on a hold-out set the owner pinned")
    top = range(entry.context.params.top_level, entry.context.params.top_level + 1)
    diag, f = _load(entry, features, Diagonals, levels=top, scale=_nominal(entry))
    lay, y = _load(entry, labels, SampleBlocks, levels=_all_levels(entry), scale=_nominal(entry))
    if lay != diag.samples:
        raise ShapeError("hold-out labels must be sample blocks of the features' samples")
    if diag.n_samples < entry.policy.min_samples:
        raise TooFewSamples("the pinned hold-out set has fewer samples than the policy's minimum")
    return diag, f, y


@dataclass(frozen=True)
class _Scored:
    """A model as the enclave scores it: binary (one coef), softmax (``K``) or an MLP."""

    coef: tuple[Ciphertext, ...]
    intercept: tuple[Ciphertext, ...] | None
    coef2: tuple[Ciphertext, ...] = ()
    intercept2: tuple[Ciphertext, ...] | None = None
    activation: str = ""
    hidden: Replicated | None = None

    @property
    def binary(self) -> bool:
        """One logit per sample (whatever an MLP's hidden width, its outputs are classes)."""
        return not self.activation and len(self.coef) == 1

    @property
    def n_classes(self) -> int:
        """2 for a binary model (one logit), else the number of output vectors."""
        out = len(self.coef2) if self.activation else len(self.coef)
        return 2 if out == 1 else out


_BINARY_PARTS = {"coef", "intercept"}
_MLP_PARTS = {"coef1", "intercept1", "coef2", "intercept2", "activation"}


def _check_model(entry: KeyEntry, parts: Mapping[str, Any], diag: Diagonals, *, max_bytes: int
                 ) -> _Scored:
    """A model matching the hold-out's width, every part validated before anything is decrypted.

    Binary logistic ``{"coef": 1 vector, "intercept"?: 1 scalar}``, multinomial
    ``{"coef": K vectors, "intercept"?: K scalars}``, or an MLP ``{"coef1": H
    vectors, "intercept1"?: H scalars, "coef2": K vectors of H values,
    "intercept2"?: K scalars, "activation": name}``.
    """
    if not isinstance(parts, Mapping):
        raise BadRequest("a model is a map of named batches")
    keys = set(parts)
    mlp = "coef1" in keys
    if not (keys <= (_MLP_PARTS if mlp else _BINARY_PARTS)) or \
            not all(isinstance(v, bytes) or v is None for k, v in parts.items() if k != "activation"):
        raise BadRequest("a model is a map of 'coef' and optional 'intercept' batches "
                         "(or an MLP's 'coef1', 'intercept1', 'coef2', 'intercept2', 'activation')")
    levels, nominal = _all_levels(entry), _nominal(entry)
    scalar = Replicated(1, 1, diag.slots)

    def vectors(name: str, layout: Replicated | None) -> tuple[Replicated, tuple[Ciphertext, ...]]:
        raw = parts.get(name)
        if not isinstance(raw, bytes):
            raise BadRequest(f"the model needs a {name!r} batch")
        batch = _parse(raw, max_bytes=max_bytes)
        if not 1 <= len(batch.items) <= MAX_UNITS:
            raise ShapeError(f"a model part holds 1 to {MAX_UNITS} vectors")
        lay, cts = _load(entry, batch, Replicated, levels=levels, scale=nominal,
                         count=len(batch.items))
        if layout is not None and lay != layout:
            raise ShapeError(f"model part {name!r} does not match the hold-out set's width")
        return lay, tuple(cts)

    def scalars(name: str, count: int) -> tuple[Ciphertext, ...] | None:
        if parts.get(name) is None:
            return None
        lay, cts = vectors(name, scalar)
        if len(cts) != count:
            raise ShapeError(f"{name!r} needs one replicated scalar per vector")
        return cts

    if not mlp:
        _, coef = vectors("coef", diag.model)
        return _Scored(coef, scalars("intercept", len(coef)))
    act = parts.get("activation")
    if act not in ACTIVATIONS:
        raise BadRequest(f"an MLP's activation is one of {ACTIVATIONS}")
    _, coef1 = vectors("coef1", diag.model)
    hidden = Replicated.for_features(len(coef1), diag.slots)
    _, coef2 = vectors("coef2", hidden)
    if len(coef2) < 2:
        raise ShapeError("an MLP has at least two outputs")
    return _Scored(coef1, scalars("intercept1", len(coef1)), coef2,
                   scalars("intercept2", len(coef2)), str(act), hidden)


# -------------------------------------------------------------- after decryption
@contextlib.contextmanager
def _after_decryption(entry: KeyEntry) -> Iterator[None]:
    """Anything failing past the first decryption is the enclave's fault, never a reply to probe."""
    try:
        yield
    except Exception as exc:
        # The type name only: a message or traceback could carry decrypted values.
        log.error("enclave fault (%s); key %s suspended", type(exc).__name__, entry.context.key_id)
        with contextlib.suppress(Exception):
            entry.suspend()
        raise EnclaveFault("enclave fault: the key is suspended until its owner re-provisions it"
                           ) from None


def _reveal(entry: KeyEntry, cts: Sequence[Ciphertext], low: float, high: float) -> np.ndarray:
    """Decrypt, then map into ``[low, high]`` by construction: NaN to 0, infinities to the ends."""
    ctx = entry.context
    values = np.stack([ctx.decrypt(ct) for ct in cts])
    return np.asarray(np.clip(np.nan_to_num(values, nan=0.0, posinf=high, neginf=low), low, high))


def _reveal_samples(entry: KeyEntry, cts: Sequence[Ciphertext], layout: SampleBlocks,
                    low: float, high: float, *, partial: bool) -> np.ndarray:
    """Per-sample values of sample blocks, in ``[low, high]``: lane 0 of each block, or with
    ``partial`` (logits the host computed lane by lane) the sum over the lanes.

    Partial values are first bounded to ``±VALUE_BOUND`` (finite, so the sum
    cannot overflow) and the sums are clipped: no decrypted value can fail.
    """
    if not partial:
        return _reveal(entry, cts, low, high)[:, : layout.block].ravel()
    parts = _reveal(entry, cts, -VALUE_BOUND, VALUE_BOUND)
    return np.asarray(np.clip(layout.fold(parts), low, high))


def _errors(entry: KeyEntry, values: np.ndarray, diag: Diagonals, first_block: int,
            features: dict[str, Any], *, level: int) -> list[bytes]:
    """Each column of ``values`` (one row per sample of the window's blocks) as errors in every
    lane of its sample, pre-rotated per giant step of ``diag``.

    Encoded at the scale of the prime the host's rescale drops, so ``X.T @ e``
    lands exactly on the nominal scale.
    """
    m, scale = diag.block, float(entry.context.backend.prime(level))
    layout = {"kind": "errors", "features": dict(features), "first_block": first_block}
    rows = -(-values.shape[0] // m) * m
    padded = np.zeros((rows, values.shape[1]))
    padded[: values.shape[0]] = values
    out = []
    for col in padded.T:
        blocks = [diag.samples.spread(b) for b in col.reshape(-1, m)]
        out.append(_seal(entry, diag.errors_of(blocks), layout, level=level, scale=scale))
    return out


def _seal(entry: KeyEntry, arrays: Sequence[np.ndarray], layout: dict[str, Any], *,
          level: int, scale: float) -> bytes:
    ctx = entry.context
    items = tuple(ctx.encrypt_bytes(a, level=level, scale=scale) for a in arrays)
    return CiphertextBatch(ctx.params.digest(), ctx.key_id, dict(layout), items).to_bytes()


# --------------------------------------------------------------------------- refresh
def refresh(entry: KeyEntry, batches: Sequence[bytes], *, max_bytes: int) -> list[bytes]:
    """Decrypt and re-encrypt at the top level and nominal scale, cleaning the layout's padding.

    Takes model vectors (replicated) or sample blocks at any level, at the
    nominal scale. Values are clipped to ``±VALUE_BOUND``; replicated vectors
    come back with every replica set to the replicas' mean, so refreshing
    also averages away the noise the replicas picked up. The output level
    and scale are the operation's, never the host's.
    """
    entry.check_open()
    if not 1 <= len(batches) <= MAX_BATCHES:
        raise BadRequest(f"refresh takes 1 to {MAX_BATCHES} batches")
    opened: list[tuple[CiphertextBatch, Replicated | SampleBlocks, list[Ciphertext]]] = []
    levels, nominal = _all_levels(entry), _nominal(entry)
    for raw in batches:
        batch = _parse(raw, max_bytes=max_bytes)
        kind = batch.layout.get("kind")
        if kind == "replicated":
            opened.append((batch, *_load(entry, batch, Replicated, levels=levels, scale=nominal)))
        elif kind == "samples":
            opened.append((batch, *_load(entry, batch, SampleBlocks, levels=levels, scale=nominal)))
        else:
            raise ShapeError("refresh takes replicated vectors or sample blocks")
    params = entry.context.params
    out = []
    with _after_decryption(entry):
        for batch, layout, cts in opened:
            values = _reveal(entry, cts, -VALUE_BOUND, VALUE_BOUND)
            if isinstance(layout, Replicated):
                arrays = [layout.pack(layout.unpack(values[0]))]
            else:
                arrays = layout.pack(layout.unpack(list(values)))
            out.append(_seal(entry, arrays, batch.layout, level=params.top_level, scale=params.scale))
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
    """``e = (sigmoid(clip(z)) - clip(y, 0, 1)) * learning_rate / batch`` on samples ``[start, stop)``.

    ``z`` must be one rescaled ct x ct product (scale ``S^2 / q``), ``y``
    labels at the nominal scale. ``e`` comes back at ``level`` (the features'
    level), pre-rotated per giant step of the feature layout, so the host's
    ``X.T @ e`` needs only baby-step rotations; it is encoded at the scale of
    the prime the host's rescale drops, so the gradient lands exactly on the
    nominal scale. With ``intercept`` the sum of ``e`` comes back too,
    replicated, one level lower. The host picks ``level`` only within
    ``[1, top]`` (``[2, top]`` with an intercept), and ``|e| <= lr <= 1000``:
    at any such level no value can overflow either encoding.
    """
    entry.check_open()
    policy = entry.policy
    _learning_rate(entry, learning_rate)
    _out_level(entry, level, intercept)
    z_batch, y_batch = _parse(z_raw, max_bytes=max_bytes), _parse(y_raw, max_bytes=max_bytes)
    count = len(z_batch.items)
    if count < 1 or len(y_batch.items) != count:
        raise ShapeError("logits and labels need the same, non-zero number of blocks")
    window = _Window(entry, features, first_block, count, start, stop)
    y_layout, y_cts = _load(entry, y_batch, SampleBlocks, count=count, levels=_all_levels(entry),
                            scale=_nominal(entry))
    z_layout, z_cts = _load(entry, z_batch, SampleBlocks, count=count, levels=_all_levels(entry),
                            scale=_product(entry))
    samples = window.samples()
    if z_layout != samples or y_layout != samples:
        raise ShapeError("logits and labels must be sample blocks of the feature layout")
    step = learning_rate / (stop - start)

    with _after_decryption(entry):
        z = _reveal_samples(entry, z_cts, samples, -policy.clip, policy.clip, partial=True)
        y = _reveal_samples(entry, y_cts, samples, 0.0, 1.0, partial=False)
        e = (1.0 / (1.0 + np.exp(-z)) - y) * window.mask * step
        (e_out,) = _errors(entry, e[:, None], window.diag, first_block, features, level=level)
        sum_out = None
        if intercept:
            rep = Replicated(1, 1, samples.slots)
            sum_out = _seal(entry, [rep.pack(float(e.sum()))], rep.describe(), level=level - 1,
                            scale=entry.context.params.scale)
    return e_out, sum_out


# ---------------------------------------------------------------- coarse aggregates
def _holdout_scores(entry: KeyEntry, X: np.ndarray, diag: Diagonals, coef: Ciphertext,
                    intercept: Ciphertext | None) -> np.ndarray:
    """``X @ w + b`` on the decrypted, pinned hold-out set, with the model clipped to ``±VALUE_BOUND``.

    Plain numpy on decrypted values: nothing here can fail on a value. (Multiplying
    the encrypted features by the plaintext model instead would fail in SEAL when
    the model encodes to zero -- a value-dependent failure.)
    """
    w = diag.model.unpack(_reveal(entry, [coef], -VALUE_BOUND, VALUE_BOUND)[0])
    b = 0.0
    if intercept is not None:
        b = float(_reveal(entry, [intercept], -VALUE_BOUND, VALUE_BOUND)[0].mean())
    return np.asarray(X @ w + b)


def _score(entry: KeyEntry, X: np.ndarray, diag: Diagonals, model: _Scored) -> np.ndarray:
    """Logits on the decrypted hold-out set: ``(n,)`` for a binary model, ``(n, K)`` otherwise.

    Every layer is plain numpy on clipped decrypted values (see
    :func:`_holdout_scores`): nothing here can fail on a value.
    """
    def column(cts: tuple[Ciphertext, ...], b: tuple[Ciphertext, ...] | None) -> np.ndarray:
        return np.stack([_holdout_scores(entry, X, diag, w, None if b is None else b[i])
                         for i, w in enumerate(cts)], axis=1)

    if not model.activation:
        if model.binary:
            return _holdout_scores(entry, X, diag, model.coef[0],
                                   None if model.intercept is None else model.intercept[0])
        return column(model.coef, model.intercept)
    clip = entry.policy.clip
    a = activation(model.activation, np.clip(column(model.coef, model.intercept), -clip, clip))
    assert model.hidden is not None
    w2 = np.stack([model.hidden.unpack(v) for v in
                   _reveal(entry, list(model.coef2), -VALUE_BOUND, VALUE_BOUND)], axis=1)
    b2 = 0.0
    if model.intercept2 is not None:
        b2 = _reveal(entry, list(model.intercept2), -VALUE_BOUND, VALUE_BOUND).mean(axis=1)
    return np.asarray(a @ w2 + b2)


def _metrics(z: np.ndarray, y: np.ndarray, clip: float) -> dict[str, float]:
    zc = np.clip(z, -clip, clip)
    if zc.ndim == 2:  # K classes: labels are class indices
        idx = np.rint(y).astype(np.int64)
        picked = zc[np.arange(len(idx)), idx]
        top = zc.max(axis=1)
        lse = top + np.log(np.exp(zc - top[:, None]).sum(axis=1))
        return {"accuracy": float(np.mean(zc.argmax(axis=1) == idx)),
                "log_loss": float(np.mean(lse - picked))}
    yb = (y > 0.5).astype(np.float64)
    return {
        "accuracy": float(np.mean((zc > 0) == (yb > 0.5))),
        "log_loss": float(np.mean(np.logaddexp(0.0, zc) - yb * zc)),
    }


def _wanted(entry: KeyEntry, metrics: Sequence[str]) -> list[str]:
    wanted = list(metrics)
    if not wanted or len(set(wanted)) != len(wanted) or not set(wanted) <= set(METRICS):
        raise BadRequest(f"metrics must be distinct names out of {METRICS}")
    if not set(wanted) <= set(entry.policy.release):
        raise PolicyViolation("the owner's policy does not release these metrics")
    return wanted


def evaluate(entry: KeyEntry, model: Mapping[str, Any], features_raw: bytes, labels_raw: bytes,
             *, metrics: Sequence[str], max_bytes: int) -> dict[str, float]:
    """Accuracy and/or log-loss of ``model`` on a pinned hold-out set, rounded to 1e-3.

    Each metric released is charged to the budget before it leaves.
    """
    entry.check_open()
    wanted = _wanted(entry, metrics)
    diag, f, y_cts = _check_holdout(entry, features_raw, labels_raw, max_bytes=max_bytes)
    scored = _check_model(entry, model, diag, max_bytes=max_bytes)
    entry.spend(len(wanted))
    with _after_decryption(entry):
        X = diag.unpack(list(_reveal(entry, f, -VALUE_BOUND, VALUE_BOUND)))
        z = _score(entry, X, diag, scored)
        y = _reveal(entry, y_cts, 0.0, scored.n_classes - 1.0).ravel()[: diag.n_samples]
        values = _metrics(z, y, entry.policy.clip)
        return {m: coarse(values[m]) for m in wanted}


def compare(entry: KeyEntry, candidate: Mapping[str, Any], current: Mapping[str, Any],
            features_raw: bytes, labels_raw: bytes, *, metric: str, with_metrics: bool,
            max_bytes: int) -> dict[str, Any]:
    """Promote or keep, on a pinned hold-out set: only the decision (and metrics, if asked
    and released) leaves. The decision is one released number, each metric value another."""
    entry.check_open()
    if not entry.policy.allow_decision:
        raise PolicyViolation("the owner's policy does not release promote/keep decisions")
    if metric not in METRICS:
        raise BadRequest(f"metric must be one of {METRICS}")
    released = with_metrics and metric in entry.policy.release
    diag, f, y_cts = _check_holdout(entry, features_raw, labels_raw, max_bytes=max_bytes)
    cand = _check_model(entry, candidate, diag, max_bytes=max_bytes)
    cur = _check_model(entry, current, diag, max_bytes=max_bytes)
    if cand.n_classes != cur.n_classes or cand.binary != cur.binary:
        raise ShapeError("candidate and current models must have the same outputs")
    entry.spend(3 if released else 1)
    clip = entry.policy.clip
    with _after_decryption(entry):
        X = diag.unpack(list(_reveal(entry, f, -VALUE_BOUND, VALUE_BOUND)))
        y = _reveal(entry, y_cts, 0.0, cand.n_classes - 1.0).ravel()[: diag.n_samples]
        a = _metrics(_score(entry, X, diag, cand), y, clip)[metric]
        b = _metrics(_score(entry, X, diag, cur), y, clip)[metric]
        promote = a >= b if metric == "accuracy" else a <= b
        out: dict[str, Any] = {"promote": bool(promote)}
        if released:
            out["candidate"] = coarse(a)
            out["current"] = coarse(b)
        return out
