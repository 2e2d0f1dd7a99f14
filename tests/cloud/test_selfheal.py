"""The service heals itself: ``kill -9`` of its worker or its enclave in the middle of a round.

All REAL: the service as OS processes, real CKKS, the key provisioned by
attestation through the relay. Nobody calls retry or restarts anything: the
round must end ``done`` by the service alone, within a bounded time, on
every upload the service acknowledged, and the interruption must not count
as the owner's failure.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cloudkit import wait_for

from cipherloop.ckks import SecretContext, preset, rotations_for_features
from cipherloop.client.data import encrypt_model, upload_body
from cipherloop.client.provisioning import provision, simulated_policy
from cipherloop.client.service import ServiceClient
from cipherloop.cloud.process import ServiceProcess
from cipherloop.cloud.supervise import pid_alive, read_lock_info

pytestmark = pytest.mark.slow

ADMIN = "selfheal-admin-token-0123456789ab"
D = 6
ROUND_DEADLINE_S = 240


@pytest.fixture(scope="module")
def world() -> Iterator[dict[str, Any]]:
    """A running service with one provisioned tenant, a model, a hold-out set, a contributor."""
    root = Path(tempfile.mkdtemp(prefix="cl-heal-"))
    data_dir = root / "data"
    owner = SecretContext.generate(preset("n8192"), rotations_for_features(D, 4096))
    rng = np.random.default_rng(3)
    X = rng.normal(size=(700, D))
    y = (X @ np.linspace(1.0, -1.0, D) + 0.3 * rng.normal(size=700) > 0).astype(np.float64)
    service = ServiceProcess(data_dir, admin_token=ADMIN, poll_interval_s=0.1,
                             env={"CIPHERLOOP_RETRY_BACKOFF_S": "0.5",
                                  "CIPHERLOOP_RESTART_BACKOFF_S": "0.5",
                                  "CIPHERLOOP_LEASE_S": "5"}).start()
    try:
        with ServiceClient(service.url, ADMIN) as admin:
            tenant = admin.create_tenant("heal")
        svc = ServiceClient(service.url, tenant["owner_token"])
        ctx = svc.register_context(owner.public_context().serialize())
        provision(svc, owner, simulated_policy(data_dir / "enclave"),
                  policy={"release": ["log_loss"], "min_samples": 16}, quiet_simulation=True)
        model = svc.create_model("lr", ctx["id"], D, {
            "trigger_min_samples": 200, "epochs": 12, "batch_size": 50, "learning_rate": 1.0,
            "momentum": 0.5, "release_metric": True})
        public = owner.public_context()
        svc.upload_version(model["id"], encrypt_model(public, np.zeros(D), 0.0).to_bytes(public))
        svc.upload_samples(model["id"], upload_body(public, X[600:], y[600:]), holdout=True)
        contributor = ServiceClient(service.url, svc.create_token("contributor")["token"])
        yield {"service": service, "owner": svc, "contributor": contributor, "public": public,
               "model": model["id"], "X": X, "y": y, "data_dir": data_dir}
    finally:
        service.stop()
        shutil.rmtree(root, ignore_errors=True)


def _round_survives_kill9(world: dict[str, Any], child: str, rows: slice) -> None:
    svc, m = world["owner"], world["model"]
    X, y, public = world["X"], world["y"], world["public"]
    n_before = len(svc.rounds(m))
    acked = [world["contributor"].upload_samples(m, upload_body(public, X[i:i + 100],
                                                                y[i:i + 100]))["id"]
             for i in range(rows.start, rows.stop, 100)]
    running = wait_for(lambda: [r for r in svc.rounds(m)[n_before:] if r["state"] == "running"],
                    timeout=60, step=0.05)
    victim = read_lock_info(world["data_dir"])["children"][child]
    t0 = time.monotonic()
    os.kill(victim, signal.SIGKILL)
    assert wait_for(lambda: not pid_alive(victim), timeout=10)

    def finished() -> list[dict[str, Any]]:
        return [r for r in svc.rounds(m)[n_before:] if r["state"] in ("done", "failed")]

    (rnd,) = wait_for(finished, timeout=ROUND_DEADLINE_S, step=0.25)
    elapsed = time.monotonic() - t0
    assert rnd["id"] == running[0]["id"]
    assert rnd["state"] == "done", rnd  # an infrastructure fault is never the owner's failure
    assert rnd["attempts"] >= 2 and elapsed < ROUND_DEADLINE_S
    assert sorted(rnd["upload_ids"]) == sorted(acked)  # every acknowledged upload used
    assert {u["id"]: u["round_id"] for u in svc.uploads(m) if u["id"] in acked} == {
        a: rnd["id"] for a in acked}
    assert read_lock_info(world["data_dir"])["children"][child] != victim  # a new process
    assert svc.health()["status"] == "ok"


def test_kill9_of_the_worker_mid_round(world: dict[str, Any]) -> None:
    _round_survives_kill9(world, "worker", slice(0, 200))


def test_kill9_of_the_enclave_mid_round(world: dict[str, Any]) -> None:
    _round_survives_kill9(world, "enclave", slice(200, 400))
