"""Multiclass refinement on ciphertexts vs the plaintext twin, side by side in one run.

Prints (a) the HETAL shape -- synthetic 12,288 x 768, 10 classes, mini-batches
of 1,024, Nesterov momentum -- seconds per iteration and per epoch, and test
accuracy encrypted vs plaintext (same mini-batches, same initialisation); and
(b) scikit-learn's digits (8x8, 10 classes) with multinomial logistic
regression and an MLP 64-32-10: seconds per epoch, accuracy of both, share of
wall time spent waiting on the enclave, enclave calls per step, ciphertext
bytes per training sample, and the largest weight gap to the twin.

Run: ``.venv/bin/python bench/refine_models.py`` (``--hetal-iterations N`` runs
N of the 12 iterations of a HETAL epoch on N x 1,024 samples and extrapolates
the epoch; ``--skip-hetal`` for digits alone, ``--skip-digits`` for HETAL alone;
``--one-lane`` adds each model on blocks of 4,096 samples; ``--n-jobs 1`` one process).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

import numpy as np
from sklearn.datasets import load_digits

from cipherloop.ckks import Diagonals, SecretContext, preset, rotations_for_features
from cipherloop.client.data import encrypt_batches
from cipherloop.client.network import decrypt_network, encrypt_network, initial_network
from cipherloop.client.provisioning import provision, simulated_policy
from cipherloop.learn import EnclaveProcess, EncryptedDataset, RefineConfig, refine
from cipherloop.learn.reference import PlainNetwork, plain_network_refine

SLOTS = preset("n8192").slots


@dataclass
class Row:
    name: str
    n: int
    d: int
    k: int
    steps_per_epoch: int
    enc_step: float
    enc_epoch: float
    plain_epoch: float
    enclave_share: float
    calls_per_step: float
    enc_acc: float
    plain_acc: float
    bytes_per_sample: float
    max_gap: float
    encrypt_s: float
    lanes: int


def hetal_data(n_train: int, n_test: int, d: int = 768, k: int = 10, seed: int = 0
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Gaussian classes in 768 dimensions, scaled like normalised encoder features."""
    rng = np.random.default_rng(seed)
    means = rng.standard_normal((k, d)) * 0.12
    y = rng.integers(0, k, n_train + n_test)
    X = (means[y] + rng.standard_normal((n_train + n_test, d))) / np.sqrt(d) * 4
    return X[:n_train], y[:n_train].astype(float), X[n_train:], y[n_train:].astype(float)


def digits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    X, y = load_digits(return_X_y=True)
    order = np.random.default_rng(0).permutation(len(y))
    X, y = X[order] / 16.0, y[order].astype(float)
    return X[:1437], y[:1437], X[1437:], y[1437:]


def accuracy(model: PlainNetwork, X: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(model.scores(X).argmax(axis=1) == y))


def run(name: str, data: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
        start: PlainNetwork, config: RefineConfig, *, owner: SecretContext,
        proc: EnclaveProcess, epoch_steps: int | None = None, lanes: int | None = None) -> Row:
    Xtr, ytr, Xte, yte = data
    k = int(max(ytr.max(), yte.max())) + 1
    host = owner.public_context()
    if lanes is None:  # blocks sized to the mini-batch, as the estimators choose them
        lanes = Diagonals.lanes_for(config.batch_size or len(ytr), Xtr.shape[1], SLOTS)
    t0 = time.perf_counter()
    features, labels = encrypt_batches(owner, Xtr, ytr, n_classes=k, lanes=lanes)
    encrypt_s = time.perf_counter() - t0
    nbytes = sum(len(b) for b in features.items) + sum(len(b) for b in labels.items)
    dataset = EncryptedDataset.from_batches(host, features, labels)
    trained, stats = refine(encrypt_network(host, start), [dataset], config, context=host,
                            enclave=proc.client)
    got = decrypt_network(owner, trained)
    t1 = time.perf_counter()
    ref = plain_network_refine(start, [(Xtr, ytr)], config)
    plain_s = time.perf_counter() - t1
    gap = max(float(np.abs(got.weights[n] - w).max()) for n, w in ref.weights.items())
    steps = stats.steps / config.epochs
    per_step = stats.seconds / stats.steps
    epoch_steps = epoch_steps or int(steps)
    return Row(name, len(ytr), Xtr.shape[1], k, epoch_steps, per_step, per_step * epoch_steps,
               plain_s / stats.steps * epoch_steps, stats.enclave_seconds / stats.seconds,
               stats.enclave_calls / stats.steps, accuracy(got, Xte, yte), accuracy(ref, Xte, yte),
               nbytes / len(ytr), gap, encrypt_s, lanes)


HEAD = (f"{'run':<30}{'steps/ep':>9}{'s/step':>9}{'s/epoch':>10}{'plain s/ep':>12}"
        f"{'enclave':>9}{'calls/st':>9}{'acc enc':>9}{'acc plain':>10}{'B/sample':>10}"
        f"{'max |dw|':>10}{'encrypt s':>10}{'lanes':>6}")


def report(rows: list[Row]) -> None:
    print()
    print("encrypted refinement (CKKS n8192 + enclave) vs its plaintext twin (same mini-batches, "
          "same initialisation)")
    print(HEAD)
    print("-" * len(HEAD))
    for r in rows:
        print(f"{r.name:<30}{r.steps_per_epoch:>9d}{r.enc_step:>9.2f}{r.enc_epoch:>10.1f}"
              f"{r.plain_epoch:>12.2e}{r.enclave_share:>8.0%} {r.calls_per_step:>9.2f}"
              f"{r.enc_acc:>9.3f}{r.plain_acc:>10.3f}{r.bytes_per_sample:>10.0f}"
              f"{r.max_gap:>10.1e}{r.encrypt_s:>10.1f}{r.lanes:>6d}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hetal-iterations", type=int, default=12,
                    help="iterations of the HETAL epoch to run (12 = the whole epoch)")
    ap.add_argument("--skip-hetal", action="store_true")
    ap.add_argument("--skip-digits", action="store_true")
    ap.add_argument("--digits-epochs", type=int, default=3)
    ap.add_argument("--n-jobs", type=int, default=-1,
                    help="processes sharing a multiclass step's classes (-1: every core)")
    ap.add_argument("--one-lane", action="store_true",
                    help="also run each model with one lane (blocks of 4,096 samples), side by side")
    a = ap.parse_args()
    lane_runs: list[int | None] = [None, 1] if a.one_lane else [None]
    owner = SecretContext.generate(preset("n8192"), rotations_for_features(768, SLOTS))
    rows = []
    with EnclaveProcess() as proc:
        provision(proc.client, owner, simulated_policy(proc.state_dir), quiet_simulation=True)
        cfg = RefineConfig(learning_rate=1.0, momentum=0.9, batch_size=256,
                           epochs=a.digits_epochs, n_jobs=a.n_jobs)
        data = digits()
        for lanes in lane_runs if not a.skip_digits else []:
            rows.append(run("digits softmax 64-10", data, initial_network("softmax", 64, 10), cfg,
                            owner=owner, proc=proc, lanes=lanes))
            report(rows[-1:])
        mlp_cfg = RefineConfig(learning_rate=0.5, momentum=0.9, batch_size=256,
                               epochs=a.digits_epochs)
        start = initial_network("mlp", 64, 10, hidden=32, activation="relu",
                                rng=np.random.default_rng(1))
        if not a.skip_digits:  # the MLP refines one-lane data (learn/mlp.py)
            rows.append(run("digits MLP 64-32-10 relu", data, start, mlp_cfg, owner=owner,
                            proc=proc, lanes=1))
            report(rows[-1:])
        if not a.skip_hetal:
            n = 1024 * a.hetal_iterations
            hcfg = RefineConfig(learning_rate=1.0, momentum=0.9, batch_size=1024, epochs=1,
                                n_jobs=a.n_jobs)
            for lanes in lane_runs:
                rows.append(run(f"HETAL 768-10 ({a.hetal_iterations}/12 it)",
                                hetal_data(n, 2048), initial_network("softmax", 768, 10), hcfg,
                                owner=owner, proc=proc, epoch_steps=12, lanes=lanes))
                report(rows[-1:])
    report(rows)
    print("\n(s/epoch of the HETAL row: s/step x 12 steps of 1,024 of the 12,288 samples)")
    print("HETAL (ICML 2023, one A40 GPU): 4.29-15.72 s per iteration; target here <= 4.3 s.")


if __name__ == "__main__":
    main()
