"""The adversarial suite: the test plays the malicious host.

The host holds only what DESIGN.md gives it -- the public context and the
ciphertexts it stores -- and may send the enclave anything. Each test builds
two *worlds* that differ only in a secret the host must not learn (a stored
value, small in one world and at or beyond the encoder's bounds in the
other), runs the same attack in both, and compares what the host sees:
which calls succeed, error types and messages, and the shape of every reply.

The enclave here is the real :class:`~cipherloop.enclave.server.Enclave`
dispatch (the exact replies the socket server frames), in-process so a
test can afford hundreds of calls; restart and second-process tests start
real enclave processes.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cipherloop.ckks import (
    Ciphertext,
    CiphertextBatch,
    PublicContext,
    SecretContext,
    preset,
    rotations_for_features,
)
from cipherloop.client.data import encrypt_batches
from cipherloop.client.provisioning import holdout_pin
from cipherloop.enclave.server import Enclave, EnclaveConfig


@pytest.fixture(scope="session")
def sec_key() -> SecretContext:
    return SecretContext.generate(preset("n8192"), rotations_for_features(8, 4096))


@pytest.fixture(scope="session")
def host(sec_key: SecretContext) -> PublicContext:
    """All the host has: the public context, as bytes it was sent."""
    return PublicContext.load(sec_key.public_context().serialize())


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


@pytest.fixture
def worlds(tmp_path: Path, sec_key: SecretContext) -> Iterator[tuple[World, World]]:
    a, b = make_world(tmp_path / "a", sec_key), make_world(tmp_path / "b", sec_key)
    yield a, b
    a.enclave.close()
    b.enclave.close()


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
