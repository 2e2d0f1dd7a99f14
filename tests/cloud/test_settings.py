"""Settings: one dataclass, read from CIPHERLOOP_* variables, secrets never printed."""

from __future__ import annotations

from pathlib import Path

import pytest

from cipherloop.cloud.settings import Settings

TOKEN = "t" * 32


def test_from_env_reads_prefixed_variables() -> None:
    s = Settings.from_env({"CIPHERLOOP_ADMIN_TOKEN": TOKEN, "CIPHERLOOP_PORT": "9001",
                           "CIPHERLOOP_DATABASE_URL": "postgresql+psycopg://u@h/db",
                           "CIPHERLOOP_RUN_WORKER": "false", "CIPHERLOOP_DATA_DIR": "/srv/x"})
    assert (s.port, s.run_worker, s.data_dir) == (9001, False, Path("/srv/x"))
    assert s.db_url == "postgresql+psycopg://u@h/db"


def test_overrides_win_over_environment_and_none_is_ignored() -> None:
    s = Settings.from_env({"CIPHERLOOP_ADMIN_TOKEN": TOKEN, "CIPHERLOOP_PORT": "9001"},
                          port=9002, host=None)
    assert (s.port, s.host) == (9002, "127.0.0.1")


def test_admin_token_is_required() -> None:
    with pytest.raises(ValueError, match="CIPHERLOOP_ADMIN_TOKEN"):
        Settings.from_env({})


def test_short_admin_token_is_refused() -> None:
    with pytest.raises(ValueError, match="admin_token"):
        Settings(admin_token="short")


def test_unparseable_variable_names_the_variable() -> None:
    with pytest.raises(ValueError, match="CIPHERLOOP_PORT"):
        Settings.from_env({"CIPHERLOOP_ADMIN_TOKEN": TOKEN, "CIPHERLOOP_PORT": "eighty"})


def test_repr_redacts_admin_token() -> None:
    assert TOKEN not in repr(Settings(admin_token=TOKEN))


def test_default_database_is_sqlite_in_data_dir(tmp_path: Path) -> None:
    s = Settings(admin_token=TOKEN, data_dir=tmp_path)
    assert s.db_url == f"sqlite:///{tmp_path.resolve() / 'cipherloop.db'}"
