"""A round reads uploads as per-block blobs: split once, content-addressed, rebuilt if lost.

Uses the app's routes and store with the FAKE refiner (see cloudkit); the
splitting is the real worker code.
"""

from __future__ import annotations

from cloudkit import Keys, make_tenant
from fastapi.testclient import TestClient

from cipherloop.cloud.worker import Worker
from cipherloop.learn.dataset import StreamedDataset, blob_names


def test_an_upload_is_split_into_blocks_once_and_rebuilt_when_a_block_is_lost(
        client: TestClient, keys: Keys) -> None:
    t = make_tenant(client, keys)
    r = client.post(f"/v1/models/{t.model_id}/uploads", content=keys.samples(5000, seed=3),
                    headers=t.owner)
    assert r.status_code == 201, r.text
    sha = r.json()["sha256"]
    s = client.app.state.services  # type: ignore[attr-defined]
    worker = Worker(sessions=s.sessions, blobs=s.blobs, refiner=s.refiner, settings=s.settings)
    first = worker._stored(keys.public, sha)
    data = StreamedDataset.open(keys.public, s.blobs, first.manifest)
    assert data.n_samples == 5000 and len(data.feature_blocks) == 2  # two blocks of 4096 slots
    assert s.blobs.resolve(f"blocks-{sha}") == first.manifest
    assert s.blobs.exists(sha)  # the upload itself stays stored as it came
    names = blob_names(s.blobs.read(first.manifest))
    lost = s.blobs.path(names[1])
    lost.unlink()
    again = worker._stored(keys.public, sha)
    assert again.manifest == first.manifest and lost.is_file()  # same bytes, same names
    assert len(data.block(1)) == data.layout.period
