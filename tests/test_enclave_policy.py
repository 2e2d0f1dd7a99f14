"""The owner's release policy, the durable release budget and rounding, in-process.

Fast unit tests of ``cipherloop/enclave/policy.py`` and the budget in
``keystore.py`` (the mutation tests run them for every mutant). What
``evaluate``/``compare`` release under a policy is tested in ``tests/security/``.
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

from cipherloop.ckks import SecretContext, preset
from cipherloop.enclave.keystore import KeyEntry, KeyStore
from cipherloop.enclave.policy import METRICS, RESOLUTION, WINDOW_S, Policy, coarse
from cipherloop.errors import BudgetExhausted, PolicyViolation

DIGEST = "ab" * 32


# ---------------------------------------------------------------- policy
def test_policy_defaults_are_the_documented_ones() -> None:
    p = Policy()
    assert p.release == METRICS == ("accuracy", "log_loss")
    assert (p.allow_decision, p.min_samples, p.max_releases_per_day) == (True, 16, 96)
    assert (p.version, p.release_budget, p.holdouts) == (0, 10_000, ())
    assert (p.max_learning_rate, p.clip) == (100.0, 16.0)


@pytest.mark.parametrize("kw", [
    {"release": ("accuracy", "auc")},
    {"release": ("raw_scores",)},
    {"min_samples": 0},
    {"min_samples": -5},
    {"max_releases_per_day": -1},
    {"max_releases_per_day": 1.5},
    {"max_releases_per_day": True},
    {"release_budget": 2**53},
    {"version": -1},
    {"version": 2.0},
    {"holdouts": ((DIGEST, DIGEST),) * 17},
    {"allow_decision": 1},
    {"max_learning_rate": 1000.001},
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
    {"max_releases_per_day": 0},
    {"release_budget": 2**53 - 1},
    {"version": 2**53 - 1},
    {"holdouts": ((DIGEST, DIGEST),) * 16},
    {"max_learning_rate": 1e-9},
    {"max_learning_rate": 1000.0},
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
    p = Policy(version=3, release=("log_loss",), allow_decision=False, min_samples=40,
               max_releases_per_day=7, release_budget=70, max_learning_rate=2.5, clip=8.0,
               holdouts=((DIGEST, "cd" * 32),))
    doc = p.to_dict()
    assert doc == {"version": 3, "release": ["log_loss"], "allow_decision": False,
                   "min_samples": 40, "max_releases_per_day": 7, "release_budget": 70,
                   "max_learning_rate": 2.5, "clip": 8.0, "holdouts": [[DIGEST, "cd" * 32]]}
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



@pytest.mark.parametrize("pins", [
    [["ab" * 32]],
    [["ab" * 32, "AB" * 32]],
    [["ab" * 31, "ab" * 32]],
    [["zz" * 32, "ab" * 32]],
    "ab" * 64,
    [None],
])
def test_policy_wire_form_refuses_malformed_pins(pins: Any) -> None:
    with pytest.raises(ValueError):
        Policy.from_dict({"holdouts": pins})


def test_pins_match_only_the_exact_pair() -> None:
    p = Policy(holdouts=((DIGEST, "cd" * 32),))
    assert p.pins(DIGEST, "cd" * 32)
    assert not p.pins("cd" * 32, DIGEST) and not p.pins(DIGEST, DIGEST)


def test_bits_per_day_is_the_documented_bound() -> None:
    assert Policy(release=()).bits_per_day(100) == 96.0
    assert Policy(release=(), allow_decision=False).bits_per_day(100) == 0.0
    acc = Policy(release=("accuracy",), max_releases_per_day=10).bits_per_day(63)
    assert acc == pytest.approx(10 * 6.0)
    loss = Policy(release=("log_loss",), max_releases_per_day=1, clip=16.0).bits_per_day(10)
    assert loss == pytest.approx(math.log2((16 + math.log(2)) / RESOLUTION + 1))


# ---------------------------------------------------------------- release budget
@pytest.fixture(scope="module")
def small_secret() -> bytes:
    return SecretContext.generate(preset("n8192")).export_secret()


def _entry(secret: bytes, clock: Clock, **policy: Any) -> KeyEntry:
    store = KeyStore(clock=clock)
    return store.get(store.install(secret, Policy(**policy)))


def test_budget_allows_exactly_per_day_releases_in_a_day(small_secret: bytes) -> None:
    clock = Clock()
    entry = _entry(small_secret, clock, max_releases_per_day=3)
    for _ in range(3):
        entry.spend(1)
        clock.now += 1.0
    with pytest.raises(BudgetExhausted, match="budget"):
        entry.spend(1)


def test_budget_window_slides_after_exactly_one_day(small_secret: bytes) -> None:
    clock = Clock(5000.0)
    entry = _entry(small_secret, clock, max_releases_per_day=2)
    entry.spend(1)                      # t = 5000
    clock.now = 5000.0 + 1800.0
    entry.spend(1)                      # t = 6800
    clock.now = 5000.0 + WINDOW_S - 0.001
    with pytest.raises(BudgetExhausted):
        entry.spend(1)                  # the first release is still inside the day
    clock.now = 5000.0 + WINDOW_S
    entry.spend(1)                      # the first one has left the window
    with pytest.raises(BudgetExhausted):
        entry.spend(1)
    clock.now = 6800.0 + WINDOW_S
    entry.spend(1)


def test_a_refused_release_does_not_use_up_the_budget(small_secret: bytes) -> None:
    clock = Clock()
    entry = _entry(small_secret, clock, max_releases_per_day=1)
    entry.spend(1)
    for _ in range(5):
        clock.now += 600.0
        with pytest.raises(BudgetExhausted):
            entry.spend(1)
    clock.now = 1000.0 + WINDOW_S
    entry.spend(1)
    assert entry.state.spent_total == 2


def test_several_numbers_are_charged_together_or_not_at_all(small_secret: bytes) -> None:
    entry = _entry(small_secret, Clock(), max_releases_per_day=4)
    entry.spend(3)
    with pytest.raises(BudgetExhausted):
        entry.spend(2)
    entry.spend(1)
    assert entry.state.spent_total == 4


def test_a_large_budget_is_counted_by_value(small_secret: bytes) -> None:
    entry = _entry(small_secret, Clock(), max_releases_per_day=600)
    for _ in range(600):
        entry.spend(1)
    with pytest.raises(PolicyViolation):
        entry.spend(1)


def test_a_zero_budget_refuses_the_first_release(small_secret: bytes) -> None:
    with pytest.raises(BudgetExhausted):
        _entry(small_secret, Clock(), max_releases_per_day=0).spend(1)
    with pytest.raises(BudgetExhausted):
        _entry(small_secret, Clock(), release_budget=0).spend(1)


def test_budget_counts_every_thread_once(small_secret: bytes) -> None:
    entry = _entry(small_secret, Clock(), max_releases_per_day=50)
    refused: list[int] = []

    def spend() -> None:
        for _ in range(10):
            try:
                entry.spend(1)
            except PolicyViolation:
                refused.append(1)

    threads = [threading.Thread(target=spend) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(refused) == 80 - 50 and entry.state.spent_total == 50


def test_budget_uses_the_wall_clock_by_default(small_secret: bytes) -> None:
    """Wall time, so stamps mean the same after a restart (monotonic time does not)."""
    store = KeyStore()
    entry = store.get(store.install(small_secret, Policy()))
    entry.spend(1)
    assert abs(entry.state.stamps[0] - time.time()) < 60


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
