"""Helpers shared by the enclave-facing tests."""

from __future__ import annotations

from cipherloop.ckks import SecretContext
from cipherloop.client.provisioning import provision, simulated_policy
from cipherloop.learn import EnclaveProcess


def provision_sim(proc: EnclaveProcess, key: SecretContext,
                  policy: dict[str, object] | None = None) -> str:
    """Attested provisioning against the simulated TEE (simulation explicitly allowed)."""
    verified = provision(proc.client, key, simulated_policy(proc.state_dir), policy=policy,
                         quiet_simulation=True)
    assert verified.simulated
    return key.key_id
