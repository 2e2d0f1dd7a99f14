"""The malicious host's toolkit for the adversarial suite (see ``conftest.py``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cipherloop.ckks import Ciphertext, CiphertextBatch, PublicContext, SecretContext
from cipherloop.client.data import encrypt_batches
from cipherloop.client.provisioning import holdout_pin
from cipherloop.enclave.server import Enclave, EnclaveConfig


@dataclass
class World:
    """An enclave serving the owner's key, and what the host stores for that owner."""

    enclave: Enclave
    key_id: str
    holdout: tuple[bytes, bytes]

    def call(self, op: str, **args: Any) -> dict[str, Any]:
        return self.enclave.handle({"op": op, "args": {"key_id": self.key_id, **args}})


def make_world(tmp: Path, key: SecretContext, **policy: Any) -> World:
    rng = np.random.default_rng(7)
    X = rng.standard_normal((40, 4))
    y = (X[:, 0] > 0).astype(float)
    f, lab = encrypt_batches(key, X, y)
    config = EnclaveConfig(tmp / "enclave.sock", tmp / "state", allow_local_provisioning=True)
    enclave = Enclave(config)
    doc = {"holdouts": [holdout_pin(f, lab)], "min_samples": 16, **policy}
    reply = enclave.handle({"op": "provision_local",
                            "args": {"secret": key.export_secret(), "policy": doc}})
    assert reply["ok"], reply
    return World(enclave, key.key_id, (f.to_bytes(), lab.to_bytes()))


def view(reply: dict[str, Any]) -> Any:
    """What a reply tells the host, with fresh ciphertexts reduced to their shape.

    Fresh ciphertexts are random; the host learns from them only their count
    and layout (their bytes are indistinguishable under CKKS's security).
    """
    if not reply["ok"]:
        return ("refused", reply["error"]["type"], reply["error"]["message"])
    return ("ok", _shape(reply["result"]))


def _shape(value: Any) -> Any:
    if isinstance(value, bytes):
        batch = CiphertextBatch.from_bytes(value)
        return ("batch", len(batch.items), batch.layout.get("kind"))
    if isinstance(value, dict):
        return {k: _shape(v) for k, v in sorted(value.items())}
    if isinstance(value, list):
        return [_shape(v) for v in value]
    return value


def batch(ctx: PublicContext | SecretContext, cts: list[Ciphertext], layout: dict[str, Any]) -> bytes:
    return CiphertextBatch.of(ctx, cts, layout).to_bytes()


def with_scale(ct: Ciphertext, scale: float) -> Ciphertext:
    """The host edits a ciphertext's scale field (metadata it fully controls)."""
    ct.handle.scale = scale
    return ct
