"""The main job on embedded defaults: encrypted refinement of a model on breast-cancer data.

Runs in: owner and host, in one process tree (the enclave is its own process).
The owner trains an initial model on a small first slice, encrypts it, and
goes offline; new encrypted data then arrives in rounds and the host refines
the encrypted model after each, with the enclave's help. After every round
the owner decrypts the model and scores it on a held-out test set, next to
the same algorithm run in plaintext with the same hyperparameters.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from sklearn.datasets import load_breast_cancer
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler

from .attest import VerifiedEvidence, VerifierPolicy
from .ckks import SecretContext, preset, rotations_for_features
from .client.data import decrypt_model, encrypt_dataset, encrypt_model
from .client.provisioning import provision
from .learn import EnclaveClient, RefineConfig, refine
from .learn.reference import PlainModel, plain_refine


@dataclass(frozen=True)
class DemoConfig:
    rounds: int = 6
    first_slice: int = 40
    epochs_per_round: int = 8
    learning_rate: float = 1.0
    momentum: float = 0.9
    batch_size: int | None = None
    params: str = "n8192"
    seed: int = 7


@dataclass
class RoundResult:
    round: int
    samples_seen: int
    encrypted_accuracy: float
    plaintext_accuracy: float
    max_weight_gap: float
    seconds: float
    refreshes: int
    enclave_seconds: float


@dataclass
class DemoData:
    test: tuple[np.ndarray, np.ndarray]
    first: tuple[np.ndarray, np.ndarray]
    rounds: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)


def split(config: DemoConfig) -> DemoData:
    """Shuffle, hold out a test set, cut a first slice and equal rounds; scale on the first slice."""
    X, y = load_breast_cancer(return_X_y=True)
    X_tr, X_te, y_tr, y_te = train_test_split(X, y.astype(np.float64), test_size=0.3,
                                              random_state=config.seed, stratify=y)
    scaler = StandardScaler().fit(X_tr[: config.first_slice])
    X_tr, X_te = np.clip(scaler.transform(X_tr), -8, 8), np.clip(scaler.transform(X_te), -8, 8)
    k = config.first_slice
    chunks = np.array_split(np.arange(k, len(y_tr)), config.rounds)
    return DemoData((X_te, y_te), (X_tr[:k], y_tr[:k]), [(X_tr[c], y_tr[c]) for c in chunks])


def accuracy(w: np.ndarray, b: float, data: tuple[np.ndarray, np.ndarray]) -> float:
    X, y = data
    return float(np.mean((X @ w + b > 0) == (y > 0.5)))


def run(config: DemoConfig, enclave: EnclaveClient, verifier: VerifierPolicy, *,
        on_attested: Callable[[VerifiedEvidence], None] | None = None,
        on_round: Callable[[RoundResult], None] | None = None,
        on_progress: Callable[[str, int, int], None] | None = None) -> list[RoundResult]:
    """Provision the enclave by attestation, then run the rounds; one result per round."""
    data = split(config)
    params = preset(config.params)
    d = data.first[0].shape[1]
    key = SecretContext.generate(params, rotations_for_features(d, params.slots))
    verified = provision(enclave, key, verifier)  # the owner checks the enclave first
    if on_attested is not None:
        on_attested(verified)
    cloud = key.public_context()  # all the host ever holds

    cfg = RefineConfig(learning_rate=config.learning_rate, momentum=config.momentum,
                       batch_size=config.batch_size, epochs=config.epochs_per_round)
    first = plain_refine(PlainModel(np.zeros(d)), [data.first], cfg)  # owner, at home
    model = encrypt_model(key, first.coef, first.intercept)  # momentum starts afresh
    plain = PlainModel(first.coef, first.intercept)
    results = [RoundResult(0, len(data.first[1]), accuracy(plain.coef, plain.intercept, data.test),
                           accuracy(plain.coef, plain.intercept, data.test), 0.0, 0.0, 0, 0.0)]
    if on_round:
        on_round(results[0])
    seen = len(data.first[1])
    for r, (X, y) in enumerate(data.rounds, start=1):
        enc = encrypt_dataset(key, X, y)  # the owner (or a device) encrypts new data
        t0 = time.perf_counter()
        def step(done: int, total: int, r: int = r) -> None:
            if on_progress is not None:
                on_progress(f"round {r}", done, total)

        model, stats = refine(model, [enc], cfg, context=cloud, enclave=enclave, on_step=step)
        seconds = time.perf_counter() - t0
        plain = plain_refine(plain, [(X, y)], cfg)
        w, b = decrypt_model(key, model)  # the owner, back online, reads the model
        seen += len(y)
        res = RoundResult(r, seen, accuracy(w, b, data.test),
                          accuracy(plain.coef, plain.intercept, data.test),
                          float(np.max(np.abs(w - plain.coef))), seconds, stats.refreshes,
                          stats.enclave_seconds)
        results.append(res)
        if on_round:
            on_round(res)
    return results


def plot(results: list[RoundResult], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=120)
    rounds = [r.round for r in results]
    ax.plot(rounds, [r.encrypted_accuracy for r in results], "o-", label="encrypted (CKKS + enclave)")
    ax.plot(rounds, [r.plaintext_accuracy for r in results], "s--", label="plaintext, same algorithm")
    ax.set_xlabel("refinement round (0 = initial model from the first slice)")
    ax.set_ylabel("test accuracy")
    ax.set_title("cipherloop: encrypted refinement on breast-cancer data")
    ax.set_ylim(max(0.0, min(r.encrypted_accuracy for r in results) - 0.05), 1.0)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
