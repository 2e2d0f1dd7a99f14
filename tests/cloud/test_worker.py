"""The round worker: triggers, verdicts, lineage, and recovery from crashes.

These use the FAKE refiner (scripted verdicts, no enclave; see cloudkit): what
they test does not depend on the round's content. The worker with the real
round (LearnRefiner and a real enclave) is in ``test_worker_real.py``. A
crash is simulated by :class:`cloudkit.Crash`, a ``BaseException`` no code
catches -- the round is left exactly as ``kill -9`` would leave it. The real
process-level ``kill -9`` test is in ``test_e2e.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import pytest
from cloudkit import Crash, FakeRefiner, Keys, Tenant, make_tenant
from fastapi.testclient import TestClient

from cipherloop.cloud import crud
from cipherloop.cloud.db import Decision, utcnow
from cipherloop.cloud.worker import Worker
from cipherloop.errors import EnclaveUnavailable, ShapeError


def _worker(client: TestClient, refiner: FakeRefiner | None = None, *,
            clock: Callable[[], datetime] = utcnow, **changes: Any) -> Worker:
    s = client.app.state.services  # type: ignore[attr-defined]
    return Worker(sessions=s.sessions, blobs=s.blobs, refiner=refiner or s.refiner,
                  settings=s.settings.with_(**changes), clock=clock)


def _upload(client: TestClient, t: Tenant, n: int, seed: int, kind: str = "data") -> str:
    r = client.post(f"/v1/models/{t.model_id}/uploads?kind={kind}",
                    content=t.keys.samples(n, seed=seed), headers=t.owner)
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def _rounds(client: TestClient, t: Tenant) -> list[dict[str, Any]]:
    return list(client.get(f"/v1/models/{t.model_id}/rounds", headers=t.owner).json())


def _model(client: TestClient, t: Tenant) -> dict[str, Any]:
    return dict(client.get(f"/v1/models/{t.model_id}", headers=t.owner).json())


def test_uploads_alone_trigger_a_round_that_promotes(client: TestClient, keys: Keys) -> None:
    t = make_tenant(client, keys, policy={"trigger_min_samples": 30, "release_metric": True})
    hold = _upload(client, t, 20, 0, "holdout")
    first = _upload(client, t, 20, 1)
    worker = _worker(client)
    assert worker.tick() is None  # 20 < 30 new samples
    second = _upload(client, t, 20, 2)
    done = worker.tick()
    assert done is not None and done.state == "done" and done.trigger == "samples"
    (rnd,) = _rounds(client, t)
    version = client.get(f"/v1/models/{t.model_id}/versions/{rnd['candidate_version_id']}",
                         headers=t.owner).json()
    assert _model(client, t)["current_version_id"] == version["id"]
    assert version["decision"] == "promote"
    assert version["parent_id"] == t.version_id
    assert version["upload_ids"] == [first, second] and version["holdout_id"] == hold
    assert version["policy_id"] == _model(client, t)["policy"]["id"]
    assert version["metrics"] == {"metric": "log_loss", "candidate": 0.5, "current": 0.6}
    assert worker.tick() is None  # the data is used up


def test_kept_candidate_is_stored_but_not_current(client: TestClient, keys: Keys,
                                                  refiner: FakeRefiner) -> None:
    refiner.decision = Decision.KEEP
    t = make_tenant(client, keys, policy={"trigger_min_samples": 1})
    _upload(client, t, 20, 1)
    _worker(client).tick()
    (rnd,) = _rounds(client, t)
    assert rnd["decision"] == "keep" and rnd["candidate_version_id"] is not None
    assert _model(client, t)["current_version_id"] == t.version_id
    blob = client.get(f"/v1/models/{t.model_id}/versions/{rnd['candidate_version_id']}/blob",
                      headers=t.owner)
    assert blob.status_code == 200


def test_metrics_are_dropped_unless_the_policy_releases_them(client: TestClient,
                                                             keys: Keys) -> None:
    t = make_tenant(client, keys, policy={"trigger_min_samples": 1, "release_metric": False})
    _upload(client, t, 20, 1)
    _worker(client).tick()
    (rnd,) = _rounds(client, t)
    assert rnd["metrics"] is None
    assert client.get(f"/v1/models/{t.model_id}/versions/{rnd['candidate_version_id']}",
                      headers=t.owner).json()["metrics"] is None


def test_learning_rate_decays_per_completed_round(client: TestClient, keys: Keys,
                                                 refiner: FakeRefiner) -> None:
    t = make_tenant(client, keys, policy={"trigger_min_samples": 1, "learning_rate": 0.8,
                                          "lr_schedule": "decay", "lr_decay": 0.5})
    worker = _worker(client)
    for seed in range(3):
        _upload(client, t, 20, seed)
        worker.tick()
    assert [c["spec"].learning_rate for c in refiner.calls] == [0.8, 0.4, 0.2]
    assert [r["spec"]["round_index"] for r in _rounds(client, t)] == [0, 1, 2]


def test_interval_trigger_uses_the_injected_clock(client: TestClient, keys: Keys) -> None:
    t = make_tenant(client, keys, policy={"trigger_interval_s": 600})
    _upload(client, t, 20, 1)
    now = [utcnow()]
    worker = _worker(client, clock=lambda: now[0])
    assert worker.tick() is None
    now[0] += timedelta(seconds=601)
    done = worker.tick()
    assert done is not None and done.trigger == "interval"


def test_owner_can_start_a_round_now(client: TestClient, keys: Keys) -> None:
    t = make_tenant(client, keys)  # no trigger: manual only
    _upload(client, t, 20, 1)
    worker = _worker(client)
    assert worker.tick() is None
    r = client.post(f"/v1/models/{t.model_id}/rounds", headers=t.owner)
    assert r.status_code == 201 and r.json()["trigger"] == "manual"
    again = client.post(f"/v1/models/{t.model_id}/rounds", headers=t.owner)
    assert again.status_code == 409
    assert worker.tick() is not None
    nothing_new = client.post(f"/v1/models/{t.model_id}/rounds", headers=t.owner)
    assert nothing_new.status_code == 409 and "no new data" in nothing_new.json()["detail"]


def test_round_left_running_by_a_crash_is_redone_on_restart(client: TestClient, keys: Keys,
                                                           refiner: FakeRefiner) -> None:
    t = make_tenant(client, keys, policy={"trigger_min_samples": 1})
    up = _upload(client, t, 20, 1)
    refiner.error = Crash()
    with pytest.raises(Crash):
        _worker(client).tick()
    (rnd,) = _rounds(client, t)
    assert rnd["state"] == "running" and rnd["candidate_version_id"] is None
    refiner.error = None
    restarted = _worker(client)  # same worker id: its running rounds are dead
    assert restarted.recover() == 1
    done = restarted.tick()
    assert done is not None and done.id == rnd["id"] and done.state == "done"
    (rnd,) = _rounds(client, t)
    assert (rnd["attempts"], rnd["upload_ids"]) == (2, [up])
    versions = client.get(f"/v1/models/{t.model_id}/versions", headers=t.owner).json()
    assert [v["round_id"] for v in versions] == [None, rnd["id"]]


def test_crash_between_candidate_blob_and_row_leaves_no_half_version(
        client: TestClient, keys: Keys, monkeypatch: pytest.MonkeyPatch) -> None:
    t = make_tenant(client, keys, policy={"trigger_min_samples": 1})
    _upload(client, t, 20, 1)
    real = crud.finish_round

    def die(*args: object, **kw: object) -> object:
        raise Crash()

    monkeypatch.setattr(crud, "finish_round", die)
    with pytest.raises(Crash):
        _worker(client).tick()
    assert len(client.get(f"/v1/models/{t.model_id}/versions", headers=t.owner).json()) == 1
    monkeypatch.setattr(crud, "finish_round", real)
    worker = _worker(client)
    worker.recover()
    worker.tick()
    (rnd,) = _rounds(client, t)
    assert rnd["state"] == "done"
    assert len(client.get(f"/v1/models/{t.model_id}/versions", headers=t.owner).json()) == 2


def test_round_of_a_worker_that_stopped_beating_is_taken_over(
        client: TestClient, keys: Keys, refiner: FakeRefiner) -> None:
    t = make_tenant(client, keys, policy={"trigger_min_samples": 1})
    _upload(client, t, 20, 1)
    refiner.error = Crash()
    with pytest.raises(Crash):
        _worker(client, worker_id="node-a").tick()
    refiner.error = None
    later = utcnow() + timedelta(seconds=31)  # past the 30 s lease
    other = _worker(client, worker_id="node-b", clock=lambda: later)
    assert other.recover() == 0  # not its round
    done = other.tick()
    assert done is not None and done.state == "done" and done.worker_id == "node-b"


def test_unreachable_enclave_is_an_infrastructure_fault_retried_with_backoff(
        client: TestClient, keys: Keys, refiner: FakeRefiner) -> None:
    t = make_tenant(client, keys, policy={"trigger_min_samples": 1})
    _upload(client, t, 20, 1)
    refiner.error = EnclaveUnavailable("enclave is not reachable")
    clock = [utcnow()]
    worker = _worker(client, max_attempts=2, retry_backoff_s=1.0, retry_backoff_max_s=3.0,
                     clock=lambda: clock[0])
    waits = []
    for attempt in range(1, 5):  # past max_attempts: not the owner's failure, never "failed"
        rnd = worker.tick()
        assert rnd is not None and rnd.state == "pending" and rnd.attempts == attempt
        assert rnd.error == "enclave is not reachable"
        waits.append((rnd.not_before - clock[0]).total_seconds())
        assert worker.tick() is None  # not due before its backoff
        clock[0] = rnd.not_before
    assert waits == [1.0, 2.0, 3.0, 3.0]  # doubling, capped
    refiner.error = None
    done = worker.tick()
    assert done is not None and done.state == "done" and done.attempts == 5


def test_failed_round_keeps_its_data_and_the_owner_can_retry(
        client: TestClient, keys: Keys, refiner: FakeRefiner) -> None:
    t = make_tenant(client, keys, policy={"trigger_min_samples": 1})
    up = _upload(client, t, 20, 1)
    refiner.error = ShapeError("data and model disagree")
    worker = _worker(client)
    failed = worker.tick()
    assert failed is not None and failed.state == "failed"
    assert failed.error == "data and model disagree"
    assert worker.tick() is None  # its data is not silently reused
    refiner.error = None
    r = client.post(f"/v1/models/{t.model_id}/rounds/{failed.id}/retry", headers=t.owner)
    assert r.status_code == 200 and r.json()["state"] == "pending"
    done = worker.tick()
    assert done is not None and done.state == "done"
    assert _rounds(client, t)[0]["upload_ids"] == [up]


def test_unexpected_error_fails_the_round_without_leaking_details(
        client: TestClient, keys: Keys, refiner: FakeRefiner) -> None:
    t = make_tenant(client, keys, policy={"trigger_min_samples": 1})
    _upload(client, t, 20, 1)
    refiner.error = RuntimeError("/secret/path exploded")
    done = _worker(client).tick()
    assert done is not None and done.state == "failed"
    assert done.error == "internal error (RuntimeError)"


def test_rollback_during_a_round_wins_over_its_promotion(client: TestClient, keys: Keys,
                                                        refiner: FakeRefiner) -> None:
    t = make_tenant(client, keys, policy={"trigger_min_samples": 1})
    v2 = client.post(f"/v1/models/{t.model_id}/versions", content=keys.model(seed=5),
                     headers=t.owner).json()
    _upload(client, t, 20, 1)

    def owner_rolls_back() -> None:
        client.put(f"/v1/models/{t.model_id}/current", json={"version_id": t.version_id},
                   headers=t.owner)

    refiner.before = owner_rolls_back
    done = _worker(client).tick()
    assert done is not None and done.decision == "keep"
    assert _model(client, t)["current_version_id"] == t.version_id
    assert done.base_version_id == v2["id"]


def test_run_loop_recovers_then_stops(client: TestClient, keys: Keys, refiner: FakeRefiner) -> None:
    import threading

    t = make_tenant(client, keys, policy={"trigger_min_samples": 1})
    _upload(client, t, 20, 1)
    refiner.error = Crash()
    with pytest.raises(Crash):  # the previous run of this worker died mid-round
        _worker(client).tick()
    assert [(r["state"], r["attempts"]) for r in _rounds(client, t)] == [("running", 1)]
    refiner.error = None
    # Its lease (30 s) is fresh: only run()'s recovery can hand the round back this soon.
    stop = threading.Event()
    thread = threading.Thread(target=_worker(client).run, args=(stop,))
    thread.start()
    try:
        for _ in range(1000):
            if _rounds(client, t)[0]["state"] == "done":
                break
            stop.wait(0.01)
    finally:
        stop.set()
        thread.join(timeout=10)
    assert not thread.is_alive()  # stopped when told
    (rnd,) = _rounds(client, t)
    assert (rnd["state"], rnd["attempts"]) == ("done", 2)  # recovered: redone, not taken over
    assert len(refiner.calls) == 2
