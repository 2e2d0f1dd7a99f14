"""Fixtures of the cloud service tests.

Keys are made once per session (about a second each). Most tests run the
app in-process with ``TestClient`` and a FAKE refiner (see ``cloudkit``);
``test_e2e.py`` runs the real server, refiner and enclave.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from cloudkit import ADMIN, PG_ENV, FakeRefiner, Keys, make_keys
from fastapi.testclient import TestClient
from realparts import missing
from sqlalchemy.exc import OperationalError

from cipherloop.cloud.app import create_app
from cipherloop.cloud.db import Base, make_engine
from cipherloop.cloud.settings import Settings


@pytest.fixture(scope="session")
def keys() -> Keys:
    """Tenant A's key (with rotations for inference on 4 features)."""
    return make_keys()


@pytest.fixture(scope="session")
def other_keys() -> Keys:
    """Tenant B's key, same parameters."""
    return make_keys()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(admin_token=ADMIN, data_dir=tmp_path / "data", max_body_bytes=64 << 20,
                    poll_interval_s=0.01, lease_s=30.0, retry_backoff_s=0.0)


@pytest.fixture
def refiner() -> FakeRefiner:
    return FakeRefiner()


@pytest.fixture
def client(settings: Settings, refiner: FakeRefiner) -> Iterator[TestClient]:
    with TestClient(create_app(settings, refiner=refiner)) as c:
        yield c


PG_FIX = (f'start one and export its URL: export {PG_ENV}="$(scripts/ci-postgres.sh)" '
          "(installs PostgreSQL with apt-get when run as root on Debian)")


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Each store test runs on SQLite, and on PostgreSQL when one is configured."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'store.db'}"
        return
    url = os.environ.get(PG_ENV)
    if not url:
        missing(f"PostgreSQL for the PostgreSQL variant ({PG_ENV} is not set)", PG_FIX)
    engine = make_engine(url, create=False)
    try:
        Base.metadata.drop_all(engine)
        Base.metadata.create_all(engine)
    except OperationalError as exc:  # the server is down or refuses the login
        missing(f"a reachable PostgreSQL at {engine.url.render_as_string(hide_password=True)} "
                f"({type(exc.orig).__name__})", PG_FIX)
    finally:
        engine.dispose()
    yield url
