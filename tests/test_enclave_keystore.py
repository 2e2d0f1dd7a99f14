"""The enclave's key store: keys by id, each with its policy, budget and durable state.

Fast unit tests of ``cipherloop/enclave/keystore.py`` with real (small) CKKS keys.
"""

from __future__ import annotations

import time

import cbor2
import pytest
from enclavekit import Clock

from cipherloop.ckks import CkksParams, SecretContext
from cipherloop.enclave.keystore import KeyEntry, KeyState, KeyStore
from cipherloop.enclave.policy import Policy
from cipherloop.errors import (
    BudgetExhausted,
    KeyMaterialError,
    KeySuspended,
    StalePolicy,
    UnknownKey,
)


def test_key_store_installs_under_the_key_id_with_its_policy(small_key: SecretContext) -> None:
    clock = Clock()
    store = KeyStore(clock=clock)
    policy = Policy(max_releases_per_day=2)
    assert store.install(small_key.export_secret(), policy) == small_key.key_id
    entry = store.get(small_key.key_id)
    assert entry.policy is policy and entry.state == KeyState(policy)
    assert entry.context.key_id == small_key.key_id
    entry.spend(1)
    assert entry.state.stamps == (clock.now,)
    assert store.key_ids() == [small_key.key_id]


def test_key_store_without_a_clock_uses_wall_time(small_key: SecretContext) -> None:
    store = KeyStore()
    store.install(small_key.export_secret(), Policy())
    store.get(small_key.key_id).spend(1)
    assert abs(store.get(small_key.key_id).state.stamps[0] - time.time()) < 60


def test_each_key_has_its_own_budget(small_key: SecretContext) -> None:
    other = SecretContext.generate(CkksParams(4096, (40, 20, 40), 20))
    store = KeyStore(clock=Clock())
    store.install(small_key.export_secret(), Policy(max_releases_per_day=1))
    store.install(other.export_secret(), Policy(max_releases_per_day=1))
    assert store.key_ids() == sorted([small_key.key_id, other.key_id])
    store.get(small_key.key_id).spend(1)
    store.get(other.key_id).spend(1)
    with pytest.raises(BudgetExhausted):
        store.get(small_key.key_id).spend(1)


def test_reinstalling_a_key_takes_a_newer_policy_and_keeps_the_history(
        small_key: SecretContext) -> None:
    store = KeyStore(clock=Clock())
    store.install(small_key.export_secret(), Policy(version=1, min_samples=5))
    store.get(small_key.key_id).spend(2)
    store.install(small_key.export_secret(), Policy(version=2, min_samples=9))
    assert store.key_ids() == [small_key.key_id]
    entry = store.get(small_key.key_id)
    assert entry.policy.min_samples == 9 and entry.state.spent_total == 2
    store.install(small_key.export_secret(), Policy(version=2, min_samples=9))  # same: fine
    with pytest.raises(StalePolicy):
        store.install(small_key.export_secret(), Policy(version=1, min_samples=1))
    with pytest.raises(StalePolicy):
        store.install(small_key.export_secret(), Policy(version=2, min_samples=1))
    assert store.get(small_key.key_id).policy.min_samples == 9


def test_installs_and_spends_are_persisted_before_they_take_effect(
        small_key: SecretContext) -> None:
    written: list[KeyState] = []

    def persist(ctx: SecretContext, secret: bytes, state: KeyState) -> None:
        assert ctx.key_id == small_key.key_id and secret == small_key.export_secret()
        written.append(state)

    store = KeyStore(persist=persist, clock=Clock())
    store.install(small_key.export_secret(), Policy(version=1))
    entry = store.get(small_key.key_id)
    entry.spend(2)
    entry.suspend()
    assert [(s.spent_total, s.suspended) for s in written] == [(0, False), (2, False), (2, True)]
    with pytest.raises(KeySuspended):
        entry.spend(1)
    store.install(small_key.export_secret(), Policy(version=2))  # the owner acts
    assert written[-1].suspended is False and written[-1].spent_total == 2
    entry.check_open()


def test_a_failed_write_releases_nothing(small_key: SecretContext) -> None:
    def persist(ctx: SecretContext, secret: bytes, state: KeyState) -> None:
        if state.spent_total:
            raise OSError("disk full")

    store = KeyStore(persist=persist, clock=Clock())
    store.install(small_key.export_secret(), Policy())
    entry = store.get(small_key.key_id)
    with pytest.raises(OSError):
        entry.spend(1)
    assert entry.state.spent_total == 0


def test_key_state_round_trips_and_refuses_malformed_documents() -> None:
    state = KeyState(Policy(version=4), 3, (1.0, 2.5), True)
    assert KeyState.from_dict(cbor2.loads(cbor2.dumps(state.to_dict()))) == state
    for bad in ({"policy": {}, "stamps": "x"}, {"policy": {}, "spent_total": "3"}, {}):
        with pytest.raises((ValueError, KeyError)):
            KeyState.from_dict(bad)


@pytest.mark.parametrize("secret", [b"", b"not a key", cbor2.dumps({"format": "x"})])
def test_key_store_refuses_unloadable_secrets_without_detail(secret: bytes) -> None:
    store = KeyStore()
    with pytest.raises(KeyMaterialError) as info:
        store.install(secret, Policy())
    assert type(info.value) is KeyMaterialError
    assert str(info.value) == "secret key material is not loadable"
    assert info.value.__cause__ is None and info.value.__suppress_context__
    assert store.key_ids() == []


@pytest.mark.parametrize("key_id", ["0" * 32, None, 7, b"abc", ["x"]])
def test_key_store_refuses_unknown_or_non_string_ids(small_key: SecretContext, key_id: object) -> None:
    store = KeyStore()
    store.install(small_key.export_secret(), Policy())
    with pytest.raises(UnknownKey, match="no key with this id") as info:
        store.get(key_id)
    assert type(info.value) is UnknownKey


def test_key_entry_repr_hides_the_secret(small_key: SecretContext) -> None:
    store = KeyStore()
    store.install(small_key.export_secret(), Policy())
    entry = store.get(small_key.key_id)
    assert isinstance(entry, KeyEntry)
    assert repr(entry) == f"KeyEntry(key_id={small_key.key_id!r}, secret=<redacted>)"


def test_key_state_is_immutable_so_a_swap_is_the_only_change() -> None:
    """Entries replace their state whole, after it is persisted; nothing edits it in place."""
    import dataclasses

    state = KeyState(Policy())
    with pytest.raises(dataclasses.FrozenInstanceError):
        state.spent_total = 5  # type: ignore[misc]
