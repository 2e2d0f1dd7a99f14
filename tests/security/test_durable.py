"""The budget and the policy survive restarts, cannot be forked, and cannot be rolled back by the host.

Real enclave processes (restart, a second process on the same state
directory) and the in-process dispatch for faults and the release window.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from enclavekit import holdout, pinned, provision_sim
from hostkit import World, batch, make_world, view

from cipherloop.ckks import PublicContext, Replicated, SecretContext
from cipherloop.client.data import encrypt_model
from cipherloop.enclave.keystore import KeyEntry, KeyState, KeyStore
from cipherloop.enclave.policy import WINDOW_S, Policy
from cipherloop.enclave.server import Enclave, EnclaveConfig
from cipherloop.errors import (
    BudgetExhausted,
    EnclaveFault,
    KeySuspended,
    StalePolicy,
    StateDirLocked,
    TooFewSamples,
)
from cipherloop.learn import EnclaveProcess, compare, evaluate

SLOTS = 4096


def _model(host: PublicContext) -> dict[str, bytes]:
    coef = host.encrypt(Replicated(4, 4, SLOTS).pack(np.ones(4)))
    return {"coef": batch(host, [coef], Replicated(4, 4, SLOTS).describe())}


# ---------------------------------------------------------------- restarts and forks
def test_budget_continues_across_a_restart(tmp_path: Path, sec_key: SecretContext,
                                           host: PublicContext) -> None:
    f, lab, _, _ = holdout(sec_key, 32, 4)
    model = encrypt_model(host, np.ones(4), 0.0)
    with EnclaveProcess(state_dir=tmp_path) as proc:
        provision_sim(proc, sec_key, pinned((f, lab), max_releases_per_day=3))
        assert set(evaluate(model, (f, lab), context=host, enclave=proc.client)) == {
            "accuracy", "log_loss"}  # 2 numbers
        compare(model, model, (f, lab), context=host, enclave=proc.client)  # 1 number
    # A fresh process, the owner offline: the budget carries on.
    with EnclaveProcess(state_dir=tmp_path) as again, pytest.raises(BudgetExhausted):
        compare(model, model, (f, lab), context=host, enclave=again.client)


def test_a_second_enclave_on_the_same_state_dir_refuses_to_start(tmp_path: Path) -> None:
    with EnclaveProcess(state_dir=tmp_path) as first:
        assert first.socket_path is not None
        second = subprocess.run(
            [sys.executable, "-m", "cipherloop.enclave", "--socket", str(tmp_path / "other.sock"),
             "--state-dir", str(tmp_path)], capture_output=True, text=True, timeout=60)
        assert second.returncode == 3
        assert "another enclave process serves this state directory" in second.stderr
        assert first.client.hello()["pid"] == first.proc.pid  # type: ignore[union-attr]
        assert Path(first.socket_path).exists()  # the loser did not unlink the winner's socket


def test_in_process_enclaves_lock_the_state_dir_too(tmp_path: Path) -> None:
    config = EnclaveConfig(tmp_path / "s.sock", tmp_path / "state")
    first = Enclave(config)
    with pytest.raises(StateDirLocked):
        Enclave(config)
    first.close()
    Enclave(config).close()  # free again once the first one is closed


# --------------------------------------------------------------------- policy versions
def test_an_older_policy_is_refused_once_a_newer_one_is_known(
        tmp_path: Path, sec_key: SecretContext, host: PublicContext) -> None:
    f, lab, _, _ = holdout(sec_key, 32, 4)
    model = encrypt_model(host, np.ones(4), 0.0)
    with EnclaveProcess(state_dir=tmp_path) as proc:
        provision_sim(proc, sec_key, pinned((f, lab), version=20, release=["accuracy"]))
        with pytest.raises(StalePolicy):  # a replayed, looser policy
            provision_sim(proc, sec_key, pinned((f, lab), version=10))
        with pytest.raises(StalePolicy):  # the same version cannot change its content
            provision_sim(proc, sec_key, pinned((f, lab), version=20))
    with EnclaveProcess(state_dir=tmp_path) as again:  # and after a restart
        with pytest.raises(StalePolicy):
            provision_sim(again, sec_key, pinned((f, lab), version=19))
        assert evaluate(model, (f, lab), context=host, enclave=again.client,
                        metrics=["accuracy"]) == {"accuracy": pytest.approx(evaluate(
                            model, (f, lab), context=host, enclave=again.client,
                            metrics=["accuracy"])["accuracy"])}
        provision_sim(again, sec_key, pinned((f, lab), version=21))  # newer: accepted


# -------------------------------------------------------------- faults after decryption
def test_a_fault_after_decryption_suspends_the_key_durably(
        tmp_path: Path, sec_key: SecretContext, host: PublicContext,
        monkeypatch: pytest.MonkeyPatch) -> None:
    w = make_world(tmp_path, sec_key)
    entry = w.enclave.keys.get(w.key_id)

    def broken(*args: Any, **kw: Any) -> bytes:
        raise MemoryError("a value-dependent failure we did not foresee")

    monkeypatch.setattr(entry.context, "encrypt_bytes", broken)
    ct = host.encrypt(Replicated(1, 1, SLOTS).pack(0.5))
    reply = w.call("refresh", batches=[batch(host, [ct], Replicated(1, 1, SLOTS).describe())])
    assert view(reply) == ("refused", "EnclaveFault", str(EnclaveFault(
        "enclave fault: the key is suspended until its owner re-provisions it")))
    monkeypatch.undo()
    again = w.call("refresh", batches=[batch(host, [ct], Replicated(1, 1, SLOTS).describe())])
    assert view(again)[:2] == ("refused", "KeySuspended")
    w.enclave.close()

    restarted = Enclave(w.enclave.config)  # the suspension is in the sealed state
    assert restarted.restore_sealed() == 1
    with pytest.raises(KeySuspended):
        restarted.keys.get(w.key_id).check_open()
    reply = restarted.handle({"op": "provision_local", "args": {
        "secret": sec_key.export_secret(), "policy": Policy(version=1).to_dict()}})
    assert reply["ok"]  # the owner acted: served again
    restarted.keys.get(w.key_id).check_open()
    restarted.close()


# -------------------------------------------------------------------- the release window
class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def _entry(sec_key: SecretContext, clock: Clock, **policy: Any) -> KeyEntry:
    store = KeyStore(clock=clock)
    store.install(sec_key.export_secret(), Policy(**policy))
    return store.get(sec_key.key_id)


def test_window_refills_after_a_day_but_the_lifetime_budget_does_not(sec_key: SecretContext) -> None:
    clock = Clock()
    entry = _entry(sec_key, clock, max_releases_per_day=2, release_budget=3)
    entry.spend(2)
    with pytest.raises(BudgetExhausted):
        entry.spend(1)
    clock.now += WINDOW_S - 1
    with pytest.raises(BudgetExhausted):
        entry.spend(1)
    clock.now += 2  # the first two fell out of the window
    entry.spend(1)
    clock.now += 10 * WINDOW_S  # a host moving its clock ahead refills only the window
    with pytest.raises(BudgetExhausted):
        entry.spend(1)
    assert entry.state.spent_total == 3


def test_moving_the_clock_back_refills_nothing(sec_key: SecretContext) -> None:
    clock = Clock()
    entry = _entry(sec_key, clock, max_releases_per_day=1)
    entry.spend(1)
    clock.now -= 5 * WINDOW_S
    with pytest.raises(BudgetExhausted):
        entry.spend(1)


def test_a_refused_spend_charges_nothing(sec_key: SecretContext) -> None:
    entry = _entry(sec_key, Clock(), max_releases_per_day=3)
    with pytest.raises(BudgetExhausted):
        entry.spend(4)
    assert entry.state == KeyState(entry.policy)
    entry.spend(3)


def test_min_samples_boundary(tmp_path: Path, sec_key: SecretContext, host: PublicContext) -> None:
    exact = holdout(sec_key, 20, 4, seed=1)[:2]
    short = holdout(sec_key, 19, 4, seed=2)[:2]
    with EnclaveProcess(state_dir=tmp_path) as proc:
        provision_sim(proc, sec_key, pinned(exact, short, min_samples=20))
        model = encrypt_model(host, np.ones(4), 0.0)
        assert "accuracy" in evaluate(model, exact, context=host, enclave=proc.client)
        with pytest.raises(TooFewSamples):
            evaluate(model, short, context=host, enclave=proc.client)


def test_release_helpers_in_a_world(worlds: tuple[World, World], host: PublicContext) -> None:
    """evaluate: only the metrics asked for and released; rounded; decision needs permission."""
    w = worlds[0]
    f, lab = w.holdout
    reply = w.call("evaluate", model=_model(host), features=f, labels=lab, metrics=["log_loss"])
    assert reply["ok"] and set(reply["result"]) == {"log_loss"}
    value = reply["result"]["log_loss"]
    assert value == round(value, 3)
    dup = w.call("evaluate", model=_model(host), features=f, labels=lab,
                 metrics=["log_loss", "log_loss"])
    assert view(dup)[:2] == ("refused", "BadRequest")


def test_state_directories_are_private_and_usable_under_the_services_umask(tmp_path: Path) -> None:
    import os
    import stat

    old = os.umask(0o077)
    try:
        with EnclaveProcess(state_dir=tmp_path / "state") as proc:
            assert proc.client.hello()["platform"] == "sim"
    finally:
        os.umask(old)
    for d in (tmp_path / "state", tmp_path / "state" / "platform"):
        assert stat.S_IMODE(d.stat().st_mode) == 0o700, d
