"""Encrypted logistic-regression refinement vs plaintext NumPy, measured side by side.

Prints, for breast cancer (569 x 30) and a synthetic 16384 x 64 set: seconds per
full-batch epoch encrypted vs plaintext (same algorithm, same data), their ratio,
the share of wall time spent waiting on the enclave, refreshes per epoch, accuracy
of both on held-out data, ciphertext bytes per training sample, operation counts
per epoch, and one epoch done the straightforward way (column-packed features,
every per-feature gradient summed across slots by rotations) as a reference.

Run: ``.venv/bin/python bench/refine_lr.py`` (``--quick`` for a short run).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

import numpy as np
from sklearn.datasets import load_breast_cancer
from sklearn.preprocessing import StandardScaler

from cipherloop.attest import VerifierPolicy
from cipherloop.ckks import (
    Ciphertext,
    CiphertextBatch,
    Diagonals,
    PublicContext,
    Replicated,
    SecretContext,
    preset,
    rotations_for_features,
)
from cipherloop.client.data import decrypt_model, encrypt_batches, encrypt_model
from cipherloop.client.provisioning import provision, simulated_policy
from cipherloop.learn import EnclaveClient, EnclaveProcess, EncryptedDataset, RefineConfig, refine
from cipherloop.learn.reference import PlainModel, plain_refine

SLOTS = preset("n8192").slots
REF_EPOCHS = 3


@dataclass
class Row:
    name: str
    n: int
    d: int
    enc_epoch: float
    plain_epoch: float
    enclave_share: float
    refreshes_per_epoch: float
    enc_acc: float
    plain_acc: float
    bytes_per_sample: float
    ops_per_epoch: dict[str, float]
    gd_epoch: float
    straightforward_epoch: float | None
    max_weight_gap: float


def synthetic(n: int, d: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    w = rng.standard_normal(d) / np.sqrt(d) * 3
    y = (X @ w + 0.5 * rng.standard_normal(n) > 0).astype(np.float64)
    return X, y


def breast_cancer() -> tuple[np.ndarray, np.ndarray]:
    X, y = load_breast_cancer(return_X_y=True)
    order = np.random.default_rng(0).permutation(len(y))
    return StandardScaler().fit_transform(X)[order], y[order].astype(np.float64)


def accuracy(w: np.ndarray, b: float, X: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean((X @ w + b > 0) == (y > 0.5)))


def time_plain(X: np.ndarray, y: np.ndarray, config: RefineConfig) -> tuple[float, PlainModel]:
    one = RefineConfig(config.learning_rate, config.momentum, config.batch_size, 1)
    m = PlainModel(np.zeros(X.shape[1]))
    reps, t0 = 0, time.perf_counter()
    while reps < config.epochs or time.perf_counter() - t0 < 0.5:
        m = plain_refine(m, [(X, y)], one)
        reps += 1
    per_epoch = (time.perf_counter() - t0) / reps
    return per_epoch, plain_refine(PlainModel(np.zeros(X.shape[1])), [(X, y)], config)


# ------------------------------------------------------- the straightforward reference
def straightforward_epochs(X: np.ndarray, y: np.ndarray, enclave: EnclaveClient,
                           verifier: VerifierPolicy, epochs: int) -> float:
    """Seconds per full-batch gradient-descent epoch with column packing (the reference).

    One ciphertext per feature and block; ``z`` needs no rotation (the weights are
    replicated per feature), but every per-feature gradient is summed across all
    slots by log2(slots) rotations, and every product is relinearised and rescaled
    on its own (TenSEAL's vector API). Same enclave error step, same data.
    """
    n, d = X.shape
    params = preset("n8192")
    owner = SecretContext.generate(params, [1 << k for k in range(12)])
    host = owner.public_context()
    provision(enclave, owner, verifier, quiet_simulation=True)
    layout = Diagonals(n, d, SLOTS, Diagonals.plan(n, d, SLOTS).period)  # giant = 1: e unrotated
    samples = layout.samples
    cols = [[owner.encrypt(col) for col in samples.pack(X[:, j])] for j in range(d)]
    labels = [owner.encrypt(v, level=0) for v in samples.pack(y)]
    rep = Replicated(1, 1, SLOTS)
    w = [owner.encrypt(rep.pack(0.0)) for _ in range(d)]
    b = owner.encrypt(rep.pack(0.0))

    t0 = time.perf_counter()
    for _ in range(epochs):
        z: list[Ciphertext] = []
        for c in range(layout.n_blocks):
            acc = cols[0][c] * w[0]
            for j in range(1, d):
                acc = acc + cols[j][c] * w[j]
            z.append(acc + b.times(1.0, scale=acc.scale / b.scale * b.next_prime))
        e_raw, s_raw = enclave.logistic_error(
            host.key_id, z=CiphertextBatch.of(host, z, samples.describe()).to_bytes(),
            y=CiphertextBatch.of(host, labels, samples.describe()).to_bytes(),
            features=layout.describe(), first_block=0, start=0, stop=n, learning_rate=1.0,
            level=params.top_level, intercept=True)
        e = CiphertextBatch.from_bytes(e_raw).open(host)
        s = CiphertextBatch.from_bytes(s_raw or b"").open(host)[0]
        for j in range(d):
            g = cols[j][0] * e[0]
            for c in range(1, layout.n_blocks):
                g = g + cols[j][c] * e[c]
            k = 1
            while k < SLOTS:
                g = g + g.rotate(k)
                k *= 2
            w[j] = w[j] - g
        b = b - s
    return (time.perf_counter() - t0) / epochs


# ----------------------------------------------------------------------------- one data set
def run(name: str, X: np.ndarray, y: np.ndarray, *, epochs: int, reference: bool,
        enclave: EnclaveClient, verifier: VerifierPolicy) -> Row:
    n_train = int(len(y) * 0.8)
    Xtr, ytr, Xte, yte = X[:n_train], y[:n_train], X[n_train:], y[n_train:]
    d = X.shape[1]
    config = RefineConfig(learning_rate=1.0, momentum=0.9, batch_size=None, epochs=epochs)
    owner = SecretContext.generate(preset("n8192"), rotations_for_features(d, SLOTS))
    host = PublicContext.load(owner.public_context().serialize())
    provision(enclave, owner, verifier, quiet_simulation=True)
    f, lab = encrypt_batches(owner, Xtr, ytr)  # what the owner uploads (seeded ciphertexts)
    raw_f, raw_y = f.to_bytes(), lab.to_bytes()
    data = EncryptedDataset.from_batches(host, CiphertextBatch.from_bytes(raw_f),
                                         CiphertextBatch.from_bytes(raw_y))
    model = encrypt_model(host, np.zeros(d), 0.0)

    trained, stats = refine(model, [data], config, context=host, enclave=enclave)
    w, b = decrypt_model(owner, trained)
    plain_epoch, ref = time_plain(Xtr, ytr, config)
    gd = RefineConfig(config.learning_rate, 0.0, None, REF_EPOCHS)
    _, gd_stats = refine(model, [data], gd, context=host, enclave=enclave)
    straight = (straightforward_epochs(Xtr, ytr, enclave, verifier, REF_EPOCHS) if reference
                else None)
    return Row(
        name=name, n=n_train, d=d,
        enc_epoch=stats.seconds / epochs, plain_epoch=plain_epoch,
        enclave_share=stats.enclave_seconds / stats.seconds,
        refreshes_per_epoch=stats.refreshes / epochs,
        enc_acc=accuracy(w, b, Xte, yte), plain_acc=accuracy(ref.coef, ref.intercept, Xte, yte),
        bytes_per_sample=(len(raw_f) + len(raw_y)) / n_train,
        ops_per_epoch={k: v / epochs for k, v in stats.ops.items()},
        gd_epoch=gd_stats.seconds / REF_EPOCHS, straightforward_epoch=straight,
        max_weight_gap=float(np.max(np.abs(w - ref.coef))),
    )


def report(rows: list[Row]) -> None:
    print()
    print("encrypted refinement (CKKS n8192 + enclave) vs plaintext numpy, full-batch epochs,"
          " Nesterov momentum 0.9, lr 1.0")
    head = (f"{'data set':<22}{'enc s/epoch':>12}{'plain s/epoch':>14}{'ratio':>9}{'enclave':>9}"
            f"{'refresh/ep':>11}{'acc enc':>9}{'acc plain':>10}{'|dw| max':>10}{'B/sample':>10}")
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{f'{r.name} {r.n}x{r.d}':<22}{r.enc_epoch:>12.3f}{r.plain_epoch:>14.2e}"
              f"{r.enc_epoch / r.plain_epoch:>8.0f}x{r.enclave_share:>8.0%}"
              f"{r.refreshes_per_epoch:>11.2f}{r.enc_acc:>9.3f}{r.plain_acc:>10.3f}"
              f"{r.max_weight_gap:>10.1e}{r.bytes_per_sample:>10.0f}")
    print()
    print("operations per epoch (host, Nesterov run above):")
    for r in rows:
        ops = ", ".join(f"{k} {v:.0f}" for k, v in sorted(r.ops_per_epoch.items()))
        print(f"  {r.name}: {ops}")
    print()
    print(f"packed vs the straightforward column-packed way, full-batch gradient descent (no momentum),"
          f" {REF_EPOCHS} epochs from the same fresh model, seconds per epoch:")
    for r in rows:
        if r.straightforward_epoch is not None:
            print(f"  {r.name}: packed {r.gd_epoch:.3f} s vs straightforward "
                  f"{r.straightforward_epoch:.3f} s -> {r.straightforward_epoch / r.gd_epoch:.1f}x faster")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer epochs, smaller synthetic set")
    a = ap.parse_args()
    n_syn = 4096 if a.quick else 16384
    with EnclaveProcess() as proc:
        verifier = simulated_policy(proc.state_dir)
        rows = [
            run("breast cancer", *breast_cancer(), epochs=5 if a.quick else 20, reference=True,
                enclave=proc.client, verifier=verifier),
            run("synthetic", *synthetic(int(n_syn / 0.8), 64), epochs=2 if a.quick else 5,
                reference=True, enclave=proc.client, verifier=verifier),
        ]
    report(rows)


if __name__ == "__main__":
    main()
