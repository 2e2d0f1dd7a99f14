"""The owner's estimator follows scikit-learn's contract."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError

from cipherloop.client import EncryptedLogisticRegression
from cipherloop.learn import EnclaveProcess


@pytest.fixture(scope="module")
def fitted(breast_cancer: tuple[np.ndarray, np.ndarray],
           enclave: EnclaveProcess) -> EncryptedLogisticRegression:
    X, y = breast_cancer
    labels = np.where(y > 0.5, "benign", "malignant")
    clf = EncryptedLogisticRegression(max_iter=6, enclave=str(enclave.socket_path))
    return clf.fit(X[:300], labels[:300])


def test_params_clone_and_repr() -> None:
    clf = EncryptedLogisticRegression(learning_rate=0.3, batch_size=64)
    assert clf.get_params()["learning_rate"] == 0.3
    assert clone(clf).get_params() == clf.get_params()
    clf.set_params(momentum=0.5)
    assert clf.momentum == 0.5
    assert "learning_rate=0.3" in repr(clf)


def test_fit_predict_score(fitted: EncryptedLogisticRegression,
                           breast_cancer: tuple[np.ndarray, np.ndarray]) -> None:
    X, y = breast_cancer
    labels = np.where(y > 0.5, "benign", "malignant")
    assert list(fitted.classes_) == ["benign", "malignant"]
    assert fitted.coef_.shape == (1, X.shape[1]) and fitted.intercept_.shape == (1,)
    assert fitted.n_features_in_ == X.shape[1] and fitted.n_iter_ == 6
    assert fitted.score(X[300:], labels[300:]) > 0.9
    proba = fitted.predict_proba(X[300:])
    assert proba.shape == (len(X) - 300, 2) and np.allclose(proba.sum(axis=1), 1.0)
    assert set(fitted.predict(X[:10])) <= {"benign", "malignant"}
    assert fitted.stats_.steps == 6


def test_partial_fit_is_one_round(breast_cancer: tuple[np.ndarray, np.ndarray],
                                  enclave: EnclaveProcess) -> None:
    X, y = breast_cancer
    clf = EncryptedLogisticRegression(enclave=str(enclave.socket_path))
    clf.partial_fit(X[:100], y[:100], classes=[0.0, 1.0])
    first = clf.coef_.copy()
    clf.partial_fit(X[100:200], y[100:200])
    assert clf.n_iter_ == 2 and not np.allclose(first, clf.coef_)
    with pytest.raises(ValueError, match="features"):
        clf.partial_fit(X[:10, :5], y[:10])


def test_unfitted_and_bad_parameters() -> None:
    with pytest.raises(NotFittedError):
        EncryptedLogisticRegression().predict(np.zeros((2, 3)))
    bad = EncryptedLogisticRegression(learning_rate=-1.0)
    with pytest.raises(ValueError) as info:
        bad.fit(np.zeros((4, 2)), [0, 1, 0, 1])
    assert isinstance(info.value, TypeError)  # sklearn's InvalidParameterError is both
    with pytest.raises(ValueError, match="Unknown label type"):
        EncryptedLogisticRegression(max_iter=1).fit(np.zeros((3, 2)), [0.5, 1.5, 2.25])
    with pytest.raises(ValueError, match="1 class"):
        EncryptedLogisticRegression(max_iter=1).fit(np.zeros((3, 2)), [1, 1, 1])


def test_private_enclave_is_started_and_stopped(breast_cancer: tuple[np.ndarray, np.ndarray]) -> None:
    X, y = breast_cancer
    clf = EncryptedLogisticRegression(max_iter=1).fit(X[:50], y[:50])
    proc = clf._process
    assert proc.proc is not None and proc.proc.poll() is None
    clf.close()
    assert proc.proc.poll() is not None


def test_pickle_keeps_the_plain_model_not_the_process(fitted: EncryptedLogisticRegression,
                                                      breast_cancer: tuple[np.ndarray, np.ndarray]) -> None:
    X, _ = breast_cancer
    again = pickle.loads(pickle.dumps(fitted))
    assert np.array_equal(again.predict(X[:20]), fitted.predict(X[:20]))
    assert not hasattr(again, "_key") and not hasattr(again, "model_")


@pytest.mark.slow
def test_scikit_learn_estimator_checks(enclave: EnclaveProcess) -> None:
    """sklearn's own contract checks, against a real enclave (about a minute)."""
    from sklearn.utils.estimator_checks import check_estimator

    # CKKS encryption is randomised: two fits on the same data differ by noise (~1e-5
    # relative), so bit-for-bit idempotency can't hold for an encrypted estimator.
    noisy = {"check_fit_idempotent": "CKKS noise: refits agree to ~1e-5, not to 1e-7"}
    results = check_estimator(
        EncryptedLogisticRegression(max_iter=3, enclave=str(enclave.socket_path)),
        expected_failed_checks=noisy, on_fail=None)
    failed = [(r["check_name"], str(r["exception"])[:200]) for r in results
              if r["status"] == "failed"]
    assert failed == []
    assert sum(r["status"] == "passed" for r in results) > 30
