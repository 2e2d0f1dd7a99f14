"""``EncryptedLogisticRegression``: a scikit-learn estimator whose training never sees plaintext.

Runs in: owner. ``fit`` and ``partial_fit`` encrypt the data under the
owner's key, hand the ciphertexts to the host-side refining loop, which
works against a real enclave process the estimator starts (and provisions
with the key), and decrypt the resulting model into ``coef_`` and
``intercept_``. ``partial_fit`` is one refinement round: one epoch over the
new data, continuing from the current encrypted model and momentum.
"""

from __future__ import annotations

import shutil
import tempfile
import weakref
from numbers import Integral, Real
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, _fit_context
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.multiclass import type_of_target, unique_labels
from sklearn.utils.validation import check_is_fitted, validate_data

from ..blobstore import BlobStore
from ..ckks import PRESETS, Diagonals, SecretContext, preset, rotations_for_features
from ..learn import EnclaveClient, EnclaveProcess, RefineConfig, RefineStats, refine
from ..learn.dataset import Dataset
from ..learn.engine import Engine
from ..learn.model import EncryptedModel
from ..learn.network import EncryptedNetwork
from .data import decrypt_model, encrypt_dataset, encrypt_model, encrypt_to_store
from .network import decrypt_network, encrypt_network, initial_network
from .provisioning import provision, simulated_policy


class EnclaveSessionMixin:
    """Keys and the enclave an owner-side estimator trains against (shared by every model kind).

    Expects ``params`` (a CKKS preset name) and ``enclave`` (a socket path or
    ``None``) as estimator parameters.
    """

    params: str
    enclave: str | None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        for private in ("_process", "_client", "_key", "_finalizer", "_engine", "_engine_closer",
                        "_store", "_store_closer"):
            state.pop(private, None)
        state.pop("model_", None)
        return state

    # -- enclave and keys ------------------------------------------------------
    def _session(self, n_features: int) -> tuple[SecretContext, EnclaveClient]:
        key: SecretContext | None = getattr(self, "_key", None)
        if key is None or key.params != preset(self.params):
            key = SecretContext.generate(preset(self.params),
                                         rotations_for_features(n_features, preset(self.params).slots))
            self._key = key
            self._provisioned = False
        client: EnclaveClient | None = getattr(self, "_client", None)
        process: EnclaveProcess | None = getattr(self, "_process", None)
        if client is None:
            if self.enclave is None:
                process = EnclaveProcess().start()
                self._process = process
                self._finalizer = weakref.finalize(self, process.stop)
                client = process.client
            else:
                client = EnclaveClient(self.enclave)
            self._client = client
            self._provisioned = False
        if not getattr(self, "_provisioned", False):
            state_dir = process.state_dir if process is not None else Path(str(self.enclave)).parent
            provision(client, key, simulated_policy(state_dir), quiet_simulation=True)
            self._provisioned = True
        return key, client

    def _check_classes(self, y: np.ndarray, classes: Any, first: bool) -> None:
        """scikit-learn's label contract: the first call fixes ``classes_``, later ones stay inside."""
        if first:
            labels = unique_labels(y) if classes is None else np.asarray(classes)
            y_type = type_of_target(y, input_name="y", raise_unknown=True)
            if y_type not in ("binary", "multiclass", "unknown"):
                raise ValueError(f"Unknown label type: {y_type}")
            if len(labels) < 2:
                raise ValueError(f"{type(self).__name__} needs at least 2 classes; got "
                                 f"{len(labels)} class")
            self.classes_ = labels
        elif not np.isin(unique_labels(y), self.classes_).all():
            raise ValueError("y holds classes not seen in the first call")

    def _compute(self, key: SecretContext, X: np.ndarray, y: np.ndarray, *, n_classes: int = 2
                 ) -> tuple[Dataset, Engine | None]:
        """Encrypt ``(X, y)`` where the engine reads it: in memory, or a store Ray workers share.

        Reads the estimator parameters ``engine``, ``ray_address`` and ``n_jobs``
        where the estimator has them (local and one process otherwise).
        """
        jobs = getattr(self, "n_jobs", None)
        n_jobs = None if jobs is None else int(jobs)
        lanes = self._lanes(key, X)
        if getattr(self, "engine", "local") == "local":
            return encrypt_dataset(key, X, y, n_jobs=n_jobs, n_classes=n_classes, lanes=lanes), None
        from ..learn.ray_engine import RayEngine  # the optional extra, only when asked

        store: BlobStore | None = getattr(self, "_store", None)
        engine: RayEngine | None = getattr(self, "_engine", None)
        if store is None:
            root = tempfile.mkdtemp(prefix="cipherloop-blocks-")
            store = self._store = BlobStore(Path(root))
            self._store_closer = weakref.finalize(self, shutil.rmtree, root, True)
        if engine is None:
            engine = self._engine = RayEngine(address=getattr(self, "ray_address", None)).connect()
            self._engine_closer = weakref.finalize(self, engine.close)
        return encrypt_to_store(key, X, y, store, n_jobs=n_jobs, n_classes=n_classes,
                                lanes=lanes), engine

    def _lanes(self, key: SecretContext, X: np.ndarray) -> int:
        """Blocks sized to the mini-batch, so a step pays only for the samples it uses."""
        batch = getattr(self, "batch_size", None)
        return Diagonals.lanes_for(X.shape[0] if batch is None else min(int(batch), X.shape[0]),
                                   X.shape[1], key.params.slots)

    def close(self) -> None:
        """Stop the private enclave process and Ray workers; remove the private block store."""
        for name in ("_finalizer", "_engine_closer", "_store_closer"):
            finalizer = getattr(self, name, None)
            if finalizer is not None:
                finalizer()
        for private in ("_process", "_client", "_finalizer", "_engine", "_engine_closer", "_store",
                        "_store_closer"):
            self.__dict__.pop(private, None)


class EncryptedLogisticRegression(EnclaveSessionMixin, ClassifierMixin, BaseEstimator):  # type: ignore[misc]
    """Logistic regression (binary, or multinomial over K classes) trained on CKKS-encrypted data
    with an enclave's help.

    Two classes train the binary model (one weight vector, sigmoid), like
    scikit-learn's ``LogisticRegression``; three or more train multinomial
    logistic regression (one weight vector per class, softmax computed
    exactly in the enclave).

    Parameters
    ----------
    learning_rate : float, default=1.0
        Step size; the enclave folds it into the error it returns.
    momentum : float, default=0.9
        Nesterov momentum (0 for plain gradient descent).
    batch_size : int or None, default=None
        Samples per step; ``None`` is full-batch gradient descent.
    max_iter : int, default=30
        Epochs ``fit`` runs.
    fit_intercept : bool, default=True
    params : str, default="n8192"
        CKKS parameter preset (see :data:`cipherloop.ckks.PRESETS`).
    enclave : str or None, default=None
        Socket path of a running simulated enclave (its state directory holds
        the socket) to use; ``None`` starts a private enclave process on first
        use (stopped by :meth:`close` or at exit). Either way the key is
        released only after attestation; the simulated TEE is accepted
        explicitly, since this estimator runs on the owner's own machine.
    engine : {"local", "ray"}, default="local"
        Where the host's products run: this process, or Ray actors (needs
        ``cipherloop[ray]``) that own shards of the data's blocks. With
        ``"ray"`` the data is encrypted into a private blob store, which the
        actors read themselves; it is removed by :meth:`close`.
    ray_address : str or None, default=None
        The Ray cluster to join (``host:port``); ``None`` joins the one this
        process is connected to, or starts a local one.
    n_jobs : int or None, default=None
        Processes that encrypt the data and, with more than two classes,
        share each step's classes (``-1``: every core; ``None``: one). The
        results do not depend on it.

    Attributes
    ----------
    coef_ : ndarray of shape (1, n_features) or (n_classes, n_features)
    intercept_ : ndarray of shape (1,) or (n_classes,)
    classes_ : ndarray of shape (n_classes,)
    n_features_in_ : int
    n_iter_ : int
        Epochs run so far.
    model_ : EncryptedModel or EncryptedNetwork
        The encrypted model as the cloud holds it (binary, or softmax).
    stats_ : RefineStats
        Cost of the last call (steps, refreshes, enclave time, operation counts).

    Examples
    --------
    >>> from sklearn.datasets import load_breast_cancer
    >>> from sklearn.preprocessing import StandardScaler
    >>> X, y = load_breast_cancer(return_X_y=True)
    >>> X = StandardScaler().fit_transform(X)
    >>> clf = EncryptedLogisticRegression(max_iter=5).fit(X, y)  # doctest: +SKIP
    >>> clf.score(X, y) > 0.9  # doctest: +SKIP
    True
    """

    _parameter_constraints: dict[str, list[Any]] = {
        "learning_rate": [Interval(Real, 0, 1000, closed="neither")],
        "momentum": [Interval(Real, 0, 1, closed="left")],
        "batch_size": [Interval(Integral, 1, None, closed="left"), None],
        "max_iter": [Interval(Integral, 1, None, closed="left")],
        "fit_intercept": ["boolean"],
        "params": [StrOptions(set(PRESETS))],
        "enclave": [str, None],
        "engine": [StrOptions({"local", "ray"})],
        "ray_address": [str, None],
        "n_jobs": [Integral, None],
    }

    def __init__(self, *, learning_rate: float = 1.0, momentum: float = 0.9,
                 batch_size: int | None = None, max_iter: int = 30, fit_intercept: bool = True,
                 params: str = "n8192", enclave: str | None = None, engine: str = "local",
                 ray_address: str | None = None, n_jobs: int | None = None) -> None:
        self.learning_rate = learning_rate
        self.momentum = momentum
        self.batch_size = batch_size
        self.max_iter = max_iter
        self.fit_intercept = fit_intercept
        self.params = params
        self.enclave = enclave
        self.engine = engine
        self.ray_address = ray_address
        self.n_jobs = n_jobs

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_class = True
        return tags

    # -- fitting -----------------------------------------------------------------
    def _encode_labels(self, y: np.ndarray) -> np.ndarray:
        """Binary: 1.0 for the second class; multiclass: the class index."""
        if len(self.classes_) == 2:
            return np.asarray(y == self.classes_[1], dtype=np.float64)
        return np.searchsorted(self.classes_, y).astype(np.float64)

    def _partial_fit(self, X: Any, y: Any, *, epochs: int, reset: bool,
                     classes: Any = None) -> EncryptedLogisticRegression:
        first = reset or not hasattr(self, "model_")
        X, y = validate_data(self, X, y, reset=first, dtype=np.float64)
        self._check_classes(y, classes, first)
        if first:
            self.n_iter_ = 0
        key, client = self._session(X.shape[1])
        k = len(self.classes_)
        if first:
            intercept = 0.0 if self.fit_intercept else None
            self.model_: EncryptedModel | EncryptedNetwork = (
                encrypt_model(key, np.zeros(X.shape[1]), intercept) if k == 2 else
                encrypt_network(key, initial_network("softmax", X.shape[1], k,
                                                     fit_intercept=self.fit_intercept)))
        data, engine = self._compute(key, X, self._encode_labels(y), n_classes=k)
        config = RefineConfig(learning_rate=float(self.learning_rate), momentum=float(self.momentum),
                              batch_size=self.batch_size, epochs=epochs,
                              n_jobs=None if self.n_jobs is None else int(self.n_jobs))
        self.model_, stats = refine(self.model_, [data], config, context=key, enclave=client,
                                    engine=engine)
        self.stats_: RefineStats = stats
        if isinstance(self.model_, EncryptedNetwork):
            w = decrypt_network(key, self.model_).weights
            self.coef_ = w["coef"].T
            self.intercept_ = w["intercept"] if "intercept" in w else np.zeros(k)
        else:
            coef, b = decrypt_model(key, self.model_)
            self.coef_ = coef.reshape(1, -1)
            self.intercept_ = np.array([b])
        self.n_iter_ += epochs
        return self

    @_fit_context(prefer_skip_nested_validation=True)  # type: ignore[untyped-decorator]
    def fit(self, X: Any, y: Any) -> EncryptedLogisticRegression:
        """Train from scratch: a fresh encrypted model, ``max_iter`` epochs."""
        return self._partial_fit(X, y, epochs=int(self.max_iter), reset=True)

    @_fit_context(prefer_skip_nested_validation=True)  # type: ignore[untyped-decorator]
    def partial_fit(self, X: Any, y: Any, classes: Any = None) -> EncryptedLogisticRegression:
        """One refinement round: one epoch over ``(X, y)``, continuing the encrypted model."""
        return self._partial_fit(X, y, epochs=1, reset=False, classes=classes)

    # -- predicting (the owner decrypted the model; prediction is local) ----------
    def decision_function(self, X: Any) -> np.ndarray:
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=np.float64)
        if len(self.classes_) > 2:
            return np.asarray(X @ self.coef_.T + self.intercept_)
        scores: np.ndarray = X @ self.coef_[0] + self.intercept_[0]
        return scores

    def predict_proba(self, X: Any) -> np.ndarray:
        z = self.decision_function(X)
        if z.ndim == 2:
            return softmax(z)
        p = 1.0 / (1.0 + np.exp(-np.clip(z, -500, 500)))
        return np.column_stack([1.0 - p, p])

    def predict(self, X: Any) -> np.ndarray:
        scores = self.decision_function(X)
        if scores.ndim == 2:
            return np.asarray(self.classes_[scores.argmax(axis=1)])
        return np.asarray(self.classes_[(scores > 0).astype(int)])


def softmax(z: np.ndarray) -> np.ndarray:
    """Row-wise softmax (probabilities of K classes from their logits)."""
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return np.asarray(e / e.sum(axis=1, keepdims=True))
