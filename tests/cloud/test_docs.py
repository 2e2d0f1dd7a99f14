"""The cloud package's docstring examples run, and its modules say where they run."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import cipherloop.cloud
from cipherloop.cloud.server import main

MODULES = sorted(m.name for m in pkgutil.walk_packages(cipherloop.cloud.__path__,
                                                       "cipherloop.cloud."))


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name: str) -> None:
    result = doctest.testmod(importlib.import_module(name))
    assert result.failed == 0


@pytest.mark.parametrize("name", ["cipherloop.cloud", *MODULES])
def test_module_docstring_says_where_it_runs(name: str) -> None:
    assert "Runs in: host" in (importlib.import_module(name).__doc__ or "")


def test_server_refuses_to_start_without_an_admin_token(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("CIPHERLOOP_ADMIN_TOKEN", raising=False)
    assert main(["--port", "0"]) == 2
    assert "CIPHERLOOP_ADMIN_TOKEN" in capsys.readouterr().err
