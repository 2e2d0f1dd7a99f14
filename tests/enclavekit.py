"""Helpers shared by the enclave-facing tests."""

from __future__ import annotations

from cipherloop.ckks import SecretContext
from cipherloop.learn import EnclaveProcess


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


class Clock:
    """Injected time (seconds) for the release budget: tests move it by hand."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now
