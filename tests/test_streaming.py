"""Streamed data sets: blocks read from the blob store when a step needs them.

The same ciphertexts streamed or in memory give bit-identical products; a
round's peak memory does not grow with the number of blocks; parallel
encryption gives the same data set as one process.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cipherloop.blobstore import BlobCorrupted, BlobStore
from cipherloop.ckks import CiphertextBatch, PublicContext, SecretContext
from cipherloop.client.data import (
    decrypt_model,
    encrypt_batches,
    encrypt_model,
    encrypt_to_store,
)
from cipherloop.errors import ParameterMismatch
from cipherloop.learn import EnclaveProcess, EncryptedDataset, RefineConfig, kernels, refine
from cipherloop.learn.dataset import StreamedDataset, store_blocks
from cipherloop.learn.engine import LocalEngine
from cipherloop.learn.reference import PlainModel, plain_refine

TESTS = Path(__file__).parent


def _data(n: int, d: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)) / np.sqrt(d)
    y = (X @ rng.normal(size=d) + 0.1 * rng.normal(size=n) > 0).astype(np.float64)
    return X, y


def _wire(b: CiphertextBatch) -> CiphertextBatch:
    return CiphertextBatch.from_bytes(b.to_bytes())


@pytest.fixture(scope="module")
def three_blocks(owner_key: SecretContext) -> tuple[CiphertextBatch, CiphertextBatch]:
    """10,000 samples x 20 features: two full blocks and a partial one."""
    f, y = encrypt_batches(owner_key, *_data(10_000, 20, seed=1))
    return _wire(f), _wire(y)


def test_streamed_blocks_give_bit_identical_products(
        tmp_path: Path, owner_key: SecretContext, host_context: PublicContext,
        three_blocks: tuple[CiphertextBatch, CiphertextBatch]) -> None:
    f, y = three_blocks
    memory = EncryptedDataset.from_batches(host_context, f, y)
    store = BlobStore(tmp_path)
    streamed = StreamedDataset.open(host_context, store, store_blocks(host_context, store, f, y))
    assert streamed.layout == memory.layout and streamed.level == memory.level
    w = host_context.encrypt(memory.layout.model.pack(np.linspace(-1, 1, 20)))
    b = host_context.encrypt(np.full(4096, 0.25))
    blocks = [0, 1, 2]
    engine = LocalEngine(host_context, working_set=1)  # one block resident at a time
    z_mem = LocalEngine(host_context).logits(memory, w, b, blocks)
    z_str = engine.logits(streamed, w, b, blocks)
    assert [z.to_bytes() for z in z_mem] == [z.to_bytes() for z in z_str]
    errors = np.random.default_rng(2).normal(size=10_000) * 0.01
    e = CiphertextBatch.of(owner_key, [owner_key.encrypt(a, level=memory.level)
                                       for a in memory.layout.pack_errors(errors)],
                           memory.layout.describe())
    g_str = engine.gradient(streamed, e, blocks)
    g_old = kernels.fold_replicas(kernels.gradient_partial(
        memory.features, e.open(host_context), memory.layout, blocks), memory.layout)
    assert g_str.to_bytes() == g_old.to_bytes()
    # Passes alternate direction: the gradient pass starts on the block logits ended on.
    assert engine.block_loads == 3 + 2
    got = memory.layout.model.unpack(owner_key.decrypt(g_str))
    X, _ = _data(10_000, 20, seed=1)
    np.testing.assert_allclose(got, X.T @ errors, atol=1e-3)
    assert [owner_key.decrypt(c)[0] for c in streamed.labels[1:3]] == pytest.approx(
        [owner_key.decrypt(c)[0] for c in memory.labels[1:3]], abs=1e-6)


def test_blocks_refuse_another_key(tmp_path: Path, other_key: SecretContext,
                                   host_context: PublicContext,
                                   three_blocks: tuple[CiphertextBatch, CiphertextBatch]) -> None:
    store = BlobStore(tmp_path)
    manifest = store_blocks(host_context, store, *three_blocks)
    with pytest.raises(ParameterMismatch):
        StreamedDataset.open(other_key.public_context(), store, manifest)
    with pytest.raises(ParameterMismatch):
        store_blocks(other_key.public_context(), store, *three_blocks)


def test_a_corrupted_block_is_refused(tmp_path: Path, host_context: PublicContext,
                                      three_blocks: tuple[CiphertextBatch, CiphertextBatch]) -> None:
    store = BlobStore(tmp_path)
    data = StreamedDataset.open(host_context, store, store_blocks(host_context, store,
                                                                  *three_blocks))
    path = store.path(data.feature_blocks[1])
    raw = bytearray(path.read_bytes())
    raw[-10] ^= 1
    path.write_bytes(bytes(raw))
    assert len(data.block(0)) == data.layout.period
    with pytest.raises(BlobCorrupted):
        data.block(1)


def test_streamed_training_matches_plaintext(tmp_path: Path, owner_key: SecretContext,
                                             host_context: PublicContext,
                                             enclave: EnclaveProcess) -> None:
    X, y = _data(5000, 12, seed=3)
    store = BlobStore(tmp_path)
    data = encrypt_to_store(owner_key, X, y, store, n_jobs=2).under(host_context)
    config = RefineConfig(learning_rate=1.0, momentum=0.9, batch_size=None, epochs=4)
    model = encrypt_model(host_context, np.zeros(12), 0.0)
    trained, stats = refine(model, [data], config, context=host_context, enclave=enclave.client,
                            engine=LocalEngine(host_context, working_set=1))
    w, b = decrypt_model(owner_key, trained)
    ref = plain_refine(PlainModel(np.zeros(12)), [(X, y)], config)
    assert np.abs(w - ref.coef).max() < 1e-2 and abs(b - ref.intercept) < 1e-2
    assert stats.steps == 4


def test_parallel_encryption_gives_the_same_data_set(owner_key: SecretContext) -> None:
    X, y = _data(9000, 20, seed=4)
    one = encrypt_batches(owner_key, X, y, n_jobs=1)
    two = encrypt_batches(owner_key, X, y, n_jobs=2)
    assert one[0].layout == two[0].layout and one[1].layout == two[1].layout
    assert len(one[0].items) == len(two[0].items) and len(one[1].items) == len(two[1].items)
    for a, b in [(one[0].items[i], two[0].items[i]) for i in (0, 31, 32, 95)]:
        va = owner_key.decrypt(owner_key.load_ciphertext(a))
        vb = owner_key.decrypt(owner_key.load_ciphertext(b))
        np.testing.assert_allclose(va, vb, atol=1e-6)
    assert one[0].items[0] != two[0].items[0]  # fresh randomness, same values


def _peak(tmp: Path, key: SecretContext, enclave: EnclaveProcess, n: int, working_set: int,
          ) -> dict[str, float]:
    store = BlobStore(tmp / f"store-{n}")
    f, y = encrypt_batches(key, *_data(n, 128, seed=5))
    public = key.public_context()
    manifest = store_blocks(public, store, f, y)
    ctx_file = tmp / "context.bin"
    ctx_file.write_bytes(public.serialize())
    out = subprocess.run([sys.executable, str(TESTS / "streamkit.py"), str(ctx_file),
                          str(store.root), manifest, str(enclave.socket_path), str(working_set)],
                         capture_output=True, text=True, timeout=300, check=True)
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


@pytest.mark.slow
def test_peak_memory_of_a_streamed_round_does_not_grow_with_blocks(
        tmp_path: Path, owner_key: SecretContext, enclave: EnclaveProcess) -> None:
    # 128 features: a block is 128 ciphertexts, tens of MB loaded. 2 blocks against 6, one
    # block per step (the enclave's error batch grows with the step's blocks, not the data's).
    small = _peak(tmp_path, owner_key, enclave, 2 * 4096, working_set=1)
    large = _peak(tmp_path, owner_key, enclave, 6 * 4096, working_set=1)
    kept = _peak(tmp_path, owner_key, enclave, 6 * 4096, working_set=1 << 34)
    assert small["blocks"] == 2 and large["blocks"] == 6
    assert large["loads"] == 12  # streamed: read again in the second epoch, not kept
    assert kept["loads"] == 6
    # Holding every block costs four blocks more (the probe can see growth); streaming must not.
    assert kept["peak_mib"] - small["peak_mib"] > 100, (small, kept)
    assert large["peak_mib"] - small["peak_mib"] < 40, (small, large)
