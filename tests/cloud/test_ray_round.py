"""A service round on Ray that loses its workers is retried: every upload used, no half version.

REAL parts: the refiner (:class:`LearnRefiner`), an enclave process, a local Ray
cluster (``ray_cluster``: a head and a second node) and the app's routes and
database. Slow: Ray and the enclave take seconds to start.
"""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path
from typing import Any

import pytest
from cloudkit import ADMIN, Keys, make_tenant
from enclavekit import provision_sim
from fastapi.testclient import TestClient

from cipherloop.ckks import SecretContext, preset, rotations_for_features
from cipherloop.cloud.app import create_app
from cipherloop.cloud.refiner import LearnRefiner
from cipherloop.cloud.settings import Settings
from cipherloop.cloud.worker import Worker, engine_factory
from cipherloop.learn import EnclaveClient, EnclaveProcess

pytest.importorskip("ray")


def test_unreachable_ray_cluster_keeps_uploads_coming_and_rounds_waiting(
        tmp_path: Path, keys: Keys, caplog: pytest.LogCaptureFixture) -> None:
    settings = Settings(admin_token=ADMIN, data_dir=tmp_path / "data", poll_interval_s=0.01,
                        retry_backoff_s=0.0, engine="ray", ray_address="127.0.0.1:9")
    with caplog.at_level(logging.ERROR, logger="cipherloop.cloud.worker"):
        factory = engine_factory(settings)  # at start: a clear error, not a crash
    assert "no Ray cluster is reachable at 127.0.0.1:9" in caplog.text
    assert "uploads are still accepted" in caplog.text
    refiner = LearnRefiner(EnclaveClient(tmp_path / "no-enclave.sock"), engine=factory)
    with TestClient(create_app(settings, refiner=refiner)) as client:
        t = make_tenant(client, keys, policy={"trigger_min_samples": 10})
        r = client.post(f"/v1/models/{t.model_id}/uploads", content=keys.samples(20, seed=1),
                        headers=t.owner)
        assert r.status_code == 201, r.text  # the service still takes uploads
        s = client.app.state.services  # type: ignore[attr-defined]
        worker = Worker(sessions=s.sessions, blobs=s.blobs, refiner=refiner, settings=s.settings)
        rnd = worker.tick()
        assert rnd is not None and rnd.state == "pending" and rnd.attempts == 1  # retried later
        assert rnd.error == "no Ray cluster is reachable at 127.0.0.1:9"


@pytest.mark.slow
def test_a_round_that_loses_its_ray_workers_is_retried_with_every_upload(
        tmp_path: Path, ray_cluster: str) -> None:
    from cipherloop.learn.ray_engine import RayEngine
    secret = SecretContext.generate(preset("n8192"), rotations_for_features(4, 4096))
    keys = Keys(secret, secret.public_context(), secret.public_context().serialize())
    settings = Settings(admin_token=ADMIN, data_dir=tmp_path / "data", poll_interval_s=0.01,
                        lease_s=30.0, retry_backoff_s=0.0, engine="ray")
    engine = RayEngine(n_workers=2, max_restarts=0).connect()
    with EnclaveProcess() as proc:
        provision_sim(proc, secret)
        refiner = LearnRefiner(proc.client, engine=lambda context: engine.connect())
        with TestClient(create_app(settings, refiner=refiner)) as client:
            t = make_tenant(client, keys, policy={"trigger_min_samples": 5000, "epochs": 1})
            uploads = []
            for seed in (1, 2):  # 2 x 3000 samples: two blocks, one per actor
                r = client.post(f"/v1/models/{t.model_id}/uploads",
                                content=keys.samples(3000, seed=seed), headers=t.owner)
                assert r.status_code == 201, r.text
                uploads.append(r.json()["id"])
            s = client.app.state.services  # type: ignore[attr-defined]
            worker = Worker(sessions=s.sessions, blobs=s.blobs, refiner=refiner,
                            settings=s.settings)

            def versions() -> list[dict[str, Any]]:
                return list(client.get(f"/v1/models/{t.model_id}/versions",
                                       headers=t.owner).json())

            os.kill(engine.worker_pids()[1], signal.SIGKILL)  # lost for good: no restarts
            first = worker.tick()
            assert first is not None and first.state == "pending" and first.attempts == 1
            assert "Ray worker was lost" in (first.error or "")
            assert len(versions()) == 1  # only the owner's initial version: nothing half-written
            second = worker.tick()  # a fresh set of actors
            assert second is not None and second.state == "done", second.error
            assert second.attempts == 2
            rnd = client.get(f"/v1/models/{t.model_id}/rounds", headers=t.owner).json()[0]
            assert sorted(rnd["upload_ids"]) == sorted(uploads)
            assert rnd["stats"]["n_samples"] == 6000  # every acknowledged upload was used
            (made,) = [v for v in versions() if v["round_id"] == rnd["id"]]
            assert sorted(made["upload_ids"]) == sorted(uploads)
    engine.close()
