"""The malicious host's toolkit for the adversarial suite (see ``conftest.py``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cbor2
import numpy as np

from cipherloop.ckks import Ciphertext, CiphertextBatch, PublicContext, SampleBlocks, SecretContext
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
        """The request and reply as the socket carries them (CBOR: fresh strings, no shared
        objects), so an operation sees exactly what a real host's bytes decode to."""
        msg = cbor2.loads(cbor2.dumps({"op": op, "args": {"key_id": self.key_id, **args}}))
        reply: dict[str, Any] = cbor2.loads(cbor2.dumps(self.enclave.handle(msg)))
        return reply


def holdout_data(classes: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """The owner's plaintext hold-out set every world pins: 40 samples of 4 features; labels
    ``x0 > 0`` for two classes, else the index of the largest of the first ``classes`` features."""
    X = np.random.default_rng(7).standard_normal((40, 4))
    if classes == 2:
        return X, (X[:, 0] > 0).astype(float)
    return X, np.argmax(X[:, :classes], axis=1).astype(float)


_EXPORTED: dict[str, bytes] = {}


def _exported(key: SecretContext) -> bytes:
    """The owner's exported key, serialised once per key: it is most of a world's set-up time."""
    if key.key_id not in _EXPORTED:
        _EXPORTED[key.key_id] = key.export_secret()
    return _EXPORTED[key.key_id]


def make_world(tmp: Path, key: SecretContext, *, classes: int = 2, labels: Any = None,
               **policy: Any) -> World:
    """``labels`` replaces the hold-out set's labels with values ``encrypt_batches`` would refuse
    (an owner's mistake it pins anyway), encrypted by hand in sample blocks of their count."""
    X, y = holdout_data(classes)
    f, lab = encrypt_batches(key, X, y, n_classes=classes)
    if labels is not None:
        samples = SampleBlocks(len(labels), key.params.slots)
        lab = CiphertextBatch.of(key, [key.encrypt(b, level=0) for b in samples.pack(labels)],
                                 samples.describe())
    config = EnclaveConfig(tmp / "enclave.sock", tmp / "state", allow_local_provisioning=True)
    enclave = Enclave(config)
    doc = {"holdouts": [holdout_pin(f, lab)], "min_samples": 16, **policy}
    reply = enclave.handle({"op": "provision_local",
                            "args": {"secret": _exported(key), "policy": doc}})
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
