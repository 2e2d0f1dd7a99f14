"""A multiclass step's classes shared over forked helpers: identical ciphertexts, counts, results."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_wine
from sklearn.preprocessing import StandardScaler

from cipherloop.ckks import CiphertextBatch, PublicContext, SecretContext
from cipherloop.client.data import encrypt_dataset
from cipherloop.client.network import decrypt_network, encrypt_network, initial_network
from cipherloop.learn import EnclaveProcess, EncryptedDataset, RefineConfig, refine
from cipherloop.learn.fanout import (
    ClassFanout,
    SerialClasses,
    class_runner,
    resolve_jobs,
    shares,
    window_features,
)


def _wine(n: int = 120) -> tuple[np.ndarray, np.ndarray]:
    X, y = load_wine(return_X_y=True)
    order = np.random.default_rng(0).permutation(len(y))
    return StandardScaler().fit_transform(X)[order][:n] / 2.0, y[order][:n].astype(np.float64)


def _host_data(owner: SecretContext, host: PublicContext, lanes: int = 1) -> EncryptedDataset:
    X, y = _wine()
    f, lab = encrypt_dataset(owner, X, y, n_classes=3, lanes=lanes).to_batches(owner)
    return EncryptedDataset.from_batches(host, CiphertextBatch.from_bytes(f.to_bytes()),
                                         CiphertextBatch.from_bytes(lab.to_bytes()))


@pytest.fixture
def forking(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fork even though this test process runs other threads (earlier tests' servers).

    The helpers only run kernels on inherited ciphertexts and take no lock those
    threads could hold; production code keeps the single-thread rule
    (:func:`test_no_helpers_where_forking_is_unsafe`).
    """
    monkeypatch.setattr("cipherloop.learn.fanout.fork_context",
                        lambda: multiprocessing.get_context("fork"))


@pytest.mark.parametrize(("n", "parts", "sizes"), [
    (10, 2, [5, 5]), (10, 3, [3, 3, 4]), (3, 8, [1, 1, 1]), (1, 2, [1]), (7, 1, [7]),
])
def test_shares_cut_every_class_once(n: int, parts: int, sizes: list[int]) -> None:
    cut = shares(n, parts)
    assert [len(r) for r in cut] == sizes
    assert [i for r in cut for i in r] == list(range(n))


def test_jobs_follow_scikit_learns_convention(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("os.cpu_count", lambda: 8)
    assert [resolve_jobs(j) for j in (None, 0, 1, 3, -1, -2, -20)] == [1, 1, 1, 3, 8, 7, 1]


@pytest.mark.parametrize("n_jobs", [2, 3])
@pytest.mark.usefixtures("forking")
def test_helpers_return_the_serial_ciphertexts_bit_for_bit(
        owner_key: SecretContext, host_context: PublicContext, n_jobs: int) -> None:
    data = _host_data(owner_key, host_context, lanes=4)
    layout, blocks = data.layout, [0]
    rng = np.random.default_rng(5)
    weights = [host_context.encrypt(layout.model.pack(rng.normal(size=13) / 4)) for _ in range(3)]
    bias = [host_context.encrypt(np.full(host_context.params.slots, 0.1 * k)) for k in range(3)]
    errors = [CiphertextBatch.of(host_context, [host_context.encrypt(a, level=data.level)
                                                for a in layout.pack_errors(rng.normal(size=120))],
                                 {"kind": "errors"}).to_bytes() for _ in range(3)]
    feats = window_features(data, blocks)
    serial = SerialClasses(host_context)
    fan = class_runner(host_context, [data], n_jobs)
    assert isinstance(fan, ClassFanout)
    try:
        before = dict(host_context.backend.counts)
        z = fan.products(data, blocks, feats, weights, bias)
        g = fan.gradients(data, blocks, feats, errors)
        fanned = {k: v - before.get(k, 0) for k, v in host_context.backend.counts.items()}
    finally:
        fan.close()
    before = dict(host_context.backend.counts)
    z_ref = serial.products(data, blocks, feats, weights, bias)
    g_ref = serial.gradients(data, blocks, feats, errors)
    counted = {k: v - before.get(k, 0) for k, v in host_context.backend.counts.items()}
    assert [[c.to_bytes() for c in zk] for zk in z] == [[c.to_bytes() for c in zk] for zk in z_ref]
    assert [c.to_bytes() for c in g] == [c.to_bytes() for c in g_ref]
    assert {k: v for k, v in fanned.items() if v} == {k: v for k, v in counted.items() if v}


@pytest.mark.usefixtures("forking")
def test_a_refinement_on_two_processes_matches_one(
        owner_key: SecretContext, host_context: PublicContext, enclave: EnclaveProcess) -> None:
    data = _host_data(owner_key, host_context, lanes=16)
    probe = class_runner(host_context, [data], 2)
    probe.close()
    assert isinstance(probe, ClassFanout)  # the run with n_jobs=2 below forks a helper
    start = encrypt_network(host_context, initial_network("softmax", 13, 3))
    runs = {}
    for jobs in (1, 2):
        config = RefineConfig(learning_rate=1.0, momentum=0.9, batch_size=40, epochs=1, n_jobs=jobs)
        model, stats = refine(start, [data], config, context=host_context, enclave=enclave.client)
        runs[jobs] = decrypt_network(owner_key, model), stats
    (one, s1), (two, s2) = runs[1], runs[2]
    assert s1.ops == s2.ops and s1.steps == s2.steps == 3
    for name, w in one.weights.items():  # the enclave's fresh encryptions differ, nothing else
        assert np.abs(two.weights[name] - w).max() < 1e-4, name


def test_no_helpers_where_forking_is_unsafe(host_context: PublicContext) -> None:
    """A process running another thread (a server, a Ray driver) keeps its steps serial."""
    stop = threading.Event()
    other = threading.Thread(target=stop.wait)
    other.start()
    try:
        runner = class_runner(host_context, [], 2)
    finally:
        stop.set()
        other.join()
    assert isinstance(runner, SerialClasses)
    assert isinstance(class_runner(host_context, [], 1), SerialClasses)


_DRIVER = """
import multiprocessing, os, sys, time
from cipherloop.ckks import SecretContext, preset
from cipherloop.learn.fanout import ClassFanout
ctx = SecretContext.generate(preset("n8192"), [1]).public_context()
fan = ClassFanout(ctx, [], 2, multiprocessing.get_context("fork"))
print(fan._pool.submit(os.getpid).result(), flush=True)
time.sleep(600)
"""


def test_helpers_die_with_a_driver_killed_by_sigkill() -> None:
    """kill -9 of the driver runs no shutdown; the helper must not outlive it."""
    driver = subprocess.Popen([sys.executable, "-c", _DRIVER], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    helper = 0
    try:
        assert driver.stdout is not None
        helper = int(driver.stdout.readline())
        assert _alive(helper)
        driver.send_signal(signal.SIGKILL)
        driver.wait(timeout=30)
        deadline = time.monotonic() + 20
        while _alive(helper) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(helper)
    finally:
        driver.kill()
        driver.wait()
        if helper and _alive(helper):  # a failing run leaves no orphan behind
            os.kill(helper, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1][0] != "Z"  # a zombie has exited
    except FileNotFoundError:
        return False
