"""Shared fixtures: keys are slow to make (about a second), so tests share them per session."""

from __future__ import annotations

import sys
from collections.abc import Iterator

import numpy as np
import pytest
from enclavekit import provision_sim
from realparts import under_ci

from cipherloop.ckks import CkksParams, PublicContext, SecretContext, preset, rotations_for_features
from cipherloop.learn import EnclaveProcess


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Under CI, "no tests collected" (exit 5) is a failure: a run that tested nothing is not green."""
    if under_ci() and exitstatus == pytest.ExitCode.NO_TESTS_COLLECTED:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
        print("\nCI=true: no tests were collected; check the test paths and -k/-m selection",
              file=sys.stderr)


@pytest.fixture(scope="session")
def breast_cancer() -> tuple[np.ndarray, np.ndarray]:
    # Imported here: scikit-learn takes a second to import, and most test runs need no data set.
    from sklearn.datasets import load_breast_cancer
    from sklearn.preprocessing import StandardScaler

    X, y = load_breast_cancer(return_X_y=True)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(y))
    return StandardScaler().fit_transform(X)[order], y[order].astype(np.float64)


@pytest.fixture(scope="session")
def small_key() -> SecretContext:
    """A real but small CKKS key (N=4096): enough to provision, fast to make."""
    return SecretContext.generate(CkksParams(4096, (40, 20, 40), 20))


@pytest.fixture(scope="session")
def owner_key() -> SecretContext:
    """The owner's key, with Galois keys for up to 32 features."""
    return SecretContext.generate(preset("n8192"), rotations_for_features(32, 4096))


@pytest.fixture(scope="session")
def other_key() -> SecretContext:
    """Another owner's key under the same parameters."""
    return SecretContext.generate(preset("n8192"), rotations_for_features(32, 4096))


@pytest.fixture(scope="session")
def host_context(owner_key: SecretContext) -> PublicContext:
    """What the host holds: the public context, round-tripped through bytes."""
    return PublicContext.load(owner_key.public_context().serialize())


@pytest.fixture(scope="session")
def enclave(owner_key: SecretContext) -> Iterator[EnclaveProcess]:
    """A real enclave process, provisioned with the owner's key by the attested protocol."""
    with EnclaveProcess() as proc:
        provision_sim(proc, owner_key)
        yield proc


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[str]:
    """A real local Ray cluster for the tests that ask: a head and one more worker node.

    One CPU and a small object store each (CPU is scarce); this process joins
    it, and everything is stopped at the end of the session. Tests that need
    no Ray never start it.
    """
    ray = pytest.importorskip("ray")
    cluster_utils = pytest.importorskip("ray.cluster_utils")
    store = 100 * 1024 * 1024
    cluster = cluster_utils.Cluster(initialize_head=True,
                                    head_node_args={"num_cpus": 1, "object_store_memory": store})
    cluster.add_node(num_cpus=1, object_store_memory=store)
    ray.init(address=cluster.address, include_dashboard=False, log_to_driver=False)
    try:
        yield str(cluster.address)
    finally:
        ray.shutdown()
        cluster.shutdown()
