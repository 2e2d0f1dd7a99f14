"""The ciphertext batch's wire form: what it names, what it refuses, before any ciphertext is read.

``cipherloop/ckks/batch.py`` is the first check on every ciphertext the enclave
receives; these tests pin its refusals exactly (one error type per reason) with
real ciphertexts under a small real key.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import cbor2
import numpy as np
import pytest

from cipherloop.ckks import CiphertextBatch, CkksParams, SecretContext
from cipherloop.ckks.batch import DEFAULT_MAX_BYTES
from cipherloop.errors import InvalidCiphertext, ParameterMismatch

LAYOUT = {"kind": "samples", "n_samples": 3, "slots": 2048}


@pytest.fixture(scope="module")
def batch(small_key: SecretContext) -> CiphertextBatch:
    cts = [small_key.encrypt(np.full(3, float(i))) for i in range(2)]
    return CiphertextBatch.of(small_key, cts, LAYOUT)


def _doc(batch: CiphertextBatch, **changes: Any) -> bytes:
    doc = cbor2.loads(batch.to_bytes())
    doc.update(changes)
    return bytes(cbor2.dumps({k: v for k, v in doc.items() if v is not None}))


def test_batch_names_its_parameters_key_and_layout(batch: CiphertextBatch,
                                                   small_key: SecretContext) -> None:
    doc = cbor2.loads(batch.to_bytes())
    assert doc == {"format": "cipherloop-ct-batch/v1", "params": small_key.params.digest(),
                   "key_id": small_key.key_id, "layout": LAYOUT, "items": list(batch.items)}
    assert CiphertextBatch.from_bytes(batch.to_bytes()) == batch
    assert DEFAULT_MAX_BYTES == 512 * 1024 * 1024


def test_batch_repr_shows_no_ciphertext(batch: CiphertextBatch, small_key: SecretContext) -> None:
    assert repr(batch) == f"CiphertextBatch(key_id={small_key.key_id!r}, count=2, layout='samples')"


def test_size_limit_is_inclusive(batch: CiphertextBatch) -> None:
    raw = batch.to_bytes()
    assert CiphertextBatch.from_bytes(raw, max_bytes=len(raw)) == batch
    with pytest.raises(InvalidCiphertext, match=f"larger than the {len(raw) - 1}-byte limit"):
        CiphertextBatch.from_bytes(raw, max_bytes=len(raw) - 1)


@pytest.mark.parametrize("changes", [
    {"format": "cipherloop-ct-batch/v0"},
    {"format": "cipherloop-ct-batch/v2"},
    {"format": "zzz"},
    {"format": None},
    {"items": None},
    {"items": b"not a list"},
    {"items": ["a string, not bytes"]},
    {"items": [b"ok", 5]},
    {"layout": None},
    {"layout": ["samples"]},
    {"params": None},
    {"key_id": None},
])
def test_malformed_documents_are_one_clear_error(batch: CiphertextBatch,
                                                 changes: dict[str, Any]) -> None:
    with pytest.raises(InvalidCiphertext) as info:
        CiphertextBatch.from_bytes(_doc(batch, **changes))
    assert type(info.value) is InvalidCiphertext
    assert str(info.value) == "not a ciphertext batch (malformed or truncated)"


@pytest.mark.parametrize("raw", [cbor2.dumps([1, 2]), cbor2.dumps("x"), b"\xff", b""])
def test_non_map_bytes_are_refused(raw: bytes) -> None:
    with pytest.raises(InvalidCiphertext, match="not a ciphertext batch"):
        CiphertextBatch.from_bytes(raw)


def test_empty_item_list_parses(batch: CiphertextBatch, small_key: SecretContext) -> None:
    empty = CiphertextBatch.from_bytes(_doc(batch, items=[]))
    assert empty.items == () and empty.open(small_key) == []


def test_open_checks_parameters_before_the_key(batch: CiphertextBatch, small_key: SecretContext) -> None:
    other_params = SecretContext.generate(CkksParams(4096, (40, 21, 40), 21))
    with pytest.raises(ParameterMismatch, match="other CKKS parameters"):
        batch.open(other_params)
    other_key = SecretContext.generate(small_key.params)
    with pytest.raises(ParameterMismatch, match="another key"):
        batch.open(other_key)
    renamed = CiphertextBatch(batch.params_digest, other_key.key_id, LAYOUT, batch.items)
    with pytest.raises(ParameterMismatch, match="another key"):
        renamed.open(small_key)


def test_open_checks_the_count(batch: CiphertextBatch, small_key: SecretContext) -> None:
    assert len(batch.open(small_key, count=2)) == 2
    for count in (1, 3, 0):
        with pytest.raises(InvalidCiphertext, match=f"expected {count} ciphertexts, got 2"):
            batch.open(small_key, count=count)


def test_count_is_compared_by_value_for_large_batches(batch: CiphertextBatch,
                                                      small_key: SecretContext) -> None:
    many = CiphertextBatch(batch.params_digest, batch.key_id, LAYOUT, (b"not a ciphertext",) * 300)
    with pytest.raises(InvalidCiphertext, match="malformed"):  # the count matched; the bytes did not
        many.open(small_key, count=300)


def test_batch_is_immutable(batch: CiphertextBatch) -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        batch.key_id = "another"  # type: ignore[misc]


def test_open_loads_every_ciphertext_in_order(batch: CiphertextBatch, small_key: SecretContext) -> None:
    values = [small_key.decrypt(ct)[:3] for ct in batch.open(small_key)]
    assert np.allclose(values, [[0.0] * 3, [1.0] * 3], atol=1e-2)  # N=4096: small but noisy


@pytest.mark.parametrize("tail", [b"\x00", b"\xa0", b"x" * 100])
def test_trailing_bytes_after_a_batch_are_refused(batch: CiphertextBatch, tail: bytes) -> None:
    """cbor2 alone would stop after the first item: the tail would travel unseen."""
    with pytest.raises(InvalidCiphertext, match="malformed or truncated"):
        CiphertextBatch.from_bytes(batch.to_bytes() + tail)


def test_digest_is_canonical_and_names_every_part(batch: CiphertextBatch) -> None:
    again = CiphertextBatch.from_bytes(batch.to_bytes())
    assert again.digest() == batch.digest() and len(batch.digest()) == 64
    for changed in (dataclasses.replace(batch, layout={**batch.layout, "n_samples": 2}),
                    dataclasses.replace(batch, items=batch.items[:-1]),
                    dataclasses.replace(batch, key_id="0" * 32)):
        assert changed.digest() != batch.digest()
    reordered = dataclasses.replace(batch, layout=dict(reversed(list(batch.layout.items()))))
    assert reordered.digest() == batch.digest()  # key order is not content
