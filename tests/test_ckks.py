"""CKKS engine: contexts, exact scales, serialisation with identity, layouts."""

from __future__ import annotations

import numpy as np
import pytest

from cipherloop.ckks import (
    CiphertextBatch,
    CkksParams,
    Diagonals,
    PublicContext,
    Replicated,
    SampleBlocks,
    SecretContext,
    inner,
    preset,
)
from cipherloop.errors import InvalidCiphertext, KeyMaterialError, ParameterMismatch, ShapeError

SLOTS = 4096
rng = np.random.default_rng(1)


def test_presets_are_128_bit_and_distinct() -> None:
    a, b = preset("n8192"), preset("n16384")
    assert a.slots == 4096 and b.slots == 8192
    assert a.digest() != b.digest()
    with pytest.raises(ValueError):
        CkksParams(8192, (60, 60, 60, 60), 40)  # 240 bits > 218: below 128-bit security
    with pytest.raises(ValueError, match="unknown CKKS preset"):
        preset("n1024")


def test_public_context_cannot_decrypt(host_context: PublicContext) -> None:
    assert not hasattr(host_context, "decrypt")
    assert not host_context.backend.can_decrypt()
    ct = host_context.encrypt([1.0, 2.0])
    with pytest.raises(KeyMaterialError):
        host_context.backend.decrypt(ct.handle)


def test_public_serialisation_holds_no_secret(owner_key: SecretContext) -> None:
    blob = owner_key.public_context().serialize()
    secret = owner_key.backend.key_bytes(secret=True)["secret_key"]
    assert secret not in blob
    with pytest.raises(KeyMaterialError):
        SecretContext.load_secret(blob)
    assert "secret=<redacted>" in repr(owner_key)


def test_secret_round_trip_decrypts_host_ciphertexts(owner_key: SecretContext,
                                                     host_context: PublicContext) -> None:
    again = SecretContext.load_secret(owner_key.export_secret())
    x = rng.standard_normal(SLOTS)
    assert np.abs(again.decrypt(host_context.encrypt(x)) - x).max() < 1e-5
    assert again.key_id == host_context.key_id


def test_corrupted_key_file_is_refused(owner_key: SecretContext) -> None:
    blob = bytearray(owner_key.public_context().serialize()[:5000])
    with pytest.raises(KeyMaterialError):
        PublicContext.load(bytes(blob))


def test_secret_key_paired_with_another_public_key_is_refused(owner_key: SecretContext,
                                                             other_key: SecretContext) -> None:
    # The key id names the public key: a file pairing owner_key's public key with
    # another secret key would otherwise load (and be installed) under owner_key's id.
    from cipherloop.ckks.context import _pack

    mine, theirs = owner_key.backend.key_bytes(secret=True), other_key.backend.key_bytes(secret=True)
    forged = _pack("secret", owner_key.params, owner_key.key_id,
                   {"public_key": mine["public_key"], "secret_key": theirs["secret_key"]})
    with pytest.raises(KeyMaterialError, match="does not match its public key"):
        SecretContext.load_secret(forged)


def test_products_and_scalar_products_keep_exact_scale(owner_key: SecretContext,
                                                       host_context: PublicContext) -> None:
    x, y = rng.standard_normal(SLOTS), rng.standard_normal(SLOTS)
    a, b = host_context.encrypt(x), host_context.encrypt(y)
    assert a.times(0.9).scale == a.scale  # encoded at the dropped prime: scale unchanged
    prod = inner([a, b], [b, a])
    assert np.abs(owner_key.decrypt(prod) - 2 * x * y).max() < 1e-4
    assert prod.level == a.level - 1
    assert np.abs(owner_key.decrypt(a.rotate(1)) - np.roll(x, -1)).max() < 1e-4
    assert np.abs(owner_key.decrypt(a.rotate(-1)) - np.roll(x, 1)).max() < 1e-4
    mixed = a.times(0.5) + b  # different levels: aligned automatically
    assert np.abs(owner_key.decrypt(mixed) - (0.5 * x + y)).max() < 1e-4


def test_batch_refuses_other_key_and_parameters(owner_key: SecretContext, other_key: SecretContext,
                                                host_context: PublicContext) -> None:
    batch = CiphertextBatch.of(host_context, [host_context.encrypt([1.0])], {"kind": "x"})
    raw = batch.to_bytes()
    with pytest.raises(ParameterMismatch, match="another key"):
        CiphertextBatch.from_bytes(raw).open(other_key)
    foreign = CiphertextBatch(preset("n16384").digest(), batch.key_id, batch.layout, batch.items)
    with pytest.raises(ParameterMismatch, match="other CKKS parameters"):
        foreign.open(owner_key)
    assert CiphertextBatch.from_bytes(raw).open(owner_key, count=1)


@pytest.mark.parametrize("mangle", [
    lambda raw: raw[: len(raw) // 2],  # truncated
    lambda raw: b"\x00" * 64,  # garbage
    lambda raw: b"",  # empty
])
def test_batch_refuses_malformed_bytes(host_context: PublicContext, mangle: object) -> None:
    raw = CiphertextBatch.of(host_context, [host_context.encrypt([1.0])], {"kind": "x"}).to_bytes()
    with pytest.raises(InvalidCiphertext):
        CiphertextBatch.from_bytes(mangle(raw))  # type: ignore[operator]


def test_batch_size_limit(host_context: PublicContext) -> None:
    raw = CiphertextBatch.of(host_context, [host_context.encrypt([1.0])], {"kind": "x"}).to_bytes()
    with pytest.raises(InvalidCiphertext, match="limit"):
        CiphertextBatch.from_bytes(raw, max_bytes=1000)


def test_ciphertext_bytes_from_other_parameters_are_refused(host_context: PublicContext) -> None:
    big = SecretContext.generate(preset("n16384"))
    with pytest.raises(InvalidCiphertext):
        host_context.load_ciphertext(big.encrypt([1.0]).to_bytes())
    good = host_context.encrypt([1.0]).to_bytes()
    with pytest.raises(InvalidCiphertext):
        host_context.load_ciphertext(good[:-100])


def _rot(v: np.ndarray, k: int) -> np.ndarray:
    return np.roll(v, -k)


@pytest.mark.parametrize("n,d,slots", [(100, 30, 256), (1000, 64, 256), (70, 5, 64), (300, 1, 64)])
def test_diagonal_layout_algebra(n: int, d: int, slots: int) -> None:
    """The packing identities the kernels rely on, checked on plaintext slot vectors."""
    L = Diagonals.plan(n, d, slots)
    X, w, e = rng.standard_normal((n, d)), rng.standard_normal(d), rng.standard_normal(n)
    Y, W = L.pack(X), L.model.pack(w)
    w_rot = [_rot(W, b1) for b1 in range(L.baby)]
    z = []
    for c in range(L.n_blocks):
        acc = np.zeros(slots)
        for b2 in reversed(range(L.giant)):
            part = sum(Y[L.index(c, b1, b2)] * w_rot[b1] for b1 in range(L.baby))
            acc = _rot(acc, L.baby) + part
        z.append(acc)
    assert np.allclose(L.samples.unpack(z), X @ w)
    E = L.pack_errors(e)
    acc = np.zeros(slots)
    for b1 in reversed(range(L.baby)):
        part = sum(Y[L.index(c, b1, b2)] * E[c * L.giant + b2]
                   for c in range(L.n_blocks) for b2 in range(L.giant))
        acc = _rot(acc, -1) + part
    k = L.period
    while k < slots:
        acc = acc + _rot(acc, k)
        k *= 2
    assert np.allclose(L.model.unpack(acc), X.T @ e)
    assert set(L.rotations()) >= {1, slots - 1}


def test_layout_shape_errors() -> None:
    with pytest.raises(ShapeError):
        Diagonals.plan(10, 3, 64).pack(np.zeros((10, 4)))
    with pytest.raises(ShapeError):
        SampleBlocks(10, 64).pack(np.zeros(9))
    with pytest.raises(ShapeError):
        Replicated(3, 4, 64).pack(np.zeros(5))
    with pytest.raises(ShapeError):
        Diagonals.plan(10, 100, 64)  # more features than slots


@pytest.mark.parametrize("n,d", [(5, 3), (4096, 64), (5000, 20), (70, 33)])
def test_diagonals_unpack_inverts_pack(n: int, d: int) -> None:
    from cipherloop.ckks import Diagonals

    X = np.random.default_rng(n + d).standard_normal((n, d))
    layout = Diagonals.plan(n, d, 4096)
    assert np.array_equal(layout.unpack(layout.pack(X)), X)
