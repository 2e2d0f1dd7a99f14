"""The softmax, activation and backward steps are no oracles either, and compute exactly.

The differential tests play the malicious host against the operations of
``enclave/nonlinear.py`` as ``test_oracle.py`` does against the logistic
step: two worlds whose stored secret differs (an ordinary value, and one at
or beyond every bound), the same attack, identical replies. The behaviour
tests decrypt what comes back and hold it to numpy.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hostkit import World, batch, make_world, view, with_scale

from cipherloop.ckks import (
    Ciphertext,
    CiphertextBatch,
    Diagonals,
    PublicContext,
    Replicated,
    SampleBlocks,
    SecretContext,
)
from cipherloop.enclave.limits import MAX_CLASSES, MAX_HIDDEN

SLOTS = 4096
SECRETS = (0.25, 3.0e9)
DIAG = Diagonals.plan(40, 4, SLOTS)
SAMPLES = DIAG.samples.describe()
LANES = Diagonals.plan(40, 4, SLOTS, 4)  # 4 lanes of 1,024 samples, one diagonal each
Attack = Callable[[World, Ciphertext], dict[str, Any]]
OPS = ("softmax_error", "mlp_hidden", "mlp_backward")


def _stored(host: PublicContext, secret: float) -> Ciphertext:
    return host.encrypt(Replicated(1, 1, SLOTS).pack(secret))


def _differential(worlds: tuple[World, World], host: PublicContext, attack: Attack) -> Any:
    views = [view(attack(w, _stored(host, s))) for w, s in zip(worlds, SECRETS, strict=True)]
    assert views[0] == views[1]
    return views[0]


def _logits(host: PublicContext, values: np.ndarray | float = 0.0) -> Ciphertext:
    """Logits at the exact scale of one rescaled product, one level down."""
    lvl = host.params.top_level - 1
    scale = host.params.scale ** 2 / host.backend.prime(lvl + 1)
    return host.encrypt(np.broadcast_to(values, (SLOTS,)).copy(), level=lvl, scale=scale)


def _product(ct: Ciphertext, factor: float, host: PublicContext) -> Ciphertext:
    """The host turns a stored value into a product of the exact scale, scaled by ``factor``."""
    return ct.times(factor, scale=host.params.scale)


def _call(w: World, op: str, units: list[Ciphertext], *, y: Ciphertext | None = None,
          p: list[Ciphertext] | None = None, layout: Diagonals = DIAG, **extra: Any
          ) -> dict[str, Any]:
    common = {"features": layout.describe(), "first_block": 0, "start": 0, "stop": 40}
    SAMPLES = layout.samples.describe()
    z = [batch(w_host(w), [u], SAMPLES) for u in units]
    if op == "softmax_error":
        assert y is not None
        args = {"z": z, "y": batch(w_host(w), [y], SAMPLES), "learning_rate": 1.0, "level": 3,
                "intercept": True, "transposed": True}
    elif op == "mlp_hidden":
        args = {"z": z, "activation": "tanh", "n_classes": 3}
    else:
        assert p is not None
        args = {"z": z, "p": [batch(w_host(w), [c], SAMPLES) for c in p], "activation": "tanh",
                "level": 3, "intercept": True}
    return w.call(op, **{**common, **args, **extra})


_HOST: dict[int, PublicContext] = {}


def w_host(w: World) -> PublicContext:
    return _HOST[id(w.enclave)]


@pytest.fixture
def hworlds(worlds: tuple[World, World], host: PublicContext) -> tuple[World, World]:
    for w in worlds:
        _HOST[id(w.enclave)] = host
    return worlds


def _attack(op: str, host: PublicContext, make: Callable[[Ciphertext], Ciphertext],
            where: str = "z", layout: Diagonals = DIAG, **extra: Any) -> Attack:
    """An attack that puts the host-built ciphertext ``make(secret)`` into one input of ``op``."""
    def attack(w: World, ct: Ciphertext) -> dict[str, Any]:
        built = make(ct)
        units = [_logits(host, 0.1), _logits(host, -0.2), _logits(host, 0.3)]
        y = host.encrypt(np.ones(SLOTS), level=0)
        p = [_logits(host, 0.01) for _ in units]
        if where == "z":
            units[0] = built
        elif where == "y":
            y = built
        else:
            p[1] = built
        return _call(w, op, units, y=y, p=p, layout=layout, **extra)
    return attack


# ------------------------------------------------------ edited metadata, refused alike
SCALES = {"tiny": 2.0**-60, "one": 1.0, "off by one ulp": float(np.nextafter(2.0**35, 0)),
          "huge": 2.0**120}
INPUTS = [("softmax_error", "z"), ("softmax_error", "y"), ("mlp_hidden", "z"),
          ("mlp_backward", "z"), ("mlp_backward", "p")]


@pytest.mark.parametrize(("op", "where"), INPUTS)
def test_edited_scales_are_refused_before_decryption(hworlds: tuple[World, World],
                                                     host: PublicContext, op: str, where: str
                                                     ) -> None:
    for edit in sorted(SCALES):
        def make(ct: Ciphertext, edit: str = edit) -> Ciphertext:
            base = ct if where == "y" else _product(ct, 1.0, host)
            return with_scale(base, SCALES[edit])

        got = _differential(hworlds, host, _attack(op, host, make, where))
        assert got[:2] == ("refused", "ScaleMismatch"), edit


@pytest.mark.parametrize(("op", "where"), INPUTS)
def test_fresh_ciphertexts_in_place_of_products_are_refused(
        hworlds: tuple[World, World], host: PublicContext, op: str, where: str) -> None:
    """A fresh (nominal-scale) ciphertext where a product belongs: scale says it was not one."""
    if where == "y":  # and a product in place of labels
        got = _differential(hworlds, host, _attack(op, host, lambda c: _product(c, 1.0, host), "y"))
    else:
        got = _differential(hworlds, host, _attack(op, host, lambda c: c, where))
    assert got[:2] == ("refused", "ScaleMismatch")


@pytest.mark.parametrize("op", ["softmax_error", "mlp_backward"])
def test_output_levels_outside_the_safe_range_are_refused(hworlds: tuple[World, World],
                                                          host: PublicContext, op: str) -> None:
    for level in (0, 1, 4, -1, True):  # level 1 leaves the intercept sums no level
        attack = _attack(op, host, lambda c: _product(c, 1.0, host), level=level)
        assert _differential(hworlds, host, attack)[:2] == ("refused", "BadRequest"), level


@pytest.mark.parametrize(("op", "extra", "error"), [
    ("softmax_error", {"learning_rate": 1e9}, "BadRequest"),
    ("softmax_error", {"start": 0, "stop": 5000}, "ShapeError"),
    ("softmax_error", {"first_block": 1}, "ShapeError"),
    ("mlp_hidden", {"activation": "softplus"}, "BadRequest"),
    ("mlp_hidden", {"n_classes": 1}, "BadRequest"),
    ("mlp_hidden", {"n_classes": MAX_CLASSES + 1}, "BadRequest"),
    ("mlp_backward", {"activation": "exp"}, "BadRequest"),
    ("mlp_backward", {"features": {"kind": "diagonals", "n_samples": 40}}, "ShapeError"),
])
def test_out_of_bounds_fields_are_refused(hworlds: tuple[World, World], host: PublicContext,
                                          op: str, extra: dict[str, Any], error: str) -> None:
    attack = _attack(op, host, lambda c: _product(c, 1.0, host), **extra)
    assert _differential(hworlds, host, attack)[:2] == ("refused", error)


@pytest.mark.parametrize("op", OPS)
def test_batches_of_no_blocks_are_refused(hworlds: tuple[World, World], host: PublicContext,
                                          op: str) -> None:
    """A window of zero blocks: refused by the window's own check, before any layout."""
    def attack(w: World, ct: Ciphertext) -> dict[str, Any]:
        empty = batch(host, [], SAMPLES)
        args: dict[str, Any] = {"z": [empty] * 3, "features": DIAG.describe(), "first_block": 0,
                                "start": 0, "stop": 40}
        if op == "softmax_error":
            args |= {"y": empty, "learning_rate": 1.0, "level": 3, "intercept": False}
        elif op == "mlp_hidden":
            args |= {"activation": "tanh", "n_classes": 3}
        else:
            args |= {"p": [empty] * 3, "activation": "tanh", "level": 3, "intercept": False}
        return w.call(op, **args)

    assert _differential(hworlds, host, attack) == (
        "refused", "ShapeError", "block range outside the layout")


@pytest.mark.parametrize(("op", "field", "name", "limit"), [
    ("softmax_error", "z", "logits", MAX_CLASSES), ("mlp_hidden", "z", "pre-activations", MAX_HIDDEN),
    ("mlp_backward", "p", "backpropagated errors", MAX_HIDDEN),
    ("mlp_backward", "z", "pre-activations", MAX_HIDDEN)])
def test_unit_counts_are_bounded_before_anything_is_parsed(
        hworlds: tuple[World, World], host: PublicContext, op: str, field: str, name: str,
        limit: int) -> None:
    """None, or one past the limit, is refused by count; the limit itself gets past the count
    (and is refused next, for its placeholder bytes)."""
    base = {"features": DIAG.describe(), "first_block": 0, "start": 0, "stop": 40,
            "z": [b"x"], "p": [b"x"], "y": b"x", "learning_rate": 1.0, "level": 3,
            "activation": "tanh", "n_classes": 3}
    for n in (0, limit + 1, limit):
        reply = hworlds[0].call(op, **{**base, field: [b"x"] * n})
        refusal = ("refused", "BadRequest", f"{name} must be 1 to {limit} batches")
        assert (view(reply) == refusal) is (n != limit), n


@pytest.mark.parametrize(("n_classes", "ok"), [(1, False), (2, True)])
def test_softmax_takes_two_classes_or_more(hworlds: tuple[World, World], host: PublicContext,
                                           n_classes: int, ok: bool) -> None:
    def attack(w: World, ct: Ciphertext) -> dict[str, Any]:
        units = [_product(ct, 1.0, host)] + [_logits(host, 0.1)] * (n_classes - 1)
        return _call(w, "softmax_error", units, y=host.encrypt(np.ones(SLOTS), level=0))

    got = _differential(hworlds, host, attack)
    assert got[0] == "ok" if ok else got == (
        "refused", "BadRequest", "softmax needs at least two classes")


@pytest.mark.parametrize("n_classes", [2, MAX_CLASSES])
def test_the_smallest_and_largest_output_layers_are_taken(
        hworlds: tuple[World, World], host: PublicContext, n_classes: int) -> None:
    reply = _call(hworlds[0], "mlp_hidden", [_logits(host, 0.1)], n_classes=n_classes)
    assert reply["ok"], reply
    (a_err,) = reply["result"]["a_err"]
    assert CiphertextBatch.from_bytes(a_err).layout["features"]["n_features"] == n_classes


def test_softmax_error_on_a_one_sample_window(tmp_path: Path, sec_key: SecretContext,
                                              host: PublicContext) -> None:
    """The step is ``lr / (stop - start)``: for one sample, the whole learning rate."""
    w = make_world(tmp_path, sec_key)
    _HOST[id(w.enclave)] = host
    z = np.array([0.5, -0.25, 1.0])
    reply = _call(w, "softmax_error", [_logits(host, v) for v in z],
                  y=host.encrypt(np.full(SLOTS, 2.0), level=0), start=7, stop=8,
                  learning_rate=0.75, intercept=False, transposed=False)
    assert reply["ok"], reply
    got = np.array([_open(sec_key, raw)[0][7] for raw in reply["result"]["e"]])
    expect = (np.exp(z) / np.exp(z).sum() - np.eye(3)[2]) * 0.75
    assert np.abs(got - expect).max() < 1e-6
    w.enclave.close()


def test_a_backward_step_of_more_than_256_hidden_units(hworlds: tuple[World, World],
                                                      host: PublicContext) -> None:
    """Counts past the small integers Python shares (level-0 products keep it small)."""
    z = host.encrypt(np.full(SLOTS, 0.3), level=0,
                     scale=host.params.scale ** 2 / host.backend.prime(1))  # a product's, at 0
    units = [batch(host, [z], SAMPLES)] * 257
    reply = hworlds[0].call("mlp_backward", p=units, z=units, features=DIAG.describe(),
                            first_block=0, start=0, stop=40, activation="tanh", level=1,
                            intercept=False)
    assert view(reply) == ("ok", {"delta": [("batch", DIAG.giant, "errors")] * 257,
                                  "delta_sum": None})


def test_per_unit_values_of_another_layout_are_refused(hworlds: tuple[World, World],
                                                        host: PublicContext) -> None:
    other = SampleBlocks(41, SLOTS).describe()

    def attack(w: World, ct: Ciphertext) -> dict[str, Any]:
        units = [batch(host, [_product(ct, 1.0, host)], SAMPLES),
                 batch(host, [_logits(host, 0.2)], other)]
        return w.call("mlp_hidden", z=units, features=DIAG.describe(), first_block=0, start=0,
                      stop=40, activation="tanh", n_classes=3)

    assert _differential(hworlds, host, attack) == (
        "refused", "ShapeError", "per-unit values must be sample blocks of the feature layout")


def test_mixed_levels_and_count_mismatches_are_refused(hworlds: tuple[World, World],
                                                       host: PublicContext) -> None:
    def mixed(w: World, ct: Ciphertext) -> dict[str, Any]:
        z = _product(ct, 1.0, host)
        two = batch(host, [z, z.at_level(1)], Diagonals.plan(SLOTS + 40, 4, SLOTS).samples.describe())
        return w.call("mlp_hidden", z=[two], features=Diagonals.plan(SLOTS + 40, 4, SLOTS).describe(),
                      first_block=0, start=0, stop=SLOTS + 40, activation="relu", n_classes=3)

    assert _differential(hworlds, host, mixed)[:2] == ("refused", "LevelMismatch")

    for n_z, n_p in ((2, 1), (1, 2)):
        def uneven(w: World, ct: Ciphertext, n_z: int = n_z, n_p: int = n_p) -> dict[str, Any]:
            units = [_product(ct, 1.0, host)] + [_logits(host)] * (n_z - 1)
            return _call(w, "mlp_backward", units, p=[_logits(host)] * n_p)

        assert _differential(hworlds, host, uneven) == (
            "refused", "ShapeError", "one backpropagated error and one pre-activation per hidden unit")

    def one_class(w: World, ct: Ciphertext) -> dict[str, Any]:
        return _call(w, "softmax_error", [_product(ct, 1.0, host)], y=host.encrypt(np.ones(SLOTS)))

    assert _differential(hworlds, host, one_class)[:2] == ("refused", "BadRequest")


# --------------------------------------------- values at and beyond bounds: alike
@pytest.mark.parametrize(("op", "where"), [("softmax_error", "z"), ("mlp_hidden", "z"),
                                           ("mlp_backward", "z"), ("mlp_backward", "p")])
def test_host_built_values_succeed_alike(hworlds: tuple[World, World], host: PublicContext,
                                         op: str, where: str) -> None:
    views = []
    for factor in (1.0, 2.0**14, 2.0**30):
        attack = _attack(op, host, lambda c, f=factor: _product(c, f, host), where)
        views.append(_differential(hworlds, host, attack))
    assert views[0] == views[1] == views[2]
    got = views[0]
    assert got[0] == "ok"
    if op == "softmax_error":
        assert got[1] == {"e": [("batch", DIAG.giant, "errors")] * 3,
                          "e_diag": ("batch", 4, "diagonals"), "e_sum": ("batch", 3, "replicated")}
    elif op == "mlp_hidden":
        assert got[1] == {"a": ("batch", 4, "diagonals"), "a_err": [("batch", 1, "errors")] * 3}
    else:
        assert got[1] == {"delta": [("batch", DIAG.giant, "errors")] * 3,
                          "delta_sum": ("batch", 3, "replicated")}


@pytest.mark.parametrize("where", ["z", "y"])
def test_host_built_values_in_lanes_succeed_alike(hworlds: tuple[World, World],
                                                  host: PublicContext, where: str) -> None:
    """Lanes sum four slots per sample after decryption: still nothing but ciphertexts back."""
    views = []
    for factor in (1.0, 2.0**14, 2.0**30):
        make = (lambda c, f=factor: _product(c, f, host)) if where == "z" else (lambda c: c)
        views.append(_differential(hworlds, host, _attack("softmax_error", host, make, where,
                                                          layout=LANES)))
    assert views[0] == views[1] == views[2]
    assert views[0][0] == "ok"
    assert views[0][1]["e"] == [("batch", LANES.giant, "errors")] * 3


@pytest.mark.parametrize("edit", [{"lanes": 2, "shift": 1}, {"lanes": 1}, {"shift": 3}])
def test_labels_in_other_lanes_than_the_features_are_refused(
        hworlds: tuple[World, World], host: PublicContext, edit: dict[str, int]) -> None:
    samples = {**LANES.samples.describe(), **edit}
    if edit == {"lanes": 1}:
        samples.pop("shift")
        samples.pop("lanes")

    def attack(w: World, ct: Ciphertext) -> dict[str, Any]:
        z = [batch(host, [_product(ct, 1.0, host)], LANES.samples.describe()) for _ in range(3)]
        return w.call("softmax_error", z=z, y=batch(host, [host.encrypt(np.ones(SLOTS), level=0)],
                                                    samples),
                      features=LANES.describe(), first_block=0, start=0, stop=40,
                      learning_rate=1.0, level=3, intercept=False, transposed=False)
    got = _differential(hworlds, host, attack)
    assert got[0] == "refused" and got[-1] == "labels must be sample blocks of the feature layout"


def test_outputs_on_a_later_block_are_laid_out_for_the_window_alone(
        hworlds: tuple[World, World], host: PublicContext) -> None:
    """The second of two blocks (samples 4096..4999): ``A``'s layouts hold its 904 samples."""
    two = Diagonals.plan(5000, 4, SLOTS)
    units = [_logits(host, v) for v in (0.1, -0.2)]
    reply = _call(hworlds[0], "mlp_hidden", units, layout=two, first_block=1, start=4096,
                  stop=5000)
    assert reply["ok"], reply
    a_diag, a_err = reply["result"]["a"], reply["result"]["a_err"]
    assert CiphertextBatch.from_bytes(a_diag).layout == Diagonals.plan(904, 2, SLOTS).describe()
    for raw in a_err:
        layout = CiphertextBatch.from_bytes(raw).layout
        assert layout["features"] == Diagonals.plan(904, 3, SLOTS).describe()
        assert layout["first_block"] == 0  # local to the window, like the layout it pairs with


def test_secret_labels_succeed_alike(hworlds: tuple[World, World], host: PublicContext) -> None:
    """The host puts a stored value where the labels go: clipped to a class index, never probed."""
    got = _differential(hworlds, host, _attack("softmax_error", host, lambda c: c, "y"))
    assert got[0] == "ok"


# ------------------------------------------------------------- exact behaviour
def _open(sec_key: SecretContext, raw: bytes) -> list[np.ndarray]:
    return [sec_key.decrypt(c) for c in CiphertextBatch.from_bytes(raw).open(sec_key)]


def _levels(host: PublicContext, raws: bytes | list[bytes]) -> set[int]:
    """The levels of every ciphertext the host got back (public metadata)."""
    items = [raws] if isinstance(raws, bytes) else raws
    return {int(c.level) for raw in items for c in CiphertextBatch.from_bytes(raw).open(host)}


def _diagonal_matrix(blocks: list[np.ndarray], layout: Diagonals) -> np.ndarray:
    """Undo :meth:`Diagonals.pack` for one block: ``A[t, (t + b) % P] = D_b[t]``."""
    S, P = layout.slots, layout.period
    out = np.zeros((S, P))
    t = np.arange(S)
    for b2 in range(layout.giant):
        for b1 in range(layout.baby):
            diag = np.roll(blocks[layout.index(0, b1, b2)], -layout.baby * b2)
            out[t, (t + b1 + layout.baby * b2) % P] = diag
    return out[: layout.n_samples, : layout.n_features]


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_softmax_error_in_lanes_clips_each_samples_sum_and_fills_every_lane(
        tmp_path: Path, sec_key: SecretContext, host: PublicContext) -> None:
    """Lane partials of +-50 cancel: the clip applies to the sum, never to a partial."""
    w = make_world(tmp_path, sec_key, clip=4.0)
    lanes = LANES.samples
    rng = np.random.default_rng(6)
    m = lanes.block
    z = rng.normal(0, 1, (m, 3))
    z[:3, 1] = [9.0, -9.0, 3.5]
    y = rng.integers(0, 3, m).astype(np.float64)
    parts = np.zeros((3, SLOTS))
    pos = lanes.positions()
    for k in range(3):
        parts[k, pos[0]] = z[:, k] + 50.0
        parts[k, pos[1]] = -50.0
    start, stop, lr = 0, 40, 0.5
    reply = w.call("softmax_error", z=[batch(host, [_logits(host, parts[k])], lanes.describe())
                                       for k in range(3)],
                   y=batch(host, [host.encrypt(lanes.spread(y), level=0)], lanes.describe()),
                   features=LANES.describe(), first_block=0, start=start, stop=stop,
                   learning_rate=lr, level=3, intercept=False, transposed=False)
    assert reply["ok"], reply
    expect = (_softmax(np.clip(z, -4, 4)) - np.eye(3)[y.astype(int)]) * lr / (stop - start)
    expect[stop:] = 0.0
    for k, raw in enumerate(reply["result"]["e"]):
        (slots,) = _open(sec_key, raw)
        assert np.abs(slots[pos] - expect[:, k][None, :]).max() < 1e-6  # every lane of a sample
    w.enclave.close()


def test_softmax_error_is_exact_and_clipped_at_the_policy_bound(
        tmp_path: Path, sec_key: SecretContext, host: PublicContext) -> None:
    w = make_world(tmp_path, sec_key, clip=4.0)
    rng = np.random.default_rng(5)
    z = rng.normal(0, 3, (SLOTS, 3))
    z[3:8, 0] = [100.0, -100.0, 4.0, 4.5, -7.0]  # beyond the clip of 4 (inside the window)
    y = rng.integers(0, 3, SLOTS).astype(np.float64)
    y[3:6] = [7.0, -2.0, 1.4]  # outside the classes: clipped to 2 and 0, rounded to 1
    start, stop, lr = 3, 33, 0.5
    reply = w.call("softmax_error", z=[batch(host, [_logits(host, z[:, k])], SAMPLES) for k in range(3)],
                   y=batch(host, [host.encrypt(y, level=0)], SAMPLES), features=DIAG.describe(),
                   first_block=0, start=start, stop=stop, learning_rate=lr, level=3,
                   intercept=True, transposed=True)
    assert reply["ok"], reply
    yc = np.rint(np.clip(y, 0, 2)).astype(int)
    expect = (_softmax(np.clip(z, -4, 4)) - np.eye(3)[yc]) * lr / (stop - start)
    expect[:start] = 0.0
    expect[stop:] = 0.0
    got = np.stack([_open(sec_key, raw)[0] for raw in reply["result"]["e"]], axis=1)
    assert np.abs(got - expect).max() < 1e-6
    sums = [v[0] for v in _open(sec_key, reply["result"]["e_sum"])]
    assert np.allclose(sums, expect.sum(axis=0), atol=1e-6)
    assert _levels(host, reply["result"]["e"]) == {3}
    assert _levels(host, reply["result"]["e_sum"]) == {2}
    scalar = Replicated(1, 1, SLOTS)  # every slot holds the sum, as the host's update expects
    assert CiphertextBatch.from_bytes(reply["result"]["e_sum"]).layout == scalar.describe()
    for v, total in zip(_open(sec_key, reply["result"]["e_sum"]), expect.sum(axis=0), strict=True):
        assert np.allclose(v, total, atol=1e-6)
    e_diag = _diagonal_matrix(_open(sec_key, reply["result"]["e_diag"]), Diagonals.plan(40, 3, SLOTS))
    assert np.abs(e_diag - expect[:40]).max() < 1e-6
    w.enclave.close()


@pytest.mark.parametrize(("act", "H"), [("relu", 3), ("tanh", 3), ("logistic", 3), ("tanh", 1)])
def test_hidden_and_backward_steps_are_exact(tmp_path: Path, sec_key: SecretContext,
                                             host: PublicContext, act: str, H: int) -> None:
    # The expected values are written here, not imported: a test that called the enclave's own
    # activation functions would agree with any bug in them.
    activation = {"relu": lambda v: np.maximum(v, 0.0), "tanh": np.tanh,
                  "logistic": lambda v: 1 / (1 + np.exp(-v))}[act]
    derivative = {"relu": lambda v: np.where(v > 0, 1.0, 0.0),
                  "tanh": lambda v: 1 / np.cosh(v) ** 2,
                  "logistic": lambda v: np.exp(-v) / (1 + np.exp(-v)) ** 2}[act]
    w = make_world(tmp_path, sec_key)
    rng = np.random.default_rng(6)
    start, stop = 0, 40
    z = rng.normal(0, 2, (SLOTS, H))
    z[0, 0] = 50.0  # clipped to the policy's 16
    p = rng.normal(0, 0.1, (SLOTS, H))
    p[1, H - 1] = 3.0e9  # clipped to VALUE_BOUND
    zb = [batch(host, [_logits(host, z[:, h])], SAMPLES) for h in range(H)]
    hidden = w.call("mlp_hidden", z=zb, features=DIAG.describe(), first_block=0, start=start,
                    stop=stop, activation=act, n_classes=3)
    assert hidden["ok"], hidden
    zc = np.clip(z, -16, 16)
    a = activation(zc)
    a[stop:] = 0.0
    got_a = _diagonal_matrix(_open(sec_key, hidden["result"]["a"]), Diagonals.plan(40, H, SLOTS))
    assert np.abs(got_a - a[:40]).max() < 1e-5
    got_cols = np.stack([_open(sec_key, r)[0] for r in hidden["result"]["a_err"]], axis=1)
    assert np.abs(got_cols - a).max() < 1e-5

    back = w.call("mlp_backward", p=[batch(host, [_logits(host, p[:, h])], SAMPLES) for h in range(H)],
                  z=zb, features=DIAG.describe(), first_block=0, start=start, stop=stop,
                  activation=act, level=2, intercept=True)
    assert back["ok"], back
    delta = np.clip(p, -2.0**20, 2.0**20) * derivative(zc)
    delta[stop:] = 0.0
    got_d = np.stack([_open(sec_key, r)[0] for r in back["result"]["delta"]], axis=1)
    assert np.abs(got_d - delta).max() <= 1e-6 * max(1.0, np.abs(delta).max())
    sums = [v[0] for v in _open(sec_key, back["result"]["delta_sum"])]
    assert np.allclose(sums, np.clip(delta.sum(axis=0), -2.0**20, 2.0**20), rtol=1e-6, atol=1e-4)
    assert _levels(host, back["result"]["delta"]) == {2}
    assert _levels(host, back["result"]["delta_sum"]) == {1}
    w.enclave.close()
