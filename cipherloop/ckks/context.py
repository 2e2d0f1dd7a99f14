"""Public and secret CKKS contexts: two types, so the host can't hold the wrong one.

Runs in: owner (both), host (public only), enclave (secret, after provisioning).
Serialising a public context leaves the secret key out; the secret travels
only through :meth:`SecretContext.export_secret`, named for what it does.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Sequence

import cbor2
import numpy as np

from ..errors import KeyMaterialError
from .params import CkksParams
from .seal_backend import SealBackend
from .vector import Ciphertext

_FORMAT = "cipherloop-ckks-keys/v1"


def _key_id(params: CkksParams, public_key: bytes) -> str:
    h = hashlib.sha256(b"cipherloop-key-id/v1" + params.digest().encode() + public_key)
    return h.hexdigest()[:32]


def _pack(kind: str, params: CkksParams, key_id: str, blobs: dict[str, bytes]) -> bytes:
    return bytes(
        cbor2.dumps(
            {
                "format": _FORMAT,
                "kind": kind,
                "params": {
                    "poly_modulus_degree": params.poly_modulus_degree,
                    "coeff_mod_bit_sizes": list(params.coeff_mod_bit_sizes),
                    "scale_bits": params.scale_bits,
                },
                "key_id": key_id,
                "keys": blobs,
            }
        )
    )


def _unpack(data: bytes, kind: str) -> tuple[CkksParams, str, dict[str, bytes]]:
    try:
        doc = cbor2.loads(data)
        if doc["format"] != _FORMAT or doc["kind"] != kind:
            raise ValueError
        p = doc["params"]
        params = CkksParams(
            int(p["poly_modulus_degree"]),
            tuple(int(b) for b in p["coeff_mod_bit_sizes"]),
            int(p["scale_bits"]),
        )
        blobs = {str(k): bytes(v) for k, v in doc["keys"].items()}
        key_id = str(doc["key_id"])
        pk = blobs["public_key"]
    except Exception:
        raise KeyMaterialError(f"not a cipherloop {kind} key file") from None
    if not hmac.compare_digest(_key_id(params, pk), key_id):
        raise KeyMaterialError("key file is corrupted: key id does not match its public key")
    return params, key_id, blobs


class _ContextBase:
    def __init__(self, backend: SealBackend, key_id: str) -> None:
        self._backend = backend
        self.key_id = key_id

    @property
    def params(self) -> CkksParams:
        return self._backend.params

    @property
    def backend(self) -> SealBackend:
        return self._backend

    def encrypt(self, values: np.ndarray | Sequence[float], *, level: int | None = None,
                scale: float | None = None) -> Ciphertext:
        """Encrypt up to ``slots`` values (zero-padded) at ``level`` (default: top)."""
        arr = np.asarray(values, dtype=np.float64).ravel()
        if arr.size > self.params.slots:
            raise ValueError(f"at most {self.params.slots} values fit one ciphertext")
        if not np.all(np.isfinite(arr)):
            raise ValueError("values must be finite")
        lvl = self.params.top_level if level is None else level
        sc = self.params.scale if scale is None else scale
        return Ciphertext(self._backend, self._backend.encrypt(arr, level=lvl, scale=sc))

    def encrypt_bytes(self, values: np.ndarray | Sequence[float], *, level: int | None = None,
                      scale: float | None = None) -> bytes:
        """Encrypt straight to wire bytes (seeded, half-size, when the secret key is here)."""
        arr = np.asarray(values, dtype=np.float64).ravel()
        if arr.size > self.params.slots or not np.all(np.isfinite(arr)):
            raise ValueError(f"need at most {self.params.slots} finite values")
        lvl = self.params.top_level if level is None else level
        sc = self.params.scale if scale is None else scale
        return self._backend.encrypt_bytes(arr, level=lvl, scale=sc)

    def load_ciphertext(self, data: bytes) -> Ciphertext:
        return Ciphertext(self._backend, self._backend.load(data))


class PublicContext(_ContextBase):
    """What the host holds: encrypt and evaluate; nothing here can decrypt."""

    def __repr__(self) -> str:
        return f"PublicContext(key_id={self.key_id!r}, N={self.params.poly_modulus_degree})"

    def serialize(self) -> bytes:
        return _pack("public", self.params, self.key_id, self._backend.key_bytes())

    @classmethod
    def load(cls, data: bytes) -> PublicContext:
        params, key_id, blobs = _unpack(data, "public")
        blobs.pop("secret_key", None)
        return cls(SealBackend.from_key_bytes(params, blobs), key_id)


class SecretContext(_ContextBase):
    """The owner's (and, once provisioned, the enclave's) context: it can decrypt."""

    def __repr__(self) -> str:
        return f"SecretContext(key_id={self.key_id!r}, secret=<redacted>)"

    @classmethod
    def generate(cls, params: CkksParams, rotations: Iterable[int] = ()) -> SecretContext:
        """Fresh keys, with Galois keys for exactly the rotation steps named."""
        backend = SealBackend.generate(params, list(rotations))
        pk = backend.key_bytes()["public_key"]
        return cls(backend, _key_id(params, pk))

    def public_context(self) -> PublicContext:
        return PublicContext(self._backend.public_backend(), self.key_id)

    def decrypt(self, ct: Ciphertext) -> np.ndarray:
        return self._backend.decrypt(ct.handle)

    def export_secret(self, *, evaluation_keys: bool = False) -> bytes:
        """The secret key (and public key, for the key id) as bytes. Handle as a secret."""
        blobs = self._backend.key_bytes(secret=True)
        if not evaluation_keys:
            blobs.pop("relin_keys", None)
            blobs.pop("galois_keys", None)
        return _pack("secret", self.params, self.key_id, blobs)

    @classmethod
    def load_secret(cls, data: bytes) -> SecretContext:
        params, key_id, blobs = _unpack(data, "secret")
        if "secret_key" not in blobs:
            raise KeyMaterialError("secret key file holds no secret key")
        ctx = cls(SealBackend.from_key_bytes(params, blobs), key_id)
        ctx._check_pair()
        return ctx

    def _check_pair(self) -> None:
        """Refuse a secret key that is not the public key's: the key id names the public key.

        Without this, a file pairing someone's public key (hence their key id)
        with another secret key would load under their key id.
        """
        probe = np.linspace(-1.0, 1.0, 8)
        got = self.decrypt(self.public_context().encrypt(probe))[: probe.size]
        # Fresh noise is ~1e-3 even at scale 2**20; a wrong secret key gives values ~q/scale.
        if not np.allclose(got, probe, atol=0.1):
            raise KeyMaterialError("key file is corrupted: secret key does not match its public key")
