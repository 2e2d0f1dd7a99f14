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


@pytest.mark.parametrize("value,out", [(3.0e9, 2.0**20), (-3.0e9, -(2.0**20)), (-0.5, -0.5)])
def test_refresh_output_is_top_level_and_clipped(worlds: tuple[World, World], host: PublicContext,
                                                 sec_key: Any, value: float, out: float) -> None:
    w = worlds[0]
    reply = w.call("refresh", batches=[batch(host, [_stored(host, value).at_level(1)], REP)])
    (ct,) = CiphertextBatch.from_bytes(reply["result"]["batches"][0]).open(sec_key)
    assert ct.level == host.params.top_level and ct.scale == host.params.scale
    assert np.allclose(sec_key.decrypt(ct)[:4], out, atol=1e-6)  # clipped to +-VALUE_BOUND


@pytest.mark.parametrize("kind", ["diagonals", "errors", "replicated ", None])
def test_refresh_takes_only_vectors_and_sample_blocks(worlds: tuple[World, World],
                                                      host: PublicContext, kind: Any) -> None:
    def attack(w: World, ct: Ciphertext) -> dict[str, Any]:
        layout = {**SampleBlocks(100, SLOTS).describe(), "kind": kind}
        return w.call("refresh", batches=[batch(host, [ct], layout)])

    assert _differential(worlds, host, attack) == (
        "refused", "ShapeError", "refresh takes replicated vectors or sample blocks")


def test_refresh_takes_as_many_parts_as_the_learner_sends_and_no_more(
        worlds: tuple[World, World], host: PublicContext) -> None:
    """The learner sends ``REFRESH_BATCHES`` parts per call; the enclave's limit is that, exactly."""
    from cipherloop.learn.logistic import REFRESH_BATCHES

    one = batch(host, [_stored(host, 0.5).at_level(0)], REP)
    w = worlds[0]
    full = w.call("refresh", batches=[one] * REFRESH_BATCHES)
    assert view(full) == ("ok", {"batches": [("batch", 1, "replicated")] * REFRESH_BATCHES})
    assert view(w.call("refresh", batches=[one] * (REFRESH_BATCHES + 1)))[:2] == \
        ("refused", "BadRequest")
    assert view(w.call("refresh", batches=[]))[:2] == ("refused", "BadRequest")


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


@pytest.mark.parametrize("levels", [(2, 1), (1, 2), (3, 3, 0)])
def test_mixed_levels_are_refused(worlds: tuple[World, World], host: PublicContext,
                                  levels: tuple[int, ...]) -> None:
    """Whichever ciphertext of the batch is the odd one, below or above the first."""
    samples = SampleBlocks(SLOTS * (len(levels) - 1) + 1, SLOTS)  # one block per ciphertext

    def attack(w: World, ct: Ciphertext) -> dict[str, Any]:
        mixed = batch(host, [ct.at_level(lvl) for lvl in levels], samples.describe())
        return w.call("refresh", batches=[mixed])

    assert _differential(worlds, host, attack) == (
        "refused", "LevelMismatch", "ciphertexts must share one level in 0..3")


@pytest.mark.parametrize("n_cts", [1, 3])
def test_batches_of_more_or_fewer_ciphertexts_than_their_layout_are_refused(
        worlds: tuple[World, World], host: PublicContext, n_cts: int) -> None:
    samples = SampleBlocks(5000, SLOTS)  # two blocks

    def attack(w: World, ct: Ciphertext) -> dict[str, Any]:
        return w.call("refresh", batches=[batch(host, [ct] * n_cts, samples.describe())])

    assert _differential(worlds, host, attack) == (
        "refused", "ShapeError", f"expected 2 ciphertexts for this layout, got {n_cts}")


@pytest.mark.parametrize("slots", [SLOTS // 2, SLOTS * 2])
def test_layouts_for_another_slot_count_are_refused(worlds: tuple[World, World],
                                                     host: PublicContext, slots: int) -> None:
    def attack(w: World, ct: Ciphertext) -> dict[str, Any]:
        return w.call("refresh", batches=[batch(host, [ct], SampleBlocks(100, slots).describe())])

    assert _differential(worlds, host, attack)[:2] == ("refused", "ShapeError")


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


# ------------------------------------------------ the error step's window, levels, lanes
DIAG = Diagonals.plan(40, 4, SLOTS)


def _error_step(w: World, host: PublicContext, z: np.ndarray | None = None,
                y: np.ndarray | None = None, *, diag: Diagonals = DIAG,
                y_layout: dict[str, Any] | None = None, z_layout: dict[str, Any] | None = None,
                **args: Any) -> dict[str, Any]:
    """One binary error step on host-built logits and labels (one block each)."""
    lvl = host.params.top_level - 1
    scale = host.params.scale ** 2 / host.backend.prime(lvl + 1)
    zc = host.encrypt(np.zeros(SLOTS) if z is None else z, level=lvl, scale=scale)
    yc = host.encrypt(np.zeros(SLOTS) if y is None else y, level=0)
    samples = diag.samples.describe()
    call = {"features": diag.describe(), "first_block": 0, "start": 0, "stop": 40,
            "learning_rate": 1.0, "level": 3, "intercept": False, **args}
    return w.call("logistic_error", z=batch(host, [zc], z_layout or samples),
                  y=batch(host, [yc], y_layout or samples), **call)


@pytest.mark.parametrize("window,message", [
    ({"start": 20, "stop": 20}, "sample range outside the blocks sent"),  # empty: lr / 0
    ({"start": 30, "stop": 10}, "sample range outside the blocks sent"),
    ({"start": 0, "stop": 41}, "sample range outside the blocks sent"),
    ({"first_block": 1, "start": 4096, "stop": 4100}, "block range outside the layout"),
    ({"first_block": -1}, "block range outside the layout"),
])
def test_error_step_windows_outside_the_blocks_sent_are_refused(
        worlds: tuple[World, World], host: PublicContext, window: dict[str, int],
        message: str) -> None:
    for w in worlds:
        assert view(_error_step(w, host, **window)) == ("refused", "ShapeError", message)


@pytest.mark.parametrize("level,intercept,ok", [
    (1, False, True), (1, True, False), (2, True, True), (0, False, False), (4, False, False)])
def test_error_step_output_levels_are_those_that_encode_safely(
        worlds: tuple[World, World], host: PublicContext, level: int, intercept: bool,
        ok: bool) -> None:
    """``e`` at ``level`` (``[1, top]``), its sum one level lower (so ``[2, top]`` with it)."""
    reply = _error_step(worlds[0], host, level=level, intercept=intercept)
    if ok:
        assert reply["ok"], reply
        (e,) = CiphertextBatch.from_bytes(reply["result"]["e"]).open(host)
        assert e.level == level
    else:
        assert view(reply)[:2] == ("refused", "BadRequest")


@pytest.mark.parametrize("block", [0, 1])
def test_error_step_on_one_block_of_two(worlds: tuple[World, World], host: PublicContext,
                                        block: int) -> None:
    """Either block of a two-block layout, alone: windows are numbered from the layout's start."""
    start, stop = (0, 4096) if block == 0 else (4096, 5000)
    reply = _error_step(worlds[0], host, diag=Diagonals.plan(5000, 4, SLOTS), first_block=block,
                        start=start, stop=stop)
    assert reply["ok"], reply
    assert CiphertextBatch.from_bytes(reply["result"]["e"]).layout["first_block"] == block


def test_error_step_clips_labels_to_0_and_1(worlds: tuple[World, World], host: PublicContext,
                                            sec_key: Any) -> None:
    """Host-built labels outside ``[0, 1]`` count as the nearest end, exactly."""
    y = np.zeros(SLOTS)
    y[:5] = [5.0, -3.0, 0.25, 1.0, 1000.0]
    z = np.linspace(-2, 2, SLOTS)
    reply = _error_step(worlds[0], host, z, y, learning_rate=4.0)
    assert reply["ok"], reply
    (e,) = [sec_key.decrypt(c) for c in CiphertextBatch.from_bytes(reply["result"]["e"]).open(sec_key)]
    expect = (1 / (1 + np.exp(-z[:40])) - np.clip(y[:40], 0, 1)) * 4.0 / 40
    assert np.abs(e[:40] - expect).max() < 1e-6


@pytest.mark.parametrize("lr", [0.0, -1.0, float("inf"), float("nan"), 100.5])
def test_error_step_learning_rates_outside_the_policy_are_refused(
        worlds: tuple[World, World], host: PublicContext, lr: Any) -> None:
    """In ``(0, max_learning_rate]`` (100 by default) and finite."""
    for w in worlds:
        assert view(_error_step(w, host, learning_rate=lr)) == (
            "refused", "BadRequest", "learning rate outside the policy's bounds")
    assert _error_step(worlds[0], host, learning_rate=100.0)["ok"]


@pytest.mark.parametrize("which", ["z_layout", "y_layout"])
def test_error_step_refuses_logits_or_labels_of_another_layout(
        worlds: tuple[World, World], host: PublicContext, which: str) -> None:
    other = SampleBlocks(41, SLOTS).describe()
    for w in worlds:
        assert view(_error_step(w, host, **{which: other})) == (
            "refused", "ShapeError", "logits and labels must be sample blocks of the feature layout")


@pytest.mark.parametrize("slots", [SLOTS // 2, SLOTS * 2])
def test_error_step_refuses_features_for_another_slot_count(
        worlds: tuple[World, World], host: PublicContext, slots: int) -> None:
    for w in worlds:
        reply = _error_step(w, host, features=Diagonals.plan(40, 4, slots).describe())
        assert view(reply) == ("refused", "ShapeError",
                               "features must describe a diagonal layout for these parameters")


def test_error_step_in_lanes_clips_each_samples_sum_and_fills_every_lane(
        worlds: tuple[World, World], host: PublicContext, sec_key: Any) -> None:
    """Lane partials of +-50 cancel: the clip (16) applies to the sum, never to a partial, and
    each sample's error comes back in every lane of it."""
    diag = Diagonals.plan(40, 4, SLOTS, 4)
    lanes = diag.samples
    rng = np.random.default_rng(3)
    z = rng.normal(0, 2, lanes.block)
    z[:3] = [30.0, -30.0, 3.5]
    y = rng.random(lanes.block)  # soft labels: a label summed over lanes would show
    pos = lanes.positions()
    parts = np.zeros(SLOTS)
    parts[pos[0]], parts[pos[1]] = z + 50.0, -50.0
    reply = _error_step(worlds[0], host, parts, lanes.spread(y), diag=diag, start=2, stop=40,
                        learning_rate=0.5)
    assert reply["ok"], reply
    expect = (1 / (1 + np.exp(-np.clip(z, -16, 16))) - y) * 0.5 / 38
    expect[:2] = expect[40:] = 0.0
    (e,) = [sec_key.decrypt(c) for c in CiphertextBatch.from_bytes(reply["result"]["e"]).open(sec_key)]
    assert np.abs(e[pos] - expect[None, :]).max() < 1e-6


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
