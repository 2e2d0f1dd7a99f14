"""The service's ciphertext store: :mod:`cipherloop.blobstore`, under its old name.

Runs in: host. The store moved out of ``cloud`` so the learning engines (and
their Ray workers) can read data blocks by content address without importing
the service; this module keeps ``cloud``'s imports unchanged.
"""

from ..blobstore import BlobCorrupted, BlobStore, sha256_hex

__all__ = ["BlobCorrupted", "BlobStore", "sha256_hex"]
