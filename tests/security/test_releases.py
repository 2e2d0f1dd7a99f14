"""What may leave the enclave: exactly what the owner's policy names, rounded, budgeted.

Each test pins one promise of the README's security notes to a behaviour that
breaks when the promise does (the planted bugs of the issue "Tests that catch
what they claim").
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from enclavekit import logits_batch
from hostkit import World, batch, make_world, view

from cipherloop.ckks import CiphertextBatch, Diagonals, PublicContext, Replicated, SecretContext
from cipherloop.enclave.policy import coarse

SLOTS = 4096


def _model(host: PublicContext, w: np.ndarray, b: float | None = None) -> dict[str, bytes]:
    lay = Replicated(len(w), len(w), SLOTS)
    out = {"coef": batch(host, [host.encrypt(lay.pack(w))], lay.describe())}
    if b is not None:
        rep = Replicated(1, 1, SLOTS)
        out["intercept"] = batch(host, [host.encrypt(rep.pack(b))], rep.describe())
    return out


def _truth(sec_key: SecretContext, w: World, coef: np.ndarray, b: float) -> dict[str, float]:
    """The metrics computed at home, in plaintext, from the pinned hold-out set."""
    f, lab = (CiphertextBatch.from_bytes(x) for x in w.holdout)
    diag = Diagonals(**{k: v for k, v in f.layout.items() if k != "kind"})
    y = diag.samples.unpack([sec_key.decrypt(c) for c in lab.open(sec_key)])
    rng = np.random.default_rng(7)  # conftest.make_world's data
    X = rng.standard_normal((40, 4))
    assert np.allclose(y, X[:, 0] > 0, atol=1e-4)
    z = np.clip(X @ coef + b, -16, 16)
    return {"accuracy": float(np.mean((z > 0) == (y > 0.5))),
            "log_loss": float(np.mean(np.logaddexp(0, z) - y * z))}


def test_evaluate_is_rounded_and_matches_plaintext(tmp_path: Path, sec_key: SecretContext,
                                                   host: PublicContext) -> None:
    w = make_world(tmp_path, sec_key)
    coef, b = np.array([1.3, -0.2, 0.1, 0.05]), 0.1
    f, lab = w.holdout
    got = w.call("evaluate", model=_model(host, coef, b), features=f, labels=lab,
                 metrics=["accuracy", "log_loss"])["result"]
    truth = _truth(sec_key, w, coef, b)
    for m in ("accuracy", "log_loss"):
        assert got[m] == coarse(got[m])  # rounded to 1e-3 on the wire
        assert abs(got[m] - truth[m]) <= 5e-4 + 1e-6, m
    w.enclave.close()


def test_compare_releases_only_named_metrics_and_only_when_asked(
        tmp_path: Path, sec_key: SecretContext, host: PublicContext) -> None:
    w = make_world(tmp_path, sec_key, release=["accuracy"])
    f, lab = w.holdout
    good, bad = _model(host, np.array([2.0, 0, 0, 0])), _model(host, np.array([-2.0, 0, 0, 0]))
    loss = w.call("compare", candidate=good, current=bad, features=f, labels=lab,
                  metric="log_loss", with_metrics=True)["result"]
    assert loss == {"promote": True}  # log_loss is not released under this policy
    acc = w.call("compare", candidate=bad, current=good, features=f, labels=lab,
                 metric="accuracy", with_metrics=True)["result"]
    assert acc["promote"] is False and acc["candidate"] < acc["current"]
    assert acc["candidate"] == coarse(acc["candidate"]) and acc["current"] == coarse(acc["current"])
    quiet = w.call("compare", candidate=good, current=bad, features=f, labels=lab,
                   metric="accuracy")["result"]
    assert quiet == {"promote": True}
    assert w.enclave.keys.get(w.key_id).state.spent_total == 1 + 3 + 1
    w.enclave.close()


def test_compare_metrics_are_rounded(tmp_path: Path, sec_key: SecretContext,
                                     host: PublicContext) -> None:
    w = make_world(tmp_path, sec_key, release=["log_loss"])
    f, lab = w.holdout
    coef = np.array([0.731, -0.113, 0.057, 0.021])
    got = w.call("compare", candidate=_model(host, coef, 0.0123), current=_model(host, -coef),
                 features=f, labels=lab, metric="log_loss", with_metrics=True)["result"]
    truth = _truth(sec_key, w, coef, 0.0123)["log_loss"]
    assert got["candidate"] == coarse(got["candidate"]) and got["current"] == coarse(got["current"])
    assert got["candidate"] != truth and abs(got["candidate"] - truth) <= 5e-4 + 1e-6
    w.enclave.close()


def test_compare_without_permission_for_decisions_releases_nothing(
        tmp_path: Path, sec_key: SecretContext, host: PublicContext) -> None:
    w = make_world(tmp_path, sec_key, allow_decision=False)
    f, lab = w.holdout
    m = _model(host, np.ones(4))
    reply = w.call("compare", candidate=m, current=m, features=f, labels=lab)
    assert view(reply)[:2] == ("refused", "PolicyViolation")
    assert w.enclave.keys.get(w.key_id).state.spent_total == 0
    w.enclave.close()


def test_evaluate_refuses_metrics_the_policy_does_not_name(
        tmp_path: Path, sec_key: SecretContext, host: PublicContext) -> None:
    w = make_world(tmp_path, sec_key, release=["accuracy"])
    f, lab = w.holdout
    reply = w.call("evaluate", model=_model(host, np.ones(4)), features=f, labels=lab,
                   metrics=["accuracy", "log_loss"])
    assert view(reply)[:2] == ("refused", "PolicyViolation")
    assert w.enclave.keys.get(w.key_id).state.spent_total == 0
    w.enclave.close()


def test_model_of_another_width_is_refused(tmp_path: Path, sec_key: SecretContext,
                                           host: PublicContext) -> None:
    w = make_world(tmp_path, sec_key)
    f, lab = w.holdout
    reply = w.call("evaluate", model=_model(host, np.ones(8)), features=f, labels=lab,
                   metrics=["accuracy"])
    assert view(reply)[:2] == ("refused", "ShapeError")
    w.enclave.close()


@pytest.mark.parametrize("z,expected_p", [(1e6, 1.0), (-1e6, 0.0), (1.5, 1 / (1 + np.exp(-1.5))),
                                          (0.0, 0.5)])
def test_error_step_clips_logits_at_the_policy_bound(
        tmp_path: Path, host: PublicContext, sec_key: SecretContext,
        z: float, expected_p: float) -> None:
    world = make_world(tmp_path, sec_key, clip=2.0)
    diag = Diagonals.plan(40, 4, SLOTS)
    samples = diag.samples
    y = np.zeros(40)
    y[::2] = 1.0
    reply: dict[str, Any] = world.call(
        "logistic_error", z=logits_batch(host, samples.pack(np.full(40, z)), samples.describe()),
        y=batch(host, [host.encrypt(samples.pack(y)[0], level=0)], samples.describe()),
        features=diag.describe(), first_block=0, start=0, stop=40, learning_rate=2.0, level=3,
        intercept=False)
    e_cts = CiphertextBatch.from_bytes(reply["result"]["e"]).open(sec_key)
    e = sec_key.decrypt(e_cts[0])[:40]  # giant step 0 is not rotated
    p = 1 / (1 + np.exp(-np.clip(z, -2.0, 2.0)))  # the policy's clip, not the value sent
    assert np.allclose(e, (p - y) * 2.0 / 40, atol=1e-6)
    assert expected_p == pytest.approx(p) or abs(z) > 2.0
    world.enclave.close()


def test_an_all_zero_model_scores_like_any_other(tmp_path: Path, sec_key: SecretContext,
                                                 host: PublicContext) -> None:
    """A model of exact zeros once made SEAL throw ("transparent ciphertext") after decryption."""
    w = make_world(tmp_path, sec_key)
    f, lab = w.holdout
    zero = _model(host, np.zeros(4), 0.0)
    reply = w.call("compare", candidate=zero, current=zero, features=f, labels=lab,
                   with_metrics=True)
    assert reply["ok"], reply
    assert reply["result"] == {"promote": True, "candidate": coarse(np.log(2)),
                               "current": coarse(np.log(2))}
    w.enclave.close()
