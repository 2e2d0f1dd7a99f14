"""The one seam between the service and the learning code: the :class:`Refiner` protocol.

Runs in: host. The service stores, schedules and serves; a refiner does the
encrypted work -- it checks a model's bytes, runs one refinement round
(refine on the new data, then have the enclave judge candidate against
current on the hold-out set) and answers encrypted inference. Its messages
are frozen dataclasses of wire-safe values; "keep the current model" is a
return value, not an exception.

:class:`LearnRefiner` implements the protocol with :mod:`cipherloop.learn`
and an enclave client; tests of the service may plug in a fake.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from ..blobstore import BlobStore
from ..ckks import CiphertextBatch, Diagonals, PublicContext
from ..ckks.layout import from_description
from ..errors import EnclaveUnavailable, PolicyViolation, ShapeError
from ..learn import (
    EnclaveClient,
    EncryptedModel,
    EncryptedNetwork,
    LevelPlanner,
    RefineConfig,
    RefineStats,
    compare,
    kernels,
    network_scores,
    refine,
)
from ..learn.dataset import StreamedDataset
from ..learn.engine import Engine, LocalEngine
from ..learn.network import is_network
from .db import Decision
from .wire import check_features


@dataclass(frozen=True)
class SampleSet:
    """One upload's encrypted samples, already checked against the tenant's context."""

    features: CiphertextBatch
    labels: CiphertextBatch


@dataclass(frozen=True)
class StoredSamples:
    """One upload's samples as stored blocks: the manifest naming them in the blob store.

    A round holds these names, not ciphertexts; the engine reads each block
    when a step needs it (see :mod:`cipherloop.learn.dataset`).
    """

    blobs: BlobStore
    manifest: str


EngineFactory = Callable[[PublicContext], Engine]


@dataclass(frozen=True, kw_only=True)
class RoundSpec:
    """This round's hyperparameters, after the policy's learning-rate schedule."""

    learning_rate: float
    momentum: float
    batch_size: int | None
    epochs: int
    metric: str = "log_loss"
    release_metric: bool = False

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> RoundSpec:
        return cls(learning_rate=float(doc["learning_rate"]), momentum=float(doc["momentum"]),
                   batch_size=None if doc.get("batch_size") is None else int(doc["batch_size"]),
                   epochs=int(doc["epochs"]), metric=str(doc.get("metric", "log_loss")),
                   release_metric=bool(doc.get("release_metric", False)))


@dataclass(frozen=True)
class RoundResult:
    """What a round produced: the candidate (always kept as a version) and the verdict.

    ``metrics`` holds coarse hold-out metrics only if the policy releases them.
    """

    candidate: bytes
    decision: Decision
    reason: str
    metrics: dict[str, Any] | None = None
    stats: dict[str, Any] | None = None


class Refiner(Protocol):
    """The encrypted work the service delegates."""

    def check_model(self, context: PublicContext, model: bytes, *, n_features: int) -> None:
        """Refuse model bytes that are malformed, foreign, or of another width.

        Raises
        ------
        InvalidCiphertext, ParameterMismatch, ShapeError
        """
        ...

    def refine_round(self, context: PublicContext, model: bytes, data: Sequence[StoredSamples],
                     holdout: SampleSet | None, spec: RoundSpec) -> RoundResult:
        """Refine ``model`` on ``data``; judge the candidate on ``holdout``.

        Raises
        ------
        EnclaveUnavailable, EngineUnavailable
            The enclave or the compute engine (Ray cluster) can't be reached,
            or lost a worker for good (the round is retried later).
        CipherloopError
            Anything else that makes the round fail.
        """
        ...

    def predict(self, context: PublicContext, model: bytes,
                features: CiphertextBatch) -> CiphertextBatch:
        """Encrypted scores (logits), one per sample, in sample blocks.

        Raises
        ------
        InvalidCiphertext, ParameterMismatch, ShapeError, EnclaveUnavailable
        """
        ...


def _stats(stats: RefineStats, *, n_samples: int) -> dict[str, Any]:
    return {
        "n_samples": n_samples,
        "steps": int(stats.steps),
        "refreshes": int(stats.refreshes),
        "enclave_calls": int(stats.enclave_calls),
        "enclave_seconds": round(float(stats.enclave_seconds), 3),
        "seconds": round(float(stats.seconds), 3),
    }


class LearnRefiner:
    """:class:`Refiner` on :mod:`cipherloop.learn` and an enclave.

    Parameters
    ----------
    enclave : EnclaveClient or None
        Client of the enclave holding the tenants' keys; ``None`` allows only
        model checks and inference on models that need no refresh.
    engine : callable, optional
        Gives the engine a round's kernels run on, for a tenant's context
        (e.g. a shared :class:`~cipherloop.learn.ray_engine.RayEngine`); by
        default a :class:`~cipherloop.learn.engine.LocalEngine` per round,
        streaming blocks from the store.
    """

    def __init__(self, enclave: EnclaveClient | None = None, *,
                 engine: EngineFactory | None = None) -> None:
        self._enclave = enclave
        self._engine = engine

    def __repr__(self) -> str:
        return f"LearnRefiner(enclave={self._enclave!r})"

    def _require_enclave(self) -> EnclaveClient:
        if self._enclave is None:
            raise EnclaveUnavailable("this service runs without an enclave")
        return self._enclave

    def _model(self, context: PublicContext, model: bytes) -> EncryptedModel | EncryptedNetwork:
        """A binary model, or a softmax/MLP network (told apart by their wire format)."""
        if is_network(model):
            return EncryptedNetwork.from_bytes(context, model, max_bytes=len(model))
        return EncryptedModel.from_bytes(context, model, max_bytes=len(model))

    def check_model(self, context: PublicContext, model: bytes, *, n_features: int) -> None:
        m = self._model(context, model)
        if m.n_features != n_features:
            raise ShapeError(f"expected a model of {n_features} features, got {m.n_features}")

    def refine_round(self, context: PublicContext, model: bytes, data: Sequence[StoredSamples],
                     holdout: SampleSet | None, spec: RoundSpec) -> RoundResult:
        enclave = self._require_enclave()
        current = self._model(context, model)
        datasets = [StreamedDataset.open(context, s.blobs, s.manifest) for s in data]
        config = RefineConfig(learning_rate=spec.learning_rate, momentum=spec.momentum,
                              batch_size=spec.batch_size, epochs=spec.epochs)
        engine = LocalEngine(context) if self._engine is None else self._engine(context)
        try:
            candidate, stats = refine(current, datasets, config, context=context,
                                      enclave=enclave, engine=engine)
        finally:
            if self._engine is None:
                engine.close()
        out = candidate.to_bytes(context)
        info = _stats(stats, n_samples=sum(d.n_samples for d in datasets))
        if holdout is None:
            return RoundResult(out, Decision.KEEP, "kept: there is no hold-out set to judge on",
                               None, info)
        # The enclave checks the hold-out set (pinned, exact encodings); the host only
        # forwards it, so nothing here loads its ciphertexts.
        hold_layout = from_description(holdout.features.layout)
        hold_samples = hold_layout.n_samples if isinstance(hold_layout, Diagonals) else 0
        try:
            verdict = compare(candidate, current, (holdout.features, holdout.labels),
                              context=context, enclave=enclave, metric=spec.metric,
                              with_metrics=spec.release_metric)
        except PolicyViolation as exc:
            return RoundResult(out, Decision.KEEP, f"kept: the enclave gave no verdict ({exc})",
                               None, info)
        promote = bool(verdict.get("promote"))
        metrics = None
        if spec.release_metric and "candidate" in verdict:
            metrics = {"metric": spec.metric, "candidate": verdict["candidate"],
                       "current": verdict.get("current"), "holdout_samples": hold_samples}
        reason = (f"{'promoted' if promote else 'kept'}: candidate "
                  f"{'at least as good as' if promote else 'worse than'} current on the "
                  f"hold-out {spec.metric}")
        return RoundResult(out, Decision.PROMOTE if promote else Decision.KEEP, reason,
                           metrics, info)

    def predict(self, context: PublicContext, model: bytes,
                features: CiphertextBatch) -> CiphertextBatch:
        m = self._model(context, model)
        layout = check_features(context, features, n_features=m.n_features)
        if isinstance(m, EncryptedNetwork):  # K logits per sample, the blocks of each class in turn
            z_k = network_scores(m, features.open(context), layout, context=context,
                                 enclave=self._enclave)
            return CiphertextBatch.of(context, [c for z in z_k for c in z],
                                      layout.samples.describe())
        if LevelPlanner(0.0).needs_refresh(m):
            m = self._refresh(context, m)
        cts = features.open(context)
        z = kernels.logits(cts, m.coef, layout, list(range(layout.n_blocks)), m.intercept)
        return CiphertextBatch.of(context, z, layout.samples.describe())

    def _refresh(self, context: PublicContext, m: EncryptedModel) -> EncryptedModel:
        """Re-encrypt the model's parts at the top level in the enclave."""
        enclave = self._require_enclave()
        parts = m.parts()
        raws = [CiphertextBatch.of(context, [ct], m.layout_of(name).describe()).to_bytes()
                for name, ct in parts.items()]
        fresh = enclave.refresh(context.key_id, raws)
        opened = {name: CiphertextBatch.from_bytes(raw).open(context, count=1)[0]
                  for name, raw in zip(parts, fresh, strict=True)}
        return m.with_parts(**opened)

    def close(self) -> None:
        if self._enclave is not None:
            self._enclave.close()
