"""Fixtures for the enclave-side platform tests."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import cipherloop

PACKAGE = Path(cipherloop.__file__).resolve().parent



@pytest.fixture()
def package_copy(tmp_path: Path) -> Path:
    """A copy of the measured enclave package files, to edit without touching the repo."""
    root = tmp_path / "pkg"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for sub in ("enclave", "ckks"):
        shutil.copytree(PACKAGE / sub, root / "cipherloop" / sub, ignore=ignore)
    for name in ("__init__.py", "errors.py"):
        shutil.copy2(PACKAGE / name, root / "cipherloop" / name)
    return root
