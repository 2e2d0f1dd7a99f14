"""RayEngine on a real local Ray cluster (a head and a second node, started here).

Same ciphertexts, same products as the local engine; a worker killed
mid-round is replaced and the round completes. Slow: Ray takes seconds to start.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading

import numpy as np
import pytest

from cipherloop.blobstore import BlobStore
from cipherloop.ckks import Ciphertext, CiphertextBatch, PublicContext, SecretContext
from cipherloop.client.data import decrypt_model, encrypt_model, encrypt_to_store
from cipherloop.errors import EngineUnavailable, ShapeError
from cipherloop.learn import EnclaveProcess, RefineConfig, refine
from cipherloop.learn.dataset import Dataset, StreamedDataset
from cipherloop.learn.engine import LocalEngine
from cipherloop.learn.reference import PlainModel, plain_refine

pytest.importorskip("ray")

pytestmark = pytest.mark.slow


def _data(n: int, d: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)) / np.sqrt(d)
    return X, (X @ rng.normal(size=d) > 0).astype(np.float64)


@pytest.fixture(scope="module")
def streamed(tmp_path_factory: pytest.TempPathFactory, owner_key: SecretContext,
             host_context: PublicContext) -> StreamedDataset:
    """9,000 samples x 12 features: three blocks, so both actors own some."""
    store = BlobStore(tmp_path_factory.mktemp("blobs"))
    return encrypt_to_store(owner_key, *_data(9000, 12, seed=1), store).under(host_context)


class _Lockstep:
    """Runs both engines on every call and checks they agree; the loop goes on with Ray's."""

    def __init__(self, local: LocalEngine, ray_engine: object, key: SecretContext) -> None:
        self.local, self.ray, self.key = local, ray_engine, key
        self.worst = 0.0
        self.calls = 0

    def _same(self, a: Ciphertext, b: Ciphertext) -> None:
        assert a.to_bytes() == b.to_bytes()
        self.worst = max(self.worst, float(np.abs(self.key.decrypt(a) - self.key.decrypt(b)).max()))
        self.calls += 1

    def logits(self, data: Dataset, u_w: Ciphertext, u_b: Ciphertext | None,
               blocks: list[int]) -> list[Ciphertext]:
        mine = self.local.logits(data, u_w, u_b, blocks)
        theirs = self.ray.logits(data, u_w, u_b, blocks)  # type: ignore[attr-defined]
        for a, b in zip(mine, theirs, strict=True):
            self._same(a, b)
        return list(theirs)

    def gradient(self, data: Dataset, errors: CiphertextBatch, blocks: list[int]) -> Ciphertext:
        mine = self.local.gradient(data, errors, blocks)
        theirs: Ciphertext = self.ray.gradient(data, errors, blocks)  # type: ignore[attr-defined]
        self._same(mine, theirs)
        return theirs

    def close(self) -> None:
        pass


def test_ray_and_local_engines_give_the_same_model(
        ray_cluster: str, streamed: StreamedDataset, owner_key: SecretContext,
        host_context: PublicContext, enclave: EnclaveProcess) -> None:
    from cipherloop.learn.ray_engine import RayEngine
    engine = RayEngine(n_workers=2).connect()
    try:
        both = _Lockstep(LocalEngine(host_context, working_set=1), engine, owner_key)
        config = RefineConfig(learning_rate=1.0, momentum=0.9, batch_size=5000, epochs=2)
        model = encrypt_model(host_context, np.zeros(12), 0.0)
        trained, stats = refine(model, [streamed], config, context=host_context,
                                enclave=enclave.client, engine=both)
        assert both.calls == 4 * (2 + 1)  # 4 steps of two blocks: two z and one gradient each
        assert both.worst <= 1e-9
        # Each step ran on both actors, the reduction moved partials between them.
        assert engine.partial_bytes_between_workers() > 0
        assert engine.traffic.steps == stats.steps == 4
        w, b = decrypt_model(owner_key, trained)
        X, y = _data(9000, 12, seed=1)
        ref = plain_refine(PlainModel(np.zeros(12)), [(X, y)], config)
        assert np.abs(w - ref.coef).max() < 1e-2 and abs(b - ref.intercept) < 1e-2
    finally:
        engine.close()


def test_a_killed_ray_worker_is_replaced_and_the_round_completes(
        ray_cluster: str, streamed: StreamedDataset, owner_key: SecretContext,
        host_context: PublicContext, enclave: EnclaveProcess) -> None:
    from cipherloop.learn.ray_engine import RayEngine
    engine = RayEngine(n_workers=2).connect()
    victim = engine.worker_pids()[1]
    killed = threading.Event()

    def kill_during_next_step(done: int, total: int) -> None:
        if done == 1:  # the next step's products are on their way when the signal lands
            threading.Timer(0.05, lambda: (os.kill(victim, signal.SIGKILL), killed.set())).start()

    try:
        config = RefineConfig(learning_rate=1.0, momentum=0.0, batch_size=None, epochs=3)
        model = encrypt_model(host_context, np.zeros(12), 0.0)
        trained, stats = refine(model, [streamed], config, context=host_context,
                                enclave=enclave.client, engine=engine, on_step=kill_during_next_step)
        assert killed.wait(5)
        assert victim not in engine.worker_pids()  # a new process took its blocks
        assert stats.steps == 3
        w, b = decrypt_model(owner_key, trained)
        X, y = _data(9000, 12, seed=1)
        ref = plain_refine(PlainModel(np.zeros(12)), [(X, y)], config)
        assert np.abs(w - ref.coef).max() < 1e-2  # every block still counted
    finally:
        engine.close()


def test_in_memory_data_is_refused(ray_cluster: str, host_context: PublicContext,
                                   owner_key: SecretContext) -> None:
    from cipherloop.client.data import encrypt_dataset
    from cipherloop.learn.ray_engine import RayEngine
    data = encrypt_dataset(owner_key, *_data(100, 4, seed=2))
    w = host_context.encrypt(np.zeros(4096))
    with pytest.raises(ShapeError):
        RayEngine(n_workers=1).logits(data, w, None, [0])


def test_unreachable_cluster_is_a_clear_error() -> None:
    # A fresh process: this one may already have joined the test cluster.
    code = ("from cipherloop.learn.ray_engine import RayEngine\n"
            "RayEngine(address='127.0.0.1:9', connect_timeout=1).connect()\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    assert "EngineUnavailable: no Ray cluster is reachable at 127.0.0.1:9" in out.stderr


def test_a_worker_lost_for_good_abandons_the_round_and_the_next_one_starts_fresh(
        ray_cluster: str, streamed: StreamedDataset, host_context: PublicContext,
        enclave: EnclaveProcess) -> None:
    from cipherloop.learn.ray_engine import RayEngine
    engine = RayEngine(n_workers=2, max_restarts=0).connect()
    try:
        os.kill(engine.worker_pids()[0], signal.SIGKILL)
        model = encrypt_model(host_context, np.zeros(12), 0.0)
        config = RefineConfig(momentum=0.0, epochs=1)
        with pytest.raises(EngineUnavailable, match="lost"):
            refine(model, [streamed], config, context=host_context, enclave=enclave.client,
                   engine=engine)
        _, stats = refine(model, [streamed], config, context=host_context,
                          enclave=enclave.client, engine=engine)  # a fresh set of actors
        assert stats.steps == 1 and len(engine.worker_pids()) == 2
    finally:
        engine.close()


def test_estimator_on_ray_learns_what_the_local_one_learns(ray_cluster: str) -> None:
    from cipherloop.client.estimator import EncryptedLogisticRegression
    X, y = _data(300, 5, seed=7)
    fitted = []
    for engine in ("local", "ray"):
        clf = EncryptedLogisticRegression(max_iter=3, engine=engine, n_jobs=2)
        try:
            fitted.append(clf.fit(X, y))
        finally:
            clf.close()
    local, on_ray = fitted
    np.testing.assert_allclose(on_ray.coef_, local.coef_, atol=1e-3)
    assert on_ray.score(X, y) > 0.9
