"""AES-256-GCM blobs under a derived key, shared by the sim and Gramine platforms.

Runs in: enclave.
"""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ...errors import KeyMaterialError

_VERSION = b"\x01"
_NONCE_BYTES = 12


def derive_key(secret: bytes, *, salt: bytes, info: bytes) -> bytes:
    """A 256-bit AEAD key from ``secret``, separated by ``salt`` and ``info``."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info).derive(secret)


def seal(key: bytes, plaintext: bytes, aad: bytes) -> bytes:
    """``version ‖ nonce ‖ AES-GCM(plaintext)``, authenticated with ``aad``."""
    nonce = os.urandom(_NONCE_BYTES)
    return _VERSION + nonce + AESGCM(key).encrypt(nonce, plaintext, aad)


def unseal(key: bytes, blob: bytes, aad: bytes) -> bytes:
    """Open :func:`seal` output; one generic error for every failure."""
    opened: bytes | None = None
    if blob[:1] == _VERSION and len(blob) > 1 + _NONCE_BYTES:
        nonce = blob[1 : 1 + _NONCE_BYTES]
        try:
            opened = AESGCM(key).decrypt(nonce, blob[1 + _NONCE_BYTES :], aad)
        except InvalidTag:
            opened = None
    if opened is None:
        raise KeyMaterialError(
            "sealed data cannot be opened by this enclave "
            "(other measurement or host, or the blob was altered)"
        )
    return opened
