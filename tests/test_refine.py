"""Encrypted refinement matches the plaintext algorithm; the planner refreshes only when needed."""

from __future__ import annotations

import numpy as np
import pytest
from enclavekit import pinned, provision_sim

from cipherloop.ckks import CiphertextBatch, PublicContext, SecretContext
from cipherloop.client.data import decrypt_model, encrypt_batches, encrypt_dataset, encrypt_model
from cipherloop.errors import ShapeError
from cipherloop.learn import (
    EnclaveProcess,
    EncryptedDataset,
    LevelPlanner,
    RefineConfig,
    compare,
    evaluate,
    refine,
    scores,
)
from cipherloop.learn.model import EncryptedModel
from cipherloop.learn.reference import PlainModel, plain_refine


def _to_host(host: PublicContext, owner: SecretContext, data: EncryptedDataset) -> EncryptedDataset:
    """What the cloud receives: bytes, loaded under the public context."""
    f, y = data.to_batches(owner)
    return EncryptedDataset.from_batches(host, CiphertextBatch.from_bytes(f.to_bytes()),
                                         CiphertextBatch.from_bytes(y.to_bytes()))


def _accuracy(w: np.ndarray, b: float, X: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean((X @ w + b > 0) == (y > 0.5)))


@pytest.mark.parametrize("config", [
    RefineConfig(learning_rate=1.0, momentum=0.9, batch_size=None, epochs=12),
    RefineConfig(learning_rate=0.5, momentum=0.0, batch_size=128, epochs=2),
])
def test_encrypted_training_matches_plaintext_on_breast_cancer(
        breast_cancer: tuple[np.ndarray, np.ndarray], owner_key: SecretContext,
        host_context: PublicContext, enclave: EnclaveProcess, config: RefineConfig) -> None:
    X, y = breast_cancer
    train, test = slice(0, 400), slice(400, None)
    data = _to_host(host_context, owner_key, encrypt_dataset(owner_key, X[train], y[train]))
    model = encrypt_model(host_context, np.zeros(X.shape[1]), 0.0)
    trained, stats = refine(model, [data], config, context=host_context, enclave=enclave.client)
    w, b = decrypt_model(owner_key, trained)
    ref = plain_refine(PlainModel(np.zeros(X.shape[1])), [(X[train], y[train])], config)
    assert np.abs(w - ref.coef).max() < 1e-2
    assert abs(b - ref.intercept) < 1e-2
    enc_acc = _accuracy(w, b, X[test], y[test])
    plain_acc = _accuracy(ref.coef, ref.intercept, X[test], y[test])
    assert abs(enc_acc - plain_acc) <= 0.01
    assert enc_acc > 0.9
    assert stats.steps == config.epochs * -(-400 // (config.batch_size or 400))


def test_planner_refreshes_only_when_levels_run_out(
        breast_cancer: tuple[np.ndarray, np.ndarray], owner_key: SecretContext,
        host_context: PublicContext, enclave: EnclaveProcess) -> None:
    X, y = breast_cancer
    data = _to_host(host_context, owner_key, encrypt_dataset(owner_key, X[:200], y[:200]))
    model = encrypt_model(host_context, np.zeros(X.shape[1]), 0.0)
    _, plain_gd = refine(model, [data], RefineConfig(momentum=0.0, epochs=5),
                         context=host_context, enclave=enclave.client)
    assert plain_gd.refreshes == 0  # w - g never loses a level without momentum
    trained, nesterov = refine(model, [data], RefineConfig(momentum=0.9, epochs=6),
                               context=host_context, enclave=enclave.client)
    top = host_context.params.top_level
    assert 1 <= nesterov.refreshes < nesterov.steps  # momentum * v costs a level per step
    assert nesterov.refreshes == nesterov.steps // (top - 1) - (1 if nesterov.steps % (top - 1) == 0 else 0)
    assert nesterov.enclave_calls == nesterov.steps + nesterov.refreshes
    planner = LevelPlanner(0.9)
    assert planner.lookahead_level(trained) >= 0


def test_mismatched_feature_count_is_refused(owner_key: SecretContext, host_context: PublicContext,
                                              enclave: EnclaveProcess) -> None:
    data = encrypt_dataset(owner_key, np.zeros((10, 5)), np.zeros(10))
    model = encrypt_model(host_context, np.zeros(6), 0.0)
    with pytest.raises(ShapeError):
        refine(model, [data], RefineConfig(), context=host_context, enclave=enclave.client)


def test_model_round_trips_through_bytes(owner_key: SecretContext, host_context: PublicContext) -> None:
    model = encrypt_model(host_context, np.arange(5.0), -2.0)
    again = EncryptedModel.from_bytes(host_context, model.to_bytes(host_context))
    w, b = decrypt_model(owner_key, again)
    assert np.allclose(w, np.arange(5.0), atol=1e-5) and abs(b + 2.0) < 1e-5


def test_holdout_metrics_and_promotion_decision(
        breast_cancer: tuple[np.ndarray, np.ndarray], owner_key: SecretContext,
        host_context: PublicContext, enclave: EnclaveProcess) -> None:
    X, y = breast_cancer
    pinned_set = encrypt_batches(owner_key, X[400:], y[400:])
    hold = EncryptedDataset.from_batches(host_context, *pinned_set)
    train = _to_host(host_context, owner_key, encrypt_dataset(owner_key, X[:200], y[:200]))
    zero = encrypt_model(host_context, np.zeros(X.shape[1]), 0.0)
    better, _ = refine(zero, [train], RefineConfig(epochs=5), context=host_context,
                       enclave=enclave.client)
    with EnclaveProcess() as proc:
        provision_sim(proc, owner_key, pinned(pinned_set))
        metrics = evaluate(better, pinned_set, context=host_context, enclave=proc.client)
        assert set(metrics) == {"accuracy", "log_loss"} and metrics["accuracy"] > 0.85
        assert metrics["accuracy"] == round(metrics["accuracy"], 3)
        w, b = decrypt_model(owner_key, better)
        p = 1 / (1 + np.exp(-np.clip(X[400:] @ w + b, -16, 16)))
        assert metrics["accuracy"] == round(float(np.mean((p > 0.5) == (y[400:] > 0.5))), 3)
        decision = compare(better, zero, pinned_set, context=host_context, enclave=proc.client,
                           with_metrics=True)
        assert decision["promote"] is True and decision["candidate"] < decision["current"]
        assert decision["current"] == round(np.log(2), 3)
        assert compare(zero, better, pinned_set, context=host_context,
                       enclave=proc.client)["promote"] is False
    z = scores(better, hold, context=host_context, enclave=enclave.client)  # encrypted inference
    w, b = decrypt_model(owner_key, better)
    got = hold.layout.samples.unpack([owner_key.decrypt(c) for c in z])

    assert np.abs(got - (X[400:] @ w + b)).max() < 1e-3
