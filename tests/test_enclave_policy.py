"""The owner's release policy, the hourly release budget and rounding, in-process.

Fast unit tests of ``cipherloop/enclave/policy.py`` (the mutation tests run them for
every mutant). What ``evaluate``/``compare`` release under a policy is tested against
the real enclave process in ``test_enclave.py``.
"""

from __future__ import annotations

import dataclasses
import math
import threading
import time
from typing import Any

import cbor2
import pytest
from enclavekit import Clock

from cipherloop.enclave.policy import METRICS, RESOLUTION, Policy, ReleaseBudget, coarse
from cipherloop.errors import PolicyViolation


# ---------------------------------------------------------------- policy
def test_policy_defaults_are_the_documented_ones() -> None:
    p = Policy()
    assert p.release == METRICS == ("accuracy", "log_loss")
    assert (p.allow_decision, p.min_samples, p.max_releases_per_hour) == (True, 16, 600)
    assert (p.max_learning_rate, p.clip) == (100.0, 16.0)


@pytest.mark.parametrize("kw", [
    {"release": ("accuracy", "auc")},
    {"release": ("raw_scores",)},
    {"min_samples": 0},
    {"min_samples": -5},
    {"max_releases_per_hour": -1},
    {"max_learning_rate": 0.0},
    {"max_learning_rate": -1.0},
    {"max_learning_rate": math.inf},
    {"max_learning_rate": float("inf")},  # another infinity object: compared by value
    {"max_learning_rate": 1e400},
    {"max_learning_rate": math.nan},
    {"clip": 0.0},
    {"clip": -1.0},
    {"clip": 64.001},
    {"clip": math.nan},
])
def test_policy_refuses_out_of_range_settings(kw: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        Policy(**kw)


@pytest.mark.parametrize("kw", [
    {"release": ()},
    {"release": ("accuracy",)},
    {"release": ("log_loss",)},
    {"min_samples": 1},
    {"max_releases_per_hour": 0},
    {"max_learning_rate": 1e-9},
    {"max_learning_rate": 1e300},
    {"clip": 64.0},
    {"clip": 1e-6},
])
def test_policy_accepts_the_edges_of_each_range(kw: dict[str, Any]) -> None:
    p = Policy(**kw)
    assert all(getattr(p, k) == v for k, v in kw.items())


def test_policy_is_immutable_once_made() -> None:
    p = Policy()
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.min_samples = 1  # type: ignore[misc]
    assert hash(p) == hash(Policy())


def test_infinite_learning_rate_from_the_wire_is_refused() -> None:
    with pytest.raises(ValueError):
        Policy.from_dict(cbor2.loads(cbor2.dumps({"max_learning_rate": math.inf})))


def test_policy_round_trips_through_its_wire_form() -> None:
    p = Policy(release=("log_loss",), allow_decision=False, min_samples=40,
               max_releases_per_hour=7, max_learning_rate=2.5, clip=8.0)
    doc = p.to_dict()
    assert doc == {"release": ["log_loss"], "allow_decision": False, "min_samples": 40,
                   "max_releases_per_hour": 7, "max_learning_rate": 2.5, "clip": 8.0}
    assert Policy.from_dict(cbor2.loads(cbor2.dumps(doc))) == p
    assert Policy.from_dict({}) == Policy()
    assert Policy.from_dict({"release": ["accuracy"]}).release == ("accuracy",)


@pytest.mark.parametrize("doc", [
    {"release": ["accuracy"], "extra": 1},
    {"min_samples": 3, "scores": True},
    ["release"],
    "release",
    None,
])
def test_policy_wire_form_refuses_unknown_fields_and_non_maps(doc: Any) -> None:
    with pytest.raises(ValueError, match="malformed policy"):
        Policy.from_dict(doc)


def test_policy_wire_form_refuses_a_release_it_does_not_know() -> None:
    with pytest.raises(ValueError):
        Policy.from_dict({"release": ["accuracy", "z"]})



# ---------------------------------------------------------------- release budget
def test_budget_allows_exactly_per_hour_releases_in_an_hour() -> None:
    clock = Clock()
    budget = ReleaseBudget(3, clock)
    for _ in range(3):
        budget.spend()
        clock.now += 1.0
    with pytest.raises(PolicyViolation, match="budget"):
        budget.spend()


def test_budget_window_slides_after_exactly_one_hour() -> None:
    clock = Clock(5000.0)
    budget = ReleaseBudget(2, clock)
    budget.spend()                      # t = 5000
    clock.now = 5000.0 + 1800.0
    budget.spend()                      # t = 6800
    clock.now = 5000.0 + 3599.999
    with pytest.raises(PolicyViolation):
        budget.spend()                  # the first release is still inside the hour
    clock.now = 5000.0 + 3600.0
    budget.spend()                      # the first one has left the window
    with pytest.raises(PolicyViolation):
        budget.spend()                  # the second (t = 6800) and third still count
    clock.now = 6800.0 + 3600.0
    budget.spend()


def test_a_refused_release_does_not_use_up_the_budget() -> None:
    clock = Clock()
    budget = ReleaseBudget(1, clock)
    budget.spend()
    for _ in range(5):
        clock.now += 600.0
        with pytest.raises(PolicyViolation):
            budget.spend()
    clock.now = 1000.0 + 3600.0         # an hour after the only release that happened
    budget.spend()


def test_a_large_budget_is_counted_by_value() -> None:
    clock = Clock()
    budget = ReleaseBudget(600, clock)  # the default: beyond the small ints Python shares
    for _ in range(600):
        budget.spend()
    with pytest.raises(PolicyViolation):
        budget.spend()


def test_releases_long_past_leave_the_window() -> None:
    clock = Clock()
    budget = ReleaseBudget(2, clock)
    budget.spend()
    budget.spend()
    clock.now += 2 * 3600.0 + 0.5  # well past the hour, not exactly on it
    budget.spend()
    budget.spend()
    with pytest.raises(PolicyViolation):
        budget.spend()


def test_a_zero_budget_refuses_the_first_release() -> None:
    with pytest.raises(PolicyViolation):
        ReleaseBudget(0, Clock()).spend()


def test_budget_counts_every_thread_once() -> None:
    budget = ReleaseBudget(50, Clock())
    refused: list[int] = []

    def spend() -> None:
        for _ in range(10):
            try:
                budget.spend()
            except PolicyViolation:
                refused.append(1)

    threads = [threading.Thread(target=spend) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(refused) == 80 - 50


def test_budget_uses_the_monotonic_clock_by_default() -> None:
    assert ReleaseBudget(1).clock is time.monotonic



# ---------------------------------------------------------------- rounding
@pytest.mark.parametrize(("value", "released"), [
    (0.12349, 0.123),
    (0.12351, 0.124),
    (0.9996, 1.0),
    (0.0004, 0.0),
    (-0.0126, -0.013),
    (0.6931471805599453, 0.693),
    (12.34567, 12.346),
    (1.0, 1.0),
])
def test_coarse_rounds_to_the_resolution(value: float, released: float) -> None:
    assert RESOLUTION == 1e-3
    assert coarse(value) == released
    assert round(coarse(value), 3) == coarse(value)
