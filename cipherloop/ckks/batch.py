"""The wire form of a list of ciphertexts: bytes that say what they are.

Runs in: owner, host and enclave. A batch names the parameter digest and the
key id it was made under, and the slot layout of its ciphertexts, so a
receiver refuses a batch made for other parameters or another key before it
touches a single ciphertext -- instead of decrypting to garbage.
"""

from __future__ import annotations

import hashlib
import hmac
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import cbor2

from ..errors import InvalidCiphertext, ParameterMismatch
from .vector import Ciphertext

_FORMAT = "cipherloop-ct-batch/v1"
DEFAULT_MAX_BYTES = 512 * 1024 * 1024



def cbor_one(data: bytes) -> Any:
    """Decode exactly one CBOR item; ``ValueError`` on anything else, trailing bytes included.

    ``cbor2.loads`` stops after the first item and ignores the rest, so bytes
    after a valid item would travel (and be hashed) unseen.
    """
    fp = io.BytesIO(data)
    try:
        doc = cbor2.CBORDecoder(fp).decode()
    except Exception:
        raise ValueError("not one CBOR item") from None
    if fp.tell() != len(data):
        raise ValueError("trailing bytes after the CBOR item")
    return doc


@dataclass(frozen=True)
class CiphertextBatch:
    """Serialised ciphertexts plus the identity of the keys and layout they belong to."""

    params_digest: str
    key_id: str
    layout: dict[str, Any]
    items: tuple[bytes, ...] = field(repr=False)

    def __repr__(self) -> str:
        return (f"CiphertextBatch(key_id={self.key_id!r}, count={len(self.items)}, "
                f"layout={self.layout.get('kind')!r})")

    @classmethod
    def of(cls, context: Any, cts: Sequence[Ciphertext], layout: dict[str, Any]) -> CiphertextBatch:
        return cls(context.params.digest(), context.key_id, dict(layout),
                   tuple(c.to_bytes() for c in cts))

    def to_bytes(self) -> bytes:
        return bytes(cbor2.dumps({
            "format": _FORMAT,
            "params": self.params_digest,
            "key_id": self.key_id,
            "layout": self.layout,
            "items": list(self.items),
        }))

    @classmethod
    def from_bytes(cls, data: bytes, *, max_bytes: int = DEFAULT_MAX_BYTES) -> CiphertextBatch:
        """Parse, refusing oversized, truncated or malformed input with one clear error."""
        if len(data) > max_bytes:
            raise InvalidCiphertext(f"ciphertext batch larger than the {max_bytes}-byte limit")
        try:
            doc = cbor_one(data)
            if not isinstance(doc, dict) or doc.get("format") != _FORMAT:
                raise ValueError
            items = doc["items"]
            layout = doc["layout"]
            if not isinstance(items, list) or not all(isinstance(b, bytes) for b in items):
                raise ValueError
            if not isinstance(layout, dict):
                raise ValueError
            return cls(str(doc["params"]), str(doc["key_id"]), layout, tuple(items))
        except Exception:
            raise InvalidCiphertext("not a ciphertext batch (malformed or truncated)") from None

    def digest(self) -> str:
        """SHA-256 of the batch's canonical encoding: what an owner pins (e.g. its hold-out set).

        Canonical CBOR, so a batch parsed and re-serialised by the host keeps its digest.
        """
        doc = {"format": _FORMAT, "params": self.params_digest, "key_id": self.key_id,
               "layout": self.layout, "items": list(self.items)}
        return hashlib.sha256(cbor2.dumps(doc, canonical=True)).hexdigest()

    def check(self, context: Any) -> None:
        """Refuse a batch made under other parameters or another key."""
        if not hmac.compare_digest(self.params_digest, context.params.digest()):
            raise ParameterMismatch("ciphertexts were made under other CKKS parameters")
        if not hmac.compare_digest(self.key_id, context.key_id):
            raise ParameterMismatch("ciphertexts were made under another key")

    def open(self, context: Any, *, count: int | None = None) -> list[Ciphertext]:
        """Check identity (and count), then load every ciphertext."""
        self.check(context)
        if count is not None and len(self.items) != count:
            raise InvalidCiphertext(f"expected {count} ciphertexts, got {len(self.items)}")
        return [context.load_ciphertext(b) for b in self.items]
