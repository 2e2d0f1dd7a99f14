"""No enclave operation is a decryption oracle: replies are identical for two different secrets.

Each test is one attack class of the issue "The enclave is no oracle", played
with only what the host holds. ``SECRETS`` are the two values a stored
ciphertext holds in the two worlds: an ordinary one, and one at or beyond
every bound the encoder and the enclave's clipping have.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from hostkit import World, batch, view, with_scale
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cipherloop.ckks import Ciphertext, CiphertextBatch, Diagonals, PublicContext, Replicated, SampleBlocks
from cipherloop.client.data import encrypt_batches

SLOTS = 4096
SECRETS = (0.25, 3.0e9)  # 3e9 * 2^35 overflows level 0; far beyond the clip of 2^20 too
Attack = Callable[[World, Ciphertext], dict[str, Any]]


def _stored(host: PublicContext, secret: float) -> Ciphertext:
    """A contributor's encrypted value, as the host stores it (public-key encryption)."""
    return host.encrypt(Replicated(1, 1, SLOTS).pack(secret))


def _differential(worlds: tuple[World, World], host: PublicContext, attack: Attack) -> Any:
    """Run ``attack`` in both worlds; the host's views must be identical. Returns the view."""
    views = [view(attack(w, _stored(host, s))) for w, s in zip(worlds, SECRETS, strict=True)]
    assert views[0] == views[1]
    return views[0]


REP = Replicated(1, 1, SLOTS).describe()


# ------------------------------------------------------------------ class 1: refresh
@pytest.mark.parametrize("shape", ["as stored", "times 2^20", "times 2^60", "at level 0",
                                   "level 0, times 2^14", "host asks for level 0",
                                   "as sample blocks"])
def test_refresh_succeeds_alike_whatever_the_value(worlds: tuple[World, World],
                                                   host: PublicContext, shape: str) -> None:
    def attack(w: World, ct: Ciphertext) -> dict[str, Any]:
        layout, extra = REP, {}
        if shape == "times 2^20":
            ct = ct.times(2.0**20)
        elif shape == "times 2^60":
            ct = ct.times(2.0**30).times(2.0**30)
        elif shape == "at level 0":
            ct = ct.at_level(0)
        elif shape == "level 0, times 2^14":
            ct = ct.times(2.0**14).at_level(0)
        elif shape == "host asks for level 0":
            extra = {"level": 0}  # the output encoding is the operation's: ignored
        elif shape == "as sample blocks":
            layout = SampleBlocks(SLOTS, SLOTS).describe()
        return w.call("refresh", batches=[batch(host, [ct], layout)], **extra)

    got = _differential(worlds, host, attack)
    assert got[0] == "ok"
    kind = "samples" if shape == "as sample blocks" else "replicated"
    assert got[1] == {"batches": [("batch", 1, kind)]}


def test_refresh_output_is_top_level_and_clipped(worlds: tuple[World, World], host: PublicContext,
                                                 sec_key: Any) -> None:
    w = worlds[0]
    reply = w.call("refresh", batches=[batch(host, [_stored(host, 3.0e9).at_level(1)], REP)])
    (ct,) = CiphertextBatch.from_bytes(reply["result"]["batches"][0]).open(sec_key)
    assert ct.level == host.params.top_level and ct.scale == host.params.scale
    assert np.allclose(sec_key.decrypt(ct)[:4], 2.0**20)  # VALUE_BOUND


# ------------------------------------------------------- class 2: edited metadata
SCALES = {"tiny": 2.0**-60, "one": 1.0, "off by one ulp": float(np.nextafter(2.0**35, 0)),
          "huge": 2.0**120}


@pytest.mark.parametrize("edit", sorted(SCALES))
def test_edited_scale_is_refused_before_decryption_in_every_operation(
        worlds: tuple[World, World], host: PublicContext, edit: str) -> None:
    samples = Diagonals.plan(40, 4, SLOTS).samples
    diag = Diagonals.plan(40, 4, SLOTS)

    def refresh(w: World, ct: Ciphertext) -> dict[str, Any]:
        return w.call("refresh", batches=[batch(host, [with_scale(ct, SCALES[edit])], REP)])

    def error_step(w: World, ct: Ciphertext) -> dict[str, Any]:
        z = with_scale(ct.times(1.0, scale=host.params.scale), SCALES[edit])
        y = host.encrypt(np.zeros(SLOTS), level=0)
        return w.call("logistic_error", z=batch(host, [z], samples.describe()),
                      y=batch(host, [y], samples.describe()), features=diag.describe(),
                      first_block=0, start=0, stop=40, learning_rate=1.0, level=3, intercept=False)

    def labels(w: World, ct: Ciphertext) -> dict[str, Any]:
        z = host.encrypt(np.zeros(SLOTS), level=2, scale=host.params.scale ** 2 / host.backend.prime(3))
        return w.call("logistic_error", z=batch(host, [z], samples.describe()),
                      y=batch(host, [with_scale(ct, SCALES[edit])], samples.describe()),
                      features=diag.describe(), first_block=0, start=0, stop=40,
                      learning_rate=1.0, level=3, intercept=False)

    def release(op: str) -> Attack:
        def attack(w: World, ct: Ciphertext) -> dict[str, Any]:
            coef = host.encrypt(Replicated(4, 4, SLOTS).pack(np.zeros(4)))
            model = {"coef": batch(host, [coef], Replicated(4, 4, SLOTS).describe()),
                     "intercept": batch(host, [with_scale(ct, SCALES[edit])], REP)}
            f, lab = w.holdout
            if op == "evaluate":
                return w.call("evaluate", model=model, features=f, labels=lab, metrics=["accuracy"])
            return w.call("compare", candidate=model, current=model, features=f, labels=lab)
        return attack

    for attack in (refresh, error_step, labels, release("evaluate"), release("compare")):
        got = _differential(worlds, host, attack)
        assert got[:2] == ("refused", "ScaleMismatch"), attack


def test_mixed_levels_and_foreign_sizes_are_refused(worlds: tuple[World, World],
                                                    host: PublicContext) -> None:
    samples = SampleBlocks(5000, SLOTS)

    def attack(w: World, ct: Ciphertext) -> dict[str, Any]:
        mixed = batch(host, [ct.at_level(2), ct.at_level(1)], samples.describe())
        return w.call("refresh", batches=[mixed])

    assert _differential(worlds, host, attack) == (
        "refused", "LevelMismatch", "ciphertexts must share one level in 0..3")


@pytest.mark.parametrize("n_samples", [2**40, float("inf"), True, 0, -1, "5"])
def test_layout_counts_out_of_bounds_are_refused(worlds: tuple[World, World], host: PublicContext,
                                                 n_samples: Any) -> None:
    def attack(w: World, ct: Ciphertext) -> dict[str, Any]:
        layout = {"kind": "samples", "n_samples": n_samples, "slots": SLOTS}
        return w.call("refresh", batches=[batch(host, [ct], layout)])

    assert _differential(worlds, host, attack)[:2] == ("refused", "ShapeError")


# ------------------------------------------------------ values at the encoder's bounds
@pytest.mark.parametrize("factor", [1.0, 2.0**14, 2.0**30])
def test_error_step_on_host_built_logits_succeeds_alike(worlds: tuple[World, World],
                                                        host: PublicContext, factor: float) -> None:
    """The host turns a stored value into logits of the exact product scale, scaled up."""
    diag = Diagonals.plan(40, 4, SLOTS)
    samples = diag.samples.describe()

    def attack(w: World, ct: Ciphertext) -> dict[str, Any]:
        z = ct.times(factor, scale=host.params.scale)  # one plaintext product: scale S^2 / q
        y = host.encrypt(np.ones(SLOTS), level=0)
        return w.call("logistic_error", z=batch(host, [z], samples), y=batch(host, [y], samples),
                      features=diag.describe(), first_block=0, start=0, stop=40,
                      learning_rate=1.0, level=3, intercept=True)

    got = _differential(worlds, host, attack)
    assert got[0] == "ok" and got[1]["e"] == ("batch", diag.giant, "errors")


# ------------------------------------------- class 3: releases on what the host sends
def test_host_built_holdout_sets_are_refused(worlds: tuple[World, World], host: PublicContext,
                                             sec_key: Any) -> None:
    rng = np.random.default_rng(1)

    def attack(w: World, ct: Ciphertext) -> dict[str, Any]:
        coef = host.encrypt(Replicated(4, 4, SLOTS).pack(np.ones(4)))
        model = {"coef": batch(host, [coef], Replicated(4, 4, SLOTS).describe())}
        f, lab = w.holdout
        own_f, own_lab = encrypt_batches(host, rng.standard_normal((40, 4)), np.ones(40))
        swapped = CiphertextBatch.from_bytes(lab)
        swapped = CiphertextBatch(swapped.params_digest, swapped.key_id, swapped.layout,
                                  (ct.to_bytes(),))  # the secret in place of the labels
        replies = [
            w.call("evaluate", model=model, features=own_f.to_bytes(), labels=own_lab.to_bytes(),
                   metrics=["log_loss"]),
            w.call("evaluate", model=model, features=f, labels=own_lab.to_bytes(),
                   metrics=["log_loss"]),
            w.call("compare", candidate=model, current=model, features=f,
                   labels=swapped.to_bytes()),
        ]
        assert all(view(r) == view(replies[0]) for r in replies)
        return replies[0]

    assert _differential(worlds, host, attack)[:2] == ("refused", "UnpinnedHoldout")


def test_a_release_on_a_host_crafted_model_is_charged_per_number(
        tmp_path: Any, sec_key: Any, host: PublicContext) -> None:
    """The residual channel: the host picks the model. Each released number is budgeted."""
    from hostkit import make_world

    w = make_world(tmp_path, sec_key, max_releases_per_day=4)
    coef = batch(host, [_stored(host, 0.0).times(1.0)], REP)  # any host-built model
    model = {"coef": batch(host, [host.encrypt(Replicated(4, 4, SLOTS).pack(np.ones(4)))],
                           Replicated(4, 4, SLOTS).describe())}
    del coef
    f, lab = w.holdout
    first = w.call("compare", candidate=model, current=model, features=f, labels=lab,
                   with_metrics=True)  # a decision and two metric values: 3 numbers
    assert first["ok"] and set(first["result"]) == {"promote", "candidate", "current"}
    second = w.call("compare", candidate=model, current=model, features=f, labels=lab)
    assert second["ok"] and set(second["result"]) == {"promote"}  # the 4th number
    third = w.call("compare", candidate=model, current=model, features=f, labels=lab)
    assert view(third)[:2] == ("refused", "BudgetExhausted")
    w.enclave.close()


# ------------------------------------------------- random attacks, same two worlds
@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(level=st.integers(0, 3), log2_factor=st.integers(0, 40),
       scale_edit=st.sampled_from([None, 2.0**-40, 1.0, 2.0**34, 2.0**36, 2.0**100]),
       op=st.sampled_from(["refresh", "logistic_error"]))
def test_random_attacks_get_identical_replies(worlds: tuple[World, World], host: PublicContext,
                                              level: int, log2_factor: int,
                                              scale_edit: float | None, op: str) -> None:
    """Any mix of level, scaling towards the encoder's bounds and scale edits: same replies."""
    diag = Diagonals.plan(40, 4, SLOTS)
    samples = diag.samples.describe()

    def attack(w: World, ct: Ciphertext) -> dict[str, Any]:
        if log2_factor:
            ct = ct.times(2.0**log2_factor, scale=host.params.scale if op != "refresh" else None)
        elif op != "refresh":
            ct = ct.times(1.0, scale=host.params.scale)
        if ct.level > level:
            ct = ct.at_level(level)
        if scale_edit is not None:
            ct = with_scale(ct, scale_edit)
        if op == "refresh":
            return w.call("refresh", batches=[batch(host, [ct], REP)])
        y = host.encrypt(np.ones(SLOTS), level=0)
        return w.call("logistic_error", z=batch(host, [ct], samples), y=batch(host, [y], samples),
                      features=diag.describe(), first_block=0, start=0, stop=40,
                      learning_rate=1.0, level=2, intercept=False)

    _differential(worlds, host, attack)
