"""Multinomial logistic regression and the MLP, trained on ciphertexts, match their plaintext twins."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.datasets import load_digits, load_wine
from sklearn.preprocessing import StandardScaler

from cipherloop.ckks import CiphertextBatch, Diagonals, PublicContext, SecretContext
from cipherloop.client.data import encrypt_dataset
from cipherloop.client.network import decrypt_network, encrypt_network, initial_network
from cipherloop.errors import ShapeError
from cipherloop.learn import EnclaveProcess, EncryptedDataset, EncryptedNetwork, RefineConfig, refine
from cipherloop.learn.reference import PlainNetwork, plain_network_refine


def _digits() -> tuple[np.ndarray, np.ndarray]:
    X, y = load_digits(return_X_y=True)
    order = np.random.default_rng(0).permutation(len(y))
    return X[order] / 16.0, y[order].astype(np.float64)


def _wine() -> tuple[np.ndarray, np.ndarray]:
    X, y = load_wine(return_X_y=True)
    order = np.random.default_rng(0).permutation(len(y))
    return StandardScaler().fit_transform(X)[order] / 2.0, y[order].astype(np.float64)


def _to_host(host: PublicContext, owner: SecretContext, X: np.ndarray, y: np.ndarray,
             k: int, lanes: int = 1) -> EncryptedDataset:
    f, lab = encrypt_dataset(owner, X, y, n_classes=k, lanes=lanes).to_batches(owner)
    return EncryptedDataset.from_batches(host, CiphertextBatch.from_bytes(f.to_bytes()),
                                         CiphertextBatch.from_bytes(lab.to_bytes()))


def _accuracy(model: PlainNetwork, X: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(model.scores(X).argmax(axis=1) == y))


def _train_both(owner: SecretContext, host: PublicContext, enclave: EnclaveProcess,
                plain: PlainNetwork, X: np.ndarray, y: np.ndarray, config: RefineConfig,
                lanes: int = 1) -> tuple[PlainNetwork, PlainNetwork]:
    k = int(y.max()) + 1
    data = _to_host(host, owner, X, y, k, lanes)
    assert data.layout.lanes == lanes
    trained, stats = refine(encrypt_network(host, plain), [data], config, context=host,
                            enclave=enclave.client)
    assert stats.steps == config.epochs * -(-len(y) // (config.batch_size or len(y)))
    return decrypt_network(owner, trained), plain_network_refine(plain, [(X, y)], config)


def _assert_twins(got: PlainNetwork, ref: PlainNetwork, X: np.ndarray, y: np.ndarray,
                  floor: float) -> None:
    assert set(got.weights) == set(ref.weights)
    for name, w in ref.weights.items():
        assert np.abs(got.weights[name] - w).max() < 1e-2, name
    enc, plain = _accuracy(got, X, y), _accuracy(ref, X, y)
    assert abs(enc - plain) <= 0.01
    assert enc > floor


@pytest.mark.slow
def test_softmax_on_digits_matches_its_plaintext_twin(
        owner_key: SecretContext, host_context: PublicContext, enclave: EnclaveProcess) -> None:
    X, y = _digits()
    config = RefineConfig(learning_rate=1.0, momentum=0.9, batch_size=100, epochs=1)
    plain = initial_network("softmax", X.shape[1], 10)
    lanes = Diagonals.lanes_for(100, X.shape[1], host_context.params.slots)
    assert lanes == 32  # blocks of 128 samples, two diagonals each
    got, ref = _train_both(owner_key, host_context, enclave, plain, X[:400], y[:400], config,
                           lanes)
    _assert_twins(got, ref, X[1200:], y[1200:], 0.8)


def test_softmax_on_wine_matches_its_plaintext_twin(
        owner_key: SecretContext, host_context: PublicContext, enclave: EnclaveProcess) -> None:
    X, y = _wine()
    config = RefineConfig(learning_rate=1.0, momentum=0.9, batch_size=None, epochs=6)
    plain = initial_network("softmax", X.shape[1], 3)
    got, ref = _train_both(owner_key, host_context, enclave, plain, X[:120], y[:120], config)
    _assert_twins(got, ref, X[120:], y[120:], 0.9)


def test_softmax_in_lanes_on_wine_matches_its_plaintext_twin(
        owner_key: SecretContext, host_context: PublicContext, enclave: EnclaveProcess) -> None:
    """Mini-batches of 30 in 16 lanes of 256 samples: one diagonal per block instead of 16."""
    X, y = _wine()
    config = RefineConfig(learning_rate=1.0, momentum=0.9, batch_size=30, epochs=3)
    plain = initial_network("softmax", X.shape[1], 3)
    lanes = Diagonals.lanes_for(30, X.shape[1], host_context.params.slots)
    assert lanes == 16
    got, ref = _train_both(owner_key, host_context, enclave, plain, X[:120], y[:120], config,
                           lanes)
    _assert_twins(got, ref, X[120:], y[120:], 0.9)


@pytest.mark.slow
def test_mlp_on_digits_matches_its_plaintext_twin(
        owner_key: SecretContext, host_context: PublicContext, enclave: EnclaveProcess) -> None:
    X, y = _digits()
    config = RefineConfig(learning_rate=0.5, momentum=0.9, batch_size=80, epochs=1)
    plain = initial_network("mlp", X.shape[1], 10, hidden=16, activation="relu",
                            rng=np.random.default_rng(1))
    got, ref = _train_both(owner_key, host_context, enclave, plain, X[:400], y[:400], config)
    _assert_twins(got, ref, X[1200:], y[1200:], 0.5)


@pytest.mark.parametrize("activation", ["tanh", "logistic"])
def test_mlp_on_wine_matches_its_plaintext_twin(
        owner_key: SecretContext, host_context: PublicContext, enclave: EnclaveProcess,
        activation: str) -> None:
    X, y = _wine()
    config = RefineConfig(learning_rate=1.0, momentum=0.9, batch_size=60, epochs=2)
    plain = initial_network("mlp", X.shape[1], 3, hidden=8, activation=activation,
                            rng=np.random.default_rng(2))
    got, ref = _train_both(owner_key, host_context, enclave, plain, X[:120], y[:120], config)
    _assert_twins(got, ref, X[120:], y[120:], 0.8)


def _rotations(n: int, layout: Diagonals, blocks: int, *, gradient: bool) -> int:
    """Rotations of ``n`` products (or gradients) over ``layout``, as the kernels' docstring says."""
    B, G = layout.baby, layout.giant
    if gradient:
        return n * ((B - 1) + int(math.log2(layout.slots // layout.period)))
    return n * ((B - 1) + blocks * (G - 1))


@pytest.mark.parametrize("lanes", [1, 4, 16])
def test_softmax_step_costs_exactly_what_its_docstring_says(
        owner_key: SecretContext, host_context: PublicContext, enclave: EnclaveProcess,
        lanes: int) -> None:
    """``J = P / L`` diagonals per block: the products shrink ``L``-fold, the fold stays."""
    X, y = _wine()
    k, C = 3, 1
    layout = Diagonals.plan(120, X.shape[1], host_context.params.slots, lanes)
    per_block, B, G = layout.per_block, layout.baby, layout.giant
    assert per_block == 16 // lanes
    data = _to_host(host_context, owner_key, X[:120], y[:120], k, lanes)
    model = encrypt_network(host_context, initial_network("softmax", X.shape[1], k))
    _, stats = refine(model, [data], RefineConfig(momentum=0.0), context=host_context,
                      enclave=enclave.client)
    assert stats.ops["multiply"] == 2 * k * C * per_block
    assert stats.ops["relinearize"] == k * C * G + k * B
    assert stats.ops["rotate"] == (_rotations(k, layout, C, gradient=False)
                                   + _rotations(k, layout, C, gradient=True))
    assert stats.ops["multiply_plain"] == k  # the intercepts moved to the logits' scale
    assert stats.enclave_calls == 1


def test_mlp_step_costs_exactly_what_its_docstring_says(
        owner_key: SecretContext, host_context: PublicContext, enclave: EnclaveProcess) -> None:
    X, y = _wine()
    k, H, C, n = 3, 8, 1, 100
    slots = host_context.params.slots
    lx = Diagonals.plan(n, X.shape[1], slots)
    la, le = Diagonals.plan(n, H, slots), Diagonals.plan(n, k, slots)
    data = _to_host(host_context, owner_key, X[:n], y[:n], k)
    plain = initial_network("mlp", X.shape[1], k, hidden=H, activation="tanh")
    _, stats = refine(encrypt_network(host_context, plain), [data], RefineConfig(momentum=0.0),
                      context=host_context, enclave=enclave.client)
    assert stats.ops["multiply"] == C * (2 * H * lx.period + 2 * k * la.period + 2 * H * le.period)
    assert stats.ops["rotate"] == (
        _rotations(H, lx, C, gradient=False) + _rotations(k, la, C, gradient=False)
        + _rotations(H, le, C, gradient=False) + _rotations(H, lx, C, gradient=True)
        + _rotations(k, la, C, gradient=True) + _rotations(H, le, C, gradient=True))
    assert stats.ops["relinearize"] == C * (H * lx.giant + k * la.giant + H * le.giant) + \
        H * lx.baby + k * la.baby + H * le.baby
    assert stats.enclave_calls == 3


def test_a_small_batch_pays_only_for_its_blocks(
        owner_key: SecretContext, host_context: PublicContext, enclave: EnclaveProcess) -> None:
    """Two blocks of samples; a mini-batch inside the second computes on that block alone."""
    slots = host_context.params.slots
    rng = np.random.default_rng(3)
    n, d, k = slots + 64, 4, 3
    X, y = rng.standard_normal((n, d)) / 2, rng.integers(0, k, n).astype(np.float64)
    data = _to_host(host_context, owner_key, X, y, k)
    plain = initial_network("softmax", d, k)
    config = RefineConfig(momentum=0.0, batch_size=slots)
    trained, stats = refine(encrypt_network(host_context, plain), [data], config,
                            context=host_context, enclave=enclave.client)
    assert stats.steps == 2
    P = data.layout.period
    assert stats.ops["multiply"] == 2 * (2 * k * 1 * P)  # one block per step, not two
    got = decrypt_network(owner_key, trained)
    ref = plain_network_refine(plain, [(X, y)], config)
    assert np.abs(got.weights["coef"] - ref.weights["coef"]).max() < 1e-3


def test_the_mlp_refuses_data_in_lanes(
        owner_key: SecretContext, host_context: PublicContext, enclave: EnclaveProcess) -> None:
    X, y = _wine()
    data = _to_host(host_context, owner_key, X[:40], y[:40], 3, lanes=4)
    plain = initial_network("mlp", X.shape[1], 3, hidden=4, activation="tanh")
    with pytest.raises(ShapeError, match="one lane"):
        refine(encrypt_network(host_context, plain), [data], RefineConfig(), context=host_context,
               enclave=enclave.client)


def test_network_round_trips_through_bytes(owner_key: SecretContext,
                                           host_context: PublicContext) -> None:
    plain = initial_network("mlp", 5, 3, hidden=4, activation="tanh")
    enc = encrypt_network(host_context, plain)
    again = EncryptedNetwork.from_bytes(host_context, enc.to_bytes(host_context))
    got = decrypt_network(owner_key, again)
    assert again.activation == "tanh" and again.n_classes == 3 and again.n_features == 5
    for name, w in plain.weights.items():
        assert np.allclose(got.weights[name], w, atol=1e-5)


def test_a_one_feature_network_keeps_its_matrix_shapes(owner_key: SecretContext,
                                                       host_context: PublicContext) -> None:
    plain = initial_network("mlp", 1, 3, hidden=4, activation="relu")
    got = decrypt_network(owner_key, encrypt_network(host_context, plain))
    assert got.weights["coef1"].shape == (1, 4) and got.weights["intercept1"].shape == (4,)
    assert np.allclose(got.weights["coef1"], plain.weights["coef1"], atol=1e-5)


def test_network_and_data_of_other_widths_are_refused(
        owner_key: SecretContext, host_context: PublicContext, enclave: EnclaveProcess) -> None:
    data = _to_host(host_context, owner_key, np.zeros((10, 5)), np.zeros(10), 3)
    model = encrypt_network(host_context, initial_network("softmax", 6, 3))
    with pytest.raises(ShapeError):
        refine(model, [data], RefineConfig(), context=host_context, enclave=enclave.client)


def _plain_metrics(z: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    zc = np.clip(z, -16, 16)
    lse = np.log(np.exp(zc).sum(axis=1))
    return (round(float(np.mean(zc.argmax(axis=1) == y)), 3),
            round(float(np.mean(lse - zc[np.arange(len(y)), y.astype(int)])), 3))


@pytest.mark.parametrize("kind", ["softmax", "mlp"])
def test_holdout_metrics_decisions_and_inference_for_networks(
        owner_key: SecretContext, host_context: PublicContext, enclave: EnclaveProcess,
        kind: str) -> None:
    from enclavekit import pinned, provision_sim

    from cipherloop.client.data import encrypt_batches
    from cipherloop.learn import compare, evaluate, network_scores

    X, y = _wine()
    pinned_set = encrypt_batches(owner_key, X[120:], y[120:], n_classes=3)
    start = initial_network(kind, X.shape[1], 3, hidden=6, activation="tanh",
                            rng=np.random.default_rng(4))
    zero = encrypt_network(host_context, start)
    train = _to_host(host_context, owner_key, X[:120], y[:120], 3)
    better, _ = refine(zero, [train], RefineConfig(learning_rate=1.0, epochs=4),
                       context=host_context, enclave=enclave.client)
    plain = decrypt_network(owner_key, better)
    with EnclaveProcess() as proc:
        provision_sim(proc, owner_key, pinned(pinned_set))
        metrics = evaluate(better, pinned_set, context=host_context, enclave=proc.client)
        acc, loss = _plain_metrics(plain.scores(X[120:]), y[120:])
        assert metrics["accuracy"] == acc and acc > 0.8
        assert abs(metrics["log_loss"] - loss) <= 0.001
        decision = compare(better, zero, pinned_set, context=host_context, enclave=proc.client,
                           with_metrics=True)
        assert decision["promote"] is True and decision["candidate"] < decision["current"]
        assert compare(zero, better, pinned_set, context=host_context,
                       enclave=proc.client)["promote"] is False
        # The owner's own zero model (secret-key encryption: it decrypts to almost exactly 0)
        # is scored like any other, never an enclave fault.
        exact_zero = encrypt_network(owner_key, initial_network(kind, X.shape[1], 3, hidden=6))
        assert compare(exact_zero, exact_zero, pinned_set, context=host_context,
                       enclave=proc.client)["promote"] is True
    hold = EncryptedDataset.from_batches(host_context, *pinned_set)
    z = network_scores(better, hold.features, hold.layout, context=host_context,
                       enclave=enclave.client)
    got = np.stack([hold.layout.samples.unpack([owner_key.decrypt(c) for c in zk]) for zk in z],
                   axis=1)
    assert got.shape == (len(y) - 120, 3)
    assert np.abs(got - plain.scores(X[120:])).max() < 1e-3
