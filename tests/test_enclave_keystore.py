"""The enclave's key store: keys by id, each with its policy and its own budget.

Fast unit tests of ``cipherloop/enclave/keystore.py`` with real (small) CKKS keys.
"""

from __future__ import annotations

import time

import cbor2
import pytest
from enclavekit import Clock

from cipherloop.ckks import CkksParams, SecretContext
from cipherloop.enclave.keystore import KeyEntry, KeyStore
from cipherloop.enclave.policy import Policy
from cipherloop.errors import EnclaveError, PolicyViolation


def test_key_store_installs_under_the_key_id_with_its_policy(small_key: SecretContext) -> None:
    clock = Clock()
    store = KeyStore(clock=clock)
    policy = Policy(max_releases_per_hour=2)
    assert store.install(small_key.export_secret(), policy) == small_key.key_id
    entry = store.get(small_key.key_id)
    assert entry.policy is policy
    assert entry.context.key_id == small_key.key_id
    assert entry.budget.per_hour == 2
    assert entry.budget.clock is clock
    assert store.key_ids() == [small_key.key_id]


def test_key_store_without_a_clock_uses_the_budget_default(small_key: SecretContext) -> None:
    store = KeyStore()
    store.install(small_key.export_secret(), Policy())
    assert store.get(small_key.key_id).budget.clock is time.monotonic


def test_each_key_has_its_own_budget(small_key: SecretContext) -> None:
    other = SecretContext.generate(CkksParams(4096, (40, 20, 40), 20))
    store = KeyStore(clock=Clock())
    store.install(small_key.export_secret(), Policy(max_releases_per_hour=1))
    store.install(other.export_secret(), Policy(max_releases_per_hour=1))
    assert store.key_ids() == sorted([small_key.key_id, other.key_id])
    store.get(small_key.key_id).budget.spend()
    store.get(other.key_id).budget.spend()
    with pytest.raises(PolicyViolation):
        store.get(small_key.key_id).budget.spend()


def test_reinstalling_a_key_replaces_its_policy(small_key: SecretContext) -> None:
    store = KeyStore()
    store.install(small_key.export_secret(), Policy(min_samples=5))
    store.install(small_key.export_secret(), Policy(min_samples=9))
    assert store.key_ids() == [small_key.key_id]
    assert store.get(small_key.key_id).policy.min_samples == 9


@pytest.mark.parametrize("secret", [b"", b"not a key", cbor2.dumps({"format": "x"})])
def test_key_store_refuses_unloadable_secrets_without_detail(secret: bytes) -> None:
    store = KeyStore()
    with pytest.raises(EnclaveError) as info:
        store.install(secret, Policy())
    assert type(info.value) is EnclaveError
    assert str(info.value) == "secret key material is not loadable"
    assert info.value.__cause__ is None and info.value.__suppress_context__
    assert store.key_ids() == []


@pytest.mark.parametrize("key_id", ["0" * 32, None, 7, b"abc", ["x"]])
def test_key_store_refuses_unknown_or_non_string_ids(small_key: SecretContext, key_id: object) -> None:
    store = KeyStore()
    store.install(small_key.export_secret(), Policy())
    with pytest.raises(EnclaveError, match="no key with this id") as info:
        store.get(key_id)
    assert type(info.value) is EnclaveError


def test_key_entry_repr_hides_the_secret(small_key: SecretContext) -> None:
    store = KeyStore()
    store.install(small_key.export_secret(), Policy())
    entry = store.get(small_key.key_id)
    assert isinstance(entry, KeyEntry)
    assert repr(entry) == f"KeyEntry(key_id={small_key.key_id!r}, secret=<redacted>)"
