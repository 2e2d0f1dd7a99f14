"""Real parts a test needs from outside the repo: skip locally, fail under CI.

A test that needs real DCAP quotes or a real PostgreSQL skips on a developer's
machine that lacks them, with the reason and the fix. Under CI (``CI=true``)
the same absence fails the test instead: a green CI run must mean the real
parts were exercised, not that their tests quietly went away.
"""

from __future__ import annotations

import os
from typing import NoReturn

import pytest

CI_VALUES = frozenset({"1", "true", "yes"})


def under_ci() -> bool:
    """True when the ``CI`` environment variable says so (GitHub, GitLab and most runners set it)."""
    return os.environ.get("CI", "").strip().lower() in CI_VALUES


def missing(what: str, fix: str) -> NoReturn:
    """Stop this test for want of ``what``: a failure under CI, a skip elsewhere; both say ``fix``."""
    if under_ci():
        pytest.fail(f"CI=true and {what} is missing; {fix}", pytrace=False)
    pytest.skip(f"{what} is missing; {fix}")
