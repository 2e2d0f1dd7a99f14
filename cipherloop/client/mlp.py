"""``EncryptedMLPClassifier``: a one-hidden-layer perceptron trained on ciphertexts.

Runs in: owner. Mirrors scikit-learn's ``MLPClassifier`` (SGD with Nesterov
momentum, Glorot initialisation, softmax output): ``fit`` and
``partial_fit`` encrypt the data under the owner's key, the host-side loop
(:mod:`cipherloop.learn.mlp`) runs every product on ciphertexts and asks the
enclave only for activations, their derivatives and the softmax error; the
owner decrypts the result into ``coefs_`` and ``intercepts_``.
"""

from __future__ import annotations

from numbers import Integral, Real
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, _fit_context
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted, check_random_state, validate_data

from ..ckks import PRESETS
from ..enclave.limits import MAX_HIDDEN
from ..learn import RefineConfig, RefineStats, refine
from ..learn.network import EncryptedNetwork
from ..learn.reference import PlainNetwork
from .data import encrypt_dataset
from .estimator import EnclaveSessionMixin, softmax
from .network import decrypt_network, encrypt_network, initial_network


class EncryptedMLPClassifier(EnclaveSessionMixin, ClassifierMixin, BaseEstimator):  # type: ignore[misc]
    """Multi-layer perceptron classifier (one hidden layer) trained on CKKS-encrypted data.

    Parameters
    ----------
    hidden_layer_sizes : tuple of one int, default=(32,)
        Units of the hidden layer (one hidden layer is supported).
    activation : {"relu", "tanh", "logistic"}, default="relu"
    learning_rate_init : float, default=0.3
        Step size; the enclave folds it into the softmax error.
    momentum : float, default=0.9
        Nesterov momentum (Sutskever's form; 0 for plain SGD).
    batch_size : int or None, default=None
        Samples per step; ``None`` is full-batch gradient descent. A step
        costs the ciphertext blocks (4,096 samples at ``n8192``) it touches.
    max_iter : int, default=10
        Epochs ``fit`` runs.
    random_state : int, Generator or None, default=None
        Seeds the Glorot initialisation (as scikit-learn's ``MLPClassifier``).
    params : str, default="n8192"
        CKKS parameter preset.
    enclave : str or None, default=None
        Socket path of a running simulated enclave, or ``None`` to start one.

    Attributes
    ----------
    coefs_ : list of ndarray, shapes (n_features, H) and (H, n_classes)
    intercepts_ : list of ndarray, shapes (H,) and (n_classes,)
    classes_ : ndarray of shape (n_classes,)
    n_features_in_, n_iter_, n_layers_, n_outputs_, out_activation_
    loss_curve_ : list of float
        Training log-loss after each epoch, computed here by the owner from
        the decrypted model and its own plaintext data (nothing is released
        by the enclave for it).
    loss_ : float
    model_ : EncryptedNetwork
    stats_ : RefineStats

    Notes
    -----
    Two classes use two softmax outputs (scikit-learn uses one logistic
    output), so ``coefs_[1]`` has two columns; predictions are the same model.
    No L2 penalty (``alpha``) is applied.
    """

    _parameter_constraints: dict[str, list[Any]] = {
        "hidden_layer_sizes": [tuple, list],
        "activation": [StrOptions({"relu", "tanh", "logistic"})],
        "learning_rate_init": [Interval(Real, 0, 1000, closed="neither")],
        "momentum": [Interval(Real, 0, 1, closed="left")],
        "batch_size": [Interval(Integral, 1, None, closed="left"), None],
        "max_iter": [Interval(Integral, 1, None, closed="left")],
        "random_state": ["random_state"],
        "params": [StrOptions(set(PRESETS))],
        "enclave": [str, None],
    }

    def __init__(self, *, hidden_layer_sizes: tuple[int, ...] = (32,), activation: str = "relu",
                 learning_rate_init: float = 0.3, momentum: float = 0.9,
                 batch_size: int | None = None, max_iter: int = 10, random_state: Any = None,
                 params: str = "n8192", enclave: str | None = None) -> None:
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.learning_rate_init = learning_rate_init
        self.momentum = momentum
        self.batch_size = batch_size
        self.max_iter = max_iter
        self.random_state = random_state
        self.params = params
        self.enclave = enclave

    def _hidden(self) -> int:
        sizes = tuple(self.hidden_layer_sizes)
        if len(sizes) != 1 or not isinstance(sizes[0], Integral) or not 1 <= sizes[0] <= MAX_HIDDEN:
            raise ValueError(f"hidden_layer_sizes must be one hidden layer of 1 to {MAX_HIDDEN} units")
        return int(sizes[0])

    def _partial_fit(self, X: Any, y: Any, *, epochs: int, reset: bool,
                     classes: Any = None) -> EncryptedMLPClassifier:
        first = reset or not hasattr(self, "model_")
        hidden = self._hidden()
        X, y = validate_data(self, X, y, reset=first, dtype=np.float64)
        self._check_classes(y, classes, first)
        if first:
            self.n_iter_ = 0
            self.loss_curve_: list[float] = []
        key, client = self._session(X.shape[1])
        k = len(self.classes_)
        if first:
            seed = check_random_state(self.random_state).randint(0, 2**31 - 1)
            plain = initial_network("mlp", X.shape[1], k, hidden=hidden, activation=self.activation,
                                    rng=np.random.default_rng(seed))
            self.model_: EncryptedNetwork = encrypt_network(key, plain)
        idx = np.searchsorted(self.classes_, y).astype(np.float64)
        data = encrypt_dataset(key, X, idx, n_classes=k)  # one lane: see learn/mlp.py
        config = RefineConfig(learning_rate=float(self.learning_rate_init),
                              momentum=float(self.momentum), batch_size=self.batch_size, epochs=1)
        stats = RefineStats()
        for _ in range(epochs):
            self.model_, stats = refine(self.model_, [data], config, context=key, enclave=client)
            self._read(decrypt_network(key, self.model_))
            self.loss_curve_.append(self._loss(X, idx))
        self.stats_: RefineStats = stats
        self.loss_ = self.loss_curve_[-1]
        self.n_iter_ += epochs
        return self

    def _read(self, plain: PlainNetwork) -> None:
        w = plain.weights
        self.coefs_ = [w["coef1"], w["coef2"]]
        self.intercepts_ = [w["intercept1"], w["intercept2"]]
        self.n_layers_, self.n_outputs_, self.out_activation_ = 3, w["coef2"].shape[1], "softmax"

    def _loss(self, X: np.ndarray, idx: np.ndarray) -> float:
        p = self._proba(X)
        return float(-np.mean(np.log(np.clip(p[np.arange(len(idx)), idx.astype(int)], 1e-12, 1))))

    @_fit_context(prefer_skip_nested_validation=True)  # type: ignore[untyped-decorator]
    def fit(self, X: Any, y: Any) -> EncryptedMLPClassifier:
        """Train from scratch: a fresh Glorot-initialised encrypted model, ``max_iter`` epochs."""
        return self._partial_fit(X, y, epochs=int(self.max_iter), reset=True)

    @_fit_context(prefer_skip_nested_validation=True)  # type: ignore[untyped-decorator]
    def partial_fit(self, X: Any, y: Any, classes: Any = None) -> EncryptedMLPClassifier:
        """One refinement round: one epoch over ``(X, y)``, continuing the encrypted model."""
        return self._partial_fit(X, y, epochs=1, reset=False, classes=classes)

    # -- predicting (the owner decrypted the model; prediction is local) ----------
    def _scores(self, X: np.ndarray) -> np.ndarray:
        plain = PlainNetwork("mlp", {"coef1": self.coefs_[0], "intercept1": self.intercepts_[0],
                                     "coef2": self.coefs_[1], "intercept2": self.intercepts_[1]},
                             self.activation)
        return plain.scores(X)

    def _proba(self, X: np.ndarray) -> np.ndarray:
        return softmax(self._scores(X))

    def predict_proba(self, X: Any) -> np.ndarray:
        check_is_fitted(self)
        return self._proba(validate_data(self, X, reset=False, dtype=np.float64))

    def predict(self, X: Any) -> np.ndarray:
        best = self.predict_proba(X).argmax(axis=1)
        return np.asarray(self.classes_[best])
