"""The operation counts the README and ``learn/kernels.py`` promise, measured exactly.

The counts are deterministic: they depend only on the shape of the data, so
every row of the cost table is asserted as an equality against the backend's
operation counters (``RefineStats.ops``), for the README's own example and a
spread of smaller shapes that exercise each term of the formulas.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest

from cipherloop.ckks import Diagonals, PublicContext, SecretContext
from cipherloop.client.data import encrypt_dataset, encrypt_model
from cipherloop.learn import EnclaveProcess, RefineConfig, refine

README = Path(__file__).resolve().parents[1] / "README.md"


def _per_step(n_samples: int, n_features: int, slots: int) -> dict[str, int]:
    """The kernels' cost table for one full-batch step: ``z = X @ u`` plus ``g = X.T @ e``."""
    layout = Diagonals.plan(n_samples, n_features, slots)
    C, P, B, G = layout.n_blocks, layout.period, layout.baby, layout.giant
    return {
        "multiply": C * P + C * P,
        "rotate": ((B - 1) + C * (G - 1)) + ((B - 1) + int(math.log2(slots / P))),
        "relinearize": C * G + B,
    }


def _measured(owner_key: SecretContext, host_context: PublicContext, enclave: EnclaveProcess,
              n_samples: int, n_features: int, config: RefineConfig, *,
              intercept: bool = True) -> dict[str, int]:
    rng = np.random.default_rng(n_samples * 1000 + n_features)
    X = rng.normal(size=(n_samples, n_features)) / np.sqrt(n_features)
    y = (X[:, 0] > 0).astype(np.float64)
    data = encrypt_dataset(host_context, X, y)
    model = encrypt_model(host_context, np.zeros(n_features), 0.0 if intercept else None)
    _, stats = refine(model, [data], config, context=host_context, enclave=enclave.client)
    assert stats.steps == config.epochs
    return {k: stats.ops[k] for k in ("multiply", "rotate", "relinearize")}


def test_readme_example_counts_are_the_formula() -> None:
    text = " ".join(README.read_text().split())
    m = re.search(r"For (\d+) × (\d+) \(`C=(\d+), P=(\d+), B=(\d+), G=(\d+)`\) that is (\d+) "
                  r"multiplications and (\d+) rotations per epoch", text)
    assert m, "the README's worked example moved or changed its wording"
    n, d, C, P, B, G, mults, rots = map(int, m.groups())
    layout = Diagonals.plan(n, d, 4096)
    assert (layout.n_blocks, layout.period, layout.baby, layout.giant) == (C, P, B, G)
    expected = _per_step(n, d, 4096)
    assert (expected["multiply"], expected["rotate"]) == (mults, rots) == (512, 48)


@pytest.mark.slow
def test_readme_example_16384_by_64_costs_512_multiplications_and_48_rotations_per_epoch(
        owner_key: SecretContext, host_context: PublicContext, enclave: EnclaveProcess) -> None:
    got = _measured(owner_key, host_context, enclave, 16384, 64,
                    RefineConfig(momentum=0.0, epochs=1, learning_rate=0.1))
    assert got["multiply"] == 512
    assert got["rotate"] == 48
    assert got == _per_step(16384, 64, 4096)


@pytest.mark.parametrize(("n_samples", "n_features"), [
    (40, 1),      # P=1: no baby or giant steps, the fold does all the rotating
    (50, 5),      # P=8 < 16: one giant step
    (4097, 30),   # two blocks, P=32: two giant steps per block
    (300, 17),    # P=32 with 15 padding features
])
@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_counts_per_epoch_follow_the_cost_table(
        owner_key: SecretContext, host_context: PublicContext, enclave: EnclaveProcess,
        n_samples: int, n_features: int, momentum: float) -> None:
    epochs = 2
    got = _measured(owner_key, host_context, enclave, n_samples, n_features,
                    RefineConfig(momentum=momentum, epochs=epochs, learning_rate=0.1))
    per_step = _per_step(n_samples, n_features, 4096)
    assert got == {k: epochs * v for k, v in per_step.items()}


def test_a_model_without_intercept_costs_the_same_ct_ct_work(
        owner_key: SecretContext, host_context: PublicContext, enclave: EnclaveProcess) -> None:
    got = _measured(owner_key, host_context, enclave, 50, 5,
                    RefineConfig(momentum=0.0, epochs=1, learning_rate=0.1), intercept=False)
    assert got == _per_step(50, 5, 4096)
