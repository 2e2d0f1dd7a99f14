"""Encrypted binary logistic regression: mini-batch gradient descent with Nesterov momentum.

Runs in: host. The refining step of DESIGN.md: the host computes
``z = X @ u`` (``u`` the look-ahead point), the enclave turns it into the
error ``e = (sigmoid(z) - y) * lr / m`` (the learning rate folded in), the
host computes ``g = X.T @ e`` and steps ``w' = u - g``, ``v' = w' - w``
(Sutskever's form of Nesterov momentum, with no negation and no extra
multiplication). The level planner asks the enclave to refresh the model
only when the next step would run out of levels.

``refine`` is a pure function -- model and data in, model out -- like
scikit-learn's ``_plain_sgd``; :mod:`cipherloop.learn.reference` runs the
same algorithm on plaintext.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from ..ckks import Ciphertext, CiphertextBatch, Replicated
from ..ckks.context import _ContextBase
from ..enclave.limits import MAX_BATCHES
from .dataset import Dataset
from .enclave_client import EnclaveClient
from .engine import Engine, LocalEngine
from .fanout import ClassRunner, SerialClasses
from .model import EncryptedDataset, EncryptedModel
from .network import EncryptedNetwork


@dataclass(frozen=True)
class RefineConfig:
    """Hyperparameters of one refinement (wire-safe scalars only).

    ``batch_size=None`` means full-batch gradient descent over each data set.
    ``n_jobs`` processes share a multiclass step's classes (scikit-learn's
    convention: ``None`` is one, ``-1`` every core; see :mod:`.fanout`); it
    changes where products run, never their results.
    """

    learning_rate: float = 1.0
    momentum: float = 0.9
    batch_size: int | None = None
    epochs: int = 1
    n_jobs: int | None = None

    def __post_init__(self) -> None:
        if not 0 < self.learning_rate < 1e3:
            raise ValueError("learning_rate must be in (0, 1000)")
        if not 0 <= self.momentum < 1:
            raise ValueError("momentum must be in [0, 1)")
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError("batch_size must be positive or None")
        if self.epochs < 1:
            raise ValueError("epochs must be at least 1")


@dataclass
class RefineStats:
    """What a refinement cost: steps, refreshes, enclave time and backend operation counts."""

    steps: int = 0
    refreshes: int = 0
    enclave_calls: int = 0
    enclave_seconds: float = 0.0
    seconds: float = 0.0
    ops: Counter[str] = field(default_factory=Counter)


def minibatches(n_samples: int, batch_size: int | None) -> Iterator[tuple[int, int]]:
    """``[start, stop)`` ranges in order; the owner shuffles before encrypting."""
    size = n_samples if batch_size is None else batch_size
    for start in range(0, n_samples, size):
        yield start, min(start + size, n_samples)


#: Parts one refresh call carries: as many as the enclave takes.
REFRESH_BATCHES = MAX_BATCHES


class Refinable(Protocol):
    """What the refining loop needs of any model kind: named parts in replicated layouts."""

    def parts(self) -> dict[str, Ciphertext]: ...

    def layout_of(self, part: str) -> Replicated: ...

    def with_parts(self, **parts: Any) -> Any: ...


R = TypeVar("R", bound=Refinable)


@dataclass(frozen=True)
class LevelPlanner:
    """Decides when the model must be refreshed: only when the next step would fail.

    A step multiplies the look-ahead point ``u = w + momentum * v`` with the
    data and rescales, so ``u`` needs a level >= 1; ``momentum * v`` costs
    one more level. Refreshing earlier would only waste enclave round trips.
    """

    momentum: float

    def lookahead_level(self, model: Refinable) -> int:
        parts = model.parts()
        levels = [ct.level for name, ct in parts.items() if "velocity" not in name]
        if self.momentum:
            levels += [v.level - 1 for name, v in parts.items() if "velocity" in name]
        return min(levels)

    def needs_refresh(self, model: Refinable) -> bool:
        return self.lookahead_level(model) < 1


class _Session:
    """The pieces every step needs: context, enclave, engine, key id and the running stats."""

    def __init__(self, context: _ContextBase, enclave: EnclaveClient, stats: RefineStats,
                 engine: Engine | None = None, classes: ClassRunner | None = None) -> None:
        self.context = context
        self.enclave = enclave
        self.engine = engine if engine is not None else LocalEngine(context)
        self.classes = classes if classes is not None else SerialClasses(context)
        self.key_id = context.key_id
        self.stats = stats

    def batch(self, cts: Sequence[Ciphertext], layout: dict[str, Any]) -> bytes:
        return CiphertextBatch.of(self.context, cts, layout).to_bytes()

    def enclave_call(self, fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return fn(*args, **kw)
        finally:
            self.stats.enclave_seconds += time.perf_counter() - t0
            self.stats.enclave_calls += 1


def refresh_model(model: R, session: _Session) -> R:
    """Have the enclave re-encrypt every part of the model at the top level.

    One enclave call for up to :data:`REFRESH_BATCHES` parts (a binary model
    has at most four), more calls for the many vectors of a network.
    """
    parts = model.parts()
    names = list(parts)
    fresh: dict[str, Ciphertext] = {}
    for i in range(0, len(names), REFRESH_BATCHES):
        chunk = names[i:i + REFRESH_BATCHES]
        raws = [session.batch([parts[n]], model.layout_of(n).describe()) for n in chunk]
        out = session.enclave_call(session.enclave.refresh, session.key_id, raws)
        for name, raw in zip(chunk, out, strict=True):
            fresh[name] = CiphertextBatch.from_bytes(raw).open(session.context, count=1)[0]
    session.stats.refreshes += 1
    refreshed: R = model.with_parts(**fresh)
    return refreshed


def _lookahead(model: EncryptedModel, momentum: float) -> tuple[Ciphertext, Ciphertext | None]:
    u_w, u_b = model.coef, model.intercept
    if momentum and model.coef_velocity is not None:
        u_w = u_w + model.coef_velocity.times(momentum)
    if momentum and u_b is not None and model.intercept_velocity is not None:
        u_b = u_b + model.intercept_velocity.times(momentum)
    return u_w, u_b


def _step(model: EncryptedModel, data: Dataset, start: int, stop: int,
          config: RefineConfig, session: _Session) -> EncryptedModel:
    layout = data.layout
    m = layout.block
    c0, c1 = start // m, (stop - 1) // m + 1
    blocks = list(range(c0, c1))
    u_w, u_b = _lookahead(model, config.momentum)

    z = session.engine.logits(data, u_w, u_b, blocks)
    samples = layout.samples.describe()
    e_raw, s_raw = session.enclave_call(
        session.enclave.logistic_error, session.key_id,
        z=session.batch(z, samples), y=session.batch(data.labels[c0:c1], samples),
        features=layout.describe(), first_block=c0, start=start, stop=stop,
        learning_rate=config.learning_rate, level=data.level, intercept=u_b is not None,
    )
    g = session.engine.gradient(data, CiphertextBatch.from_bytes(e_raw), blocks)
    new: dict[str, Ciphertext | None] = {"coef": u_w - g}
    if u_b is not None:
        assert s_raw is not None and model.intercept is not None
        s = CiphertextBatch.from_bytes(s_raw).open(session.context, count=1)[0]
        new["intercept"] = u_b - s
    if config.momentum:
        new["coef_velocity"] = new["coef"] - model.coef  # type: ignore[operator]
        if model.intercept is not None:
            new["intercept_velocity"] = new["intercept"] - model.intercept  # type: ignore[operator]
    session.stats.steps += 1
    return model.with_parts(**new)


def scores(model: EncryptedModel, data: EncryptedDataset, *, context: _ContextBase,
           enclave: EnclaveClient) -> list[Ciphertext]:
    """Encrypted logits ``X @ w + b``, one ciphertext per block (encrypted inference)."""
    session = _Session(context, enclave, RefineStats())
    if LevelPlanner(0.0).needs_refresh(model):
        model = refresh_model(model, session)
    blocks = list(range(data.layout.n_blocks))
    return session.engine.logits(data, model.coef, model.intercept, blocks)


def model_parts(model: EncryptedModel | EncryptedNetwork, context: _ContextBase) -> dict[str, Any]:
    """The weights the enclave scores (coefficients and intercepts), as batches.

    A network sends its weight groups without momentum (and without the MLP's
    transposed copy of ``coef2``), and an MLP its activation by name.
    """
    if isinstance(model, EncryptedNetwork):
        wanted = ("coef", "intercept", "coef1", "intercept1", "coef2", "intercept2")
        out: dict[str, Any] = {k: v for k, v in model.to_batches(context).items() if k in wanted}
        if model.kind == "mlp":
            out["activation"] = model.activation
        return out
    parts = {"coef": CiphertextBatch.of(context, [model.coef], model.layout.describe()).to_bytes()}
    if model.intercept is not None:
        parts["intercept"] = CiphertextBatch.of(
            context, [model.intercept], model.layout_of("intercept").describe()).to_bytes()
    return parts


def evaluate(model: EncryptedModel | EncryptedNetwork, holdout: tuple[CiphertextBatch, CiphertextBatch], *,
             context: _ContextBase, enclave: EnclaveClient,
             metrics: Sequence[str] = ("accuracy", "log_loss")) -> dict[str, float]:
    """Coarse metrics of ``model`` on the owner's pinned hold-out set, scored in the enclave.

    ``holdout`` is the (features, labels) batch pair as the owner encrypted
    and pinned it; the enclave refuses any other.
    """
    features, labels = holdout
    return enclave.evaluate(context.key_id, model=model_parts(model, context),
                            features=features.to_bytes(), labels=labels.to_bytes(),
                            metrics=metrics)


def compare(candidate: EncryptedModel | EncryptedNetwork,
            current: EncryptedModel | EncryptedNetwork,
            holdout: tuple[CiphertextBatch, CiphertextBatch], *, context: _ContextBase,
            enclave: EnclaveClient, metric: str = "log_loss", with_metrics: bool = False,
            ) -> dict[str, Any]:
    """Promote or keep, decided in the enclave on the owner's pinned hold-out set."""
    features, labels = holdout
    return enclave.compare(context.key_id, candidate=model_parts(candidate, context),
                           current=model_parts(current, context), features=features.to_bytes(),
                           labels=labels.to_bytes(), metric=metric, with_metrics=with_metrics)
