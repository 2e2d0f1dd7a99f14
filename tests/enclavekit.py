"""Helpers shared by the enclave-facing tests."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from cipherloop.ckks import CiphertextBatch, PublicContext, SecretContext
from cipherloop.learn import EnclaveProcess

Context = PublicContext | SecretContext


def provision_sim(proc: EnclaveProcess, key: SecretContext,
                  policy: dict[str, object] | None = None) -> str:
    """Attested provisioning against the simulated TEE (simulation explicitly allowed)."""
    # Imported here: cipherloop.client pulls in scikit-learn (a second), which most
    # enclave tests -- and every mutation-test run of them -- never need.
    from cipherloop.client.provisioning import provision, simulated_policy

    verified = provision(proc.client, key, simulated_policy(proc.state_dir), policy=policy,
                         quiet_simulation=True)
    assert verified.simulated
    return key.key_id


def product_scale(ctx: Context, level: int) -> float:
    """The exact scale of a rescaled ct x ct product of nominal-scale factors at ``level``."""
    return ctx.params.scale ** 2 / ctx.backend.prime(level + 1)


def logits_batch(ctx: Context, blocks: Sequence[np.ndarray], layout: dict[str, Any],
                 level: int | None = None) -> bytes:
    """Logits as the host's ``X @ w`` leaves them: one level down, at the product's scale."""
    lvl = ctx.params.top_level - 1 if level is None else level
    cts = [ctx.encrypt(b, level=lvl, scale=product_scale(ctx, lvl)) for b in blocks]
    return CiphertextBatch.of(ctx, cts, layout).to_bytes()


def holdout(ctx: Context, n: int = 64, d: int = 4, *, seed: int = 0
            ) -> tuple[CiphertextBatch, CiphertextBatch, np.ndarray, np.ndarray]:
    """A hold-out set as the owner encrypts (and pins) it, with its plaintext."""
    from cipherloop.client.data import encrypt_batches

    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    y = (X @ np.linspace(1.0, 0.2, d) > 0).astype(float)
    f, lab = encrypt_batches(ctx, X, y)
    return f, lab, X, y


def pinned(*sets: tuple[CiphertextBatch, CiphertextBatch], **policy: object) -> dict[str, object]:
    """An enclave policy pinning these hold-out sets."""
    from cipherloop.client.provisioning import holdout_pin

    return {"holdouts": [holdout_pin(f, lab) for f, lab in sets], **policy}


class Clock:
    """Injected time (seconds) for the release budget: tests move it by hand."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now
