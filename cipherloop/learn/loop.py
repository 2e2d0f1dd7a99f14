"""The one refining loop every model kind shares.

Runs in: host. A model kind supplies its step -- its forward products, its
enclave error step and its updates (:func:`.logistic._step`,
:func:`.softmax.step`, :func:`.mlp.step`) -- and its plaintext twin lives in
:mod:`.reference`; the loop, the mini-batch plan, the level planner and the
refresh are the same for all, the way scikit-learn's SGD shares
``_plain_sgd`` across losses.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import TypeVar

from ..ckks.context import _ContextBase
from ..errors import ShapeError
from . import mlp, softmax
from .dataset import Dataset
from .enclave_client import EnclaveClient
from .engine import Engine
from .fanout import class_runner
from .logistic import (
    LevelPlanner,
    RefineConfig,
    RefineStats,
    _Session,
    _step,
    minibatches,
    refresh_model,
)
from .model import EncryptedModel
from .network import EncryptedNetwork

M = TypeVar("M", bound=EncryptedModel | EncryptedNetwork)


def _kind_step(model: EncryptedModel | EncryptedNetwork) -> Callable[..., object]:
    if isinstance(model, EncryptedModel):
        return _step
    return softmax.step if model.kind == "softmax" else mlp.step


def _check(model: EncryptedModel | EncryptedNetwork, data: Dataset) -> None:
    if isinstance(model, EncryptedModel):
        if data.n_features != model.n_features or data.layout.model != model.layout:
            raise ShapeError("data and model disagree on the number of features")
    elif data.n_features != model.n_features:
        raise ShapeError("data and model disagree on the number of features")


def refine(
    model: M,
    datasets: Sequence[Dataset],
    config: RefineConfig,
    *,
    context: _ContextBase,
    enclave: EnclaveClient,
    engine: Engine | None = None,
    on_step: Callable[[int, int], None] | None = None,
) -> tuple[M, RefineStats]:
    """Run ``config.epochs`` epochs of mini-batch steps over ``datasets``; return the new model.

    Parameters
    ----------
    model : the encrypted model to refine (any level; refreshed as needed): a
        binary :class:`.model.EncryptedModel` or a softmax/MLP
        :class:`.network.EncryptedNetwork`.
    datasets : encrypted data sets (in memory, or streamed from a blob store), visited in
        order, each in ``batch_size`` slices.
    config : hyperparameters.
    context : the owner's public context (or secret context, on the owner's side).
    enclave : client of an enclave provisioned with this context's key.
    engine : where the binary kernels run (default: this process).
    on_step : called with ``(steps done, steps total)`` after every step (progress bars).
    """
    for data in datasets:
        _check(model, data)
    kind_step = _kind_step(model)
    stats = RefineStats()
    multiclass = isinstance(model, EncryptedNetwork) and model.kind == "softmax"
    classes = class_runner(context, datasets, config.n_jobs if multiclass else None)
    session = _Session(context, enclave, stats, engine, classes)
    planner = LevelPlanner(config.momentum)
    plan = [(d, s, e) for d in datasets for s, e in minibatches(d.n_samples, config.batch_size)]
    total = len(plan) * config.epochs
    backend_counts = context.backend.counts
    before = Counter(backend_counts)
    t0 = time.perf_counter()
    try:
        for _ in range(config.epochs):
            for data, start, stop in plan:
                if planner.needs_refresh(model):
                    model = refresh_model(model, session)
                model = kind_step(model, data, start, stop, config, session)  # type: ignore[assignment]
                if on_step is not None:
                    on_step(stats.steps, total)
    finally:
        classes.close()
    stats.seconds = time.perf_counter() - t0
    stats.ops = backend_counts - before
    return model, stats
